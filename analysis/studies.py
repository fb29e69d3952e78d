"""Which runs of an experiment the fit uses: one study (a sweep command's set of runs), not every
run ever logged to the experiment.

Two presets of one sweep (``quick``, ``laptop``) write to the same experiment; pooling them fits
one law to two recipes. So by default the fit takes the study of the latest parent run, and pools
only when asked (``--all-studies``, optionally narrowed by ``--preset`` / ``--sweep-id``).

A study's members are the config hashes its parent recorded (``core.schema.MEMBERS_ARTIFACT``), plus
the children pointing at it by mlflow.parentRunId. The member list matters because a run shared
by two studies (same config hash) is created under the first study's parent and skipped as
finished by the second, yet belongs to both. Parents from before the list was recorded fall back
to their children alone, with a note.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile

from analysis.schema import AnalysisError
from core import schema as M
from core.search import search_all


@dataclasses.dataclass(frozen=True, kw_only=True)
class StudyChoice:
    """What the user asked for: the latest study (default), or filters and/or pooling."""

    preset: str | None = None
    sweep_id: str | None = None
    """A sweep id or a unique prefix of one (run names carry its first 6 characters)."""
    all_studies: bool = False
    """Pool every study that matches the filters; with no filter, every trial run."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class Selection:
    """The runs a fit uses and where they came from; printed and written to fits.json."""

    parents: tuple[str, ...]
    """MLflow ids of the chosen parent runs, latest first (fits attach to the first)."""
    label: str
    run_ids: frozenset[str]
    """dlm.run_id of every selected trial run."""
    n_members: int | None
    """Runs the chosen studies recorded (None where only parentRunId was known)."""
    left_out: int
    """Distinct dlm.run_id of the experiment not selected."""
    other_studies: int
    notes: tuple[str, ...] = ()

    def describe(self) -> list[str]:
        missing = ""
        if self.n_members is not None and self.n_members > len(self.run_ids):
            missing = f" of {self.n_members} recorded ({self.n_members - len(self.run_ids)} not in MLflow)"
        lines = [f"study: {self.label}: {len(self.run_ids)} runs{missing}"]
        if self.left_out:
            lines.append(f"left out: {self.left_out} run(s) of the experiment from "
                         f"{self.other_studies} other stud{'y' if self.other_studies == 1 else 'ies'}"
                         " or no study (pool them with --all-studies, or pick one with --preset / "
                         "--sweep-id)")
        return lines + [f"note: {n}" for n in self.notes]

    def as_dict(self) -> dict:
        return {"label": self.label, "parents": list(self.parents), "n_runs": len(self.run_ids),
                "n_members": self.n_members, "left_out": self.left_out, "notes": list(self.notes)}


def _parents(client, experiment_id: str) -> list:
    out = search_all(client, experiment_id, M.role_filter(M.ROLE_PARENT))

    def recency(r):  # a re-run reuses its parent (old start_time) but stamps dlm.invoked_ms
        stamp = r.data.tags.get(M.TAG_INVOKED, "")
        return max(r.info.start_time or 0, int(stamp) if stamp.isdigit() else 0)

    return sorted(out, key=recency, reverse=True)


def _label(parents: list) -> str:
    def one(r):
        t = r.data.tags
        return (f"sweep {t.get(M.TAG_SWEEP, '?')}, preset {t.get(M.TAG_PRESET, '?')}, sweep id "
                f"{t.get(M.TAG_SWEEP_ID, '?')[:12]} (parent run {r.info.run_id})")
    if len(parents) == 1:
        return one(parents[0])
    return f"{len(parents)} studies pooled: " + "; ".join(one(r) for r in parents)


def _members(client, parent) -> set[str] | None:
    if M.TAG_MEMBERS not in parent.data.tags:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = client.download_artifacts(parent.info.run_id, parent.data.tags[M.TAG_MEMBERS],
                                             tmp)
            with open(path) as fh:
                return set(json.load(fh)["run_ids"])
        except Exception:  # noqa: BLE001 - an unreadable list degrades to parentRunId, with a note
            return None


def select(client, experiment_id: str, experiment: str, trials: list, choice: StudyChoice
           ) -> tuple[list, Selection]:
    """The trial runs (MLflow Run objects) of the chosen studies, and a :class:`Selection`."""
    def rid(r):
        return r.data.tags.get(M.TAG_RUN_ID, r.info.run_id)

    everything = {rid(r) for r in trials}
    parents = _parents(client, experiment_id)
    filtered = choice.preset is not None or choice.sweep_id is not None
    if not filtered and (choice.all_studies or not parents):
        note = () if parents else (f"experiment {experiment!r} has no parent run (tag "
                                   f"{M.TAG_ROLE}={M.ROLE_PARENT}): using all its trial runs",)
        return trials, Selection(parents=tuple(r.info.run_id for r in parents),
                                 label=f"all {len(parents)} studies of {experiment!r} pooled "
                                       "(--all-studies)" if parents else f"all of {experiment!r}",
                                 run_ids=frozenset(everything), n_members=None, left_out=0,
                                 other_studies=0, notes=note)
    match = [r for r in parents
             if (choice.preset is None or r.data.tags.get(M.TAG_PRESET) == choice.preset)
             and (choice.sweep_id is None
                  or r.data.tags.get(M.TAG_SWEEP_ID, "").startswith(choice.sweep_id))]
    if not match:
        known = sorted({f"preset {r.data.tags.get(M.TAG_PRESET, '?')} / sweep id "
                        f"{r.data.tags.get(M.TAG_SWEEP_ID, '?')[:12]}" for r in parents})
        asked = ", ".join(f"{k} {v!r}" for k, v in (("preset", choice.preset),
                                                     ("sweep id", choice.sweep_id)) if v)
        raise AnalysisError(f"experiment {experiment!r} has no study with {asked}; it has: "
                            f"{'; '.join(known) or 'no parent runs'}")
    chosen = match if choice.all_studies else match[:1]
    ids = {r.info.run_id for r in chosen}
    members, n_members, notes = set(), 0, []
    for p in chosen:
        recorded = _members(client, p)
        if recorded is None:
            n_members = None
            notes.append(f"parent run {p.info.run_id} has no member list (a sweep from before it "
                         "was recorded): its runs are its children by mlflow.parentRunId, so runs "
                         "it shares with an earlier study are missing")
        else:
            members |= recorded
            n_members = None if n_members is None else len(members)
    # Children always count too: runs an optimiser proposed are not known when the parent starts.
    kept = [r for r in trials if rid(r) in members or r.data.tags.get(M.TAG_PARENT) in ids]
    kept_ids = frozenset(rid(r) for r in kept)
    return kept, Selection(parents=tuple(r.info.run_id for r in chosen), label=_label(chosen),
                           run_ids=kept_ids, n_members=n_members,
                           left_out=len(everything - kept_ids),
                           other_studies=len(parents) - len(chosen), notes=tuple(notes))
