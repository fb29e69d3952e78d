"""Trajectory studies: one training run per (family, knob, size) read off at several budgets.

What MLflow holds (core/schema.py, tags ``dlm.trajectory``, ``dlm.trunk``, ``dlm.readoff`` and
metric ``readoff_budget``):

* a **trunk** trains at constant LR after warmup; at each read-off evaluation it logs
  ``readoff_budget`` = that budget at the same step as ``val_nelbo``; its final evaluation is the
  read-off of its own (largest) budget;
* a **branch** is forked from its trunk's checkpoint at (1 − decay_frac) of budget b's steps and
  decays the LR to b: its final ``val_nelbo`` is the cooled loss at b; its ``tokens``/``flops``
  are cumulative from step 0, so its final D and C are those of b.

Which evaluations are points is one :class:`PointKind` per (trajectory, read-off mode), in the
registry ``POINT_KINDS``: classic runs and ``branches``-mode branches give their final evaluation;
``constant``-mode trunks give each read-off, times the **cooldown factor** of their (family, knob)
*measured* from the study's branches (:func:`cooldown_factors`: mean over branches of branch
final loss / trunk read-off loss at the same trunk and budget); the other two kinds give none.
A constant-LR loss sits above the loss of a run decayed to the same budget (the gap the
warmup-stable-decay literature measures, e.g. Hägele et al. 2024, arXiv:2405.18392), so an
unmeasured factor is never assumed: it stays 1.0 and the report says "cooldown unmeasured".

Every point carries ``trunk``, the run it was read off (a branch: its trunk): points of one trunk
share its noise, so the bootstrap draws trunks, not points (bootstrap.resamples).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from analysis import schema as S
from analysis.schema import AnalysisError
from core import schema as M

BUDGET_RTOL = 1e-6
"""A budget given as a tag (text) and as the ``readoff_budget`` metric (float) agree to this
relative tolerance (budgets of one study differ by far more)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class Cooldown:
    """The cooldown factor of one group: branch final loss / trunk read-off loss, over its branches."""

    group: str
    family: str
    knob: float
    factor: float
    """Mean ratio over the measured branches; 1.0 when none was measured (see ``measured``)."""
    n: int
    """Branches measured: FINISHED branches whose trunk logged a read-off at their budget."""
    lo: float
    hi: float
    """Smallest and largest ratio (NaN when none was measured)."""
    applied: bool
    """The group has constant-mode read-off points, whose loss is multiplied by ``factor``."""

    @property
    def measured(self) -> bool:
        return self.n > 0

    @property
    def warning(self) -> str | None:
        """Set on a group whose read-offs are used with no measured factor."""
        if self.applied and not self.measured:
            return (f"{self.group}: cooldown unmeasured (no finished decay branch matches a trunk "
                    "read-off); its constant-LR read-offs are fitted with factor 1.0, i.e. "
                    "without cooldown, and sit above a decayed run's loss")
        return None


def _labels(df: pd.DataFrame) -> list[str]:
    return [S.group_label(f, k) for f, k in zip(df["family"], df["knob"].astype(float))]


def readoffs(runs: pd.DataFrame) -> pd.DataFrame:
    """Trunk evaluations that are read-offs (``readoff_budget`` logged), one per (trunk, budget):
    of a trunk logged under several MLflow runs (a resume), a FINISHED run's, then the latest."""
    reads = runs[(runs["trajectory"] == M.TRAJ_TRUNK) & np.isfinite(runs["readoff_budget"])]
    reads = reads.assign(_ok=reads["status"] == M.STATUS_FINISHED)
    reads = reads.sort_values(["run_id", "readoff_budget", "_ok", "step"], kind="stable")
    return reads.drop_duplicates(["run_id", "readoff_budget"], keep="last").drop(columns="_ok")


def _match(branches: pd.DataFrame, reads: pd.DataFrame) -> pd.DataFrame:
    """``branches`` with ``trunk_loss``: their trunk's read-off loss at their budget (NaN if none)."""
    left = branches.assign(_trunk=branches["trunk_tag"], _lb=np.log(branches["budget"]))
    left = left[np.isfinite(left["_lb"])].sort_values("_lb", kind="stable")
    right = pd.DataFrame({"_trunk": reads["run_id"], "_lb": np.log(reads["readoff_budget"]),
                          "trunk_loss": reads["val_nelbo"]}).sort_values("_lb", kind="stable")
    if left.empty or right.empty:
        return left.assign(trunk_loss=np.nan)
    return pd.merge_asof(left, right, on="_lb", by="_trunk", tolerance=BUDGET_RTOL,
                         direction="nearest")


def cooldown_factors(runs: pd.DataFrame, kept: pd.DataFrame) -> tuple[Cooldown, ...]:
    """One :class:`Cooldown` per group with a measured branch or with constant-mode read-offs.

    ``runs``: the runs frame (``schema.RUN_COLUMNS``); ``kept``: its final rows of FINISHED runs,
    one per run_id. Ratio of a branch = its final ``val_nelbo`` / its trunk's read-off
    ``val_nelbo`` at its budget (a read-off of any of the trunk's MLflow runs); factor = mean ratio
    over the group's branches.
    """
    m = _match(kept[kept["trajectory"] == M.TRAJ_BRANCH], readoffs(runs))
    ratio = (m["val_nelbo"] / m["trunk_loss"]).to_numpy(float)
    m = m.assign(ratio=ratio, group=_labels(m))[np.isfinite(ratio) & (ratio > 0)]
    trunks = kept[(kept["trajectory"] == M.TRAJ_TRUNK) & (kept["readoff"] == M.READOFF_CONSTANT)]
    applied = set(_labels(trunks))
    named = pd.concat([m[["family", "knob"]].assign(group=m["group"]),
                       trunks[["family", "knob"]].assign(group=_labels(trunks))])
    out = []
    for group, first in named.drop_duplicates("group").set_index("group").sort_index().iterrows():
        r = m.loc[m["group"] == group, "ratio"].to_numpy(float)
        out.append(Cooldown(group=group, family=str(first["family"]), knob=float(first["knob"]),
                            factor=float(r.mean()) if len(r) else 1.0, n=len(r),
                            lo=float(r.min()) if len(r) else np.nan,
                            hi=float(r.max()) if len(r) else np.nan, applied=group in applied))
    return tuple(out)


def cooldown_table(cooldown: tuple[Cooldown, ...]) -> pd.DataFrame:
    """The factors as a table: group, family, knob, factor, n, min_ratio, max_ratio, applied."""
    return pd.DataFrame([{"group": c.group, "family": c.family, "knob": c.knob,
                          "factor": c.factor, "n": c.n, "min_ratio": c.lo, "max_ratio": c.hi,
                          "applied": c.applied} for c in cooldown],
                        columns=["group", "family", "knob", "factor", "n", "min_ratio",
                                 "max_ratio", "applied"])


# --------------------------------------------------------------------------------------------------
# Which evaluations are points: one PointKind per (dlm.trajectory, dlm.readoff)
# --------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, kw_only=True)
class PointKind:
    """What the FINISHED runs of one kind contribute to the points: here, nothing (they are
    measured, not fitted). ``rows`` returns runs-frame rows plus ``point_id`` (the table's
    run_id), ``trunk`` (bootstrap unit) and ``cooldown`` (factor), with ``budget`` the point's."""

    trajectory: str
    """``dlm.trajectory`` tag of the kind ('' = a classic run, one per point)."""
    readoff: str
    """``dlm.readoff`` tag of the kind ('' for classic runs)."""
    description: str

    def rows(self, runs: pd.DataFrame, kept: pd.DataFrame,
             cooldown: tuple[Cooldown, ...]) -> pd.DataFrame:
        return kept.iloc[:0].assign(point_id="", trunk="", cooldown=1.0)


@dataclasses.dataclass(frozen=True, kw_only=True)
class FinalEvaluation(PointKind):
    """The run's final evaluation is one point, at its budget tag, uncorrected."""

    def rows(self, runs, kept, cooldown):
        trunk = kept["trunk_tag"].where(kept["trunk_tag"] != "", kept["run_id"])
        return kept.assign(point_id=kept["run_id"], trunk=trunk, cooldown=1.0)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ReadOffs(PointKind):
    """Each read-off of the trunk is one point at its read-off budget, its loss times the group's
    measured cooldown factor (1.0 when unmeasured: ``Cooldown.warning``)."""

    def rows(self, runs, kept, cooldown):
        reads = readoffs(runs)
        reads = reads[reads["run_id"].isin(set(kept["run_id"]))]
        factor = {c.group: c.factor for c in cooldown}
        budget = reads["readoff_budget"].astype(float)
        return reads.assign(
            budget=budget, trunk=reads["run_id"],
            point_id=[f"{r}@{b:.6g}" for r, b in zip(reads["run_id"], budget)],
            cooldown=[factor.get(g, 1.0) for g in _labels(reads)])


POINT_KINDS: dict[tuple[str, str], PointKind] = {(k.trajectory, k.readoff): k for k in (
    FinalEvaluation(trajectory="", readoff="", description="classic run: its final evaluation"),
    FinalEvaluation(trajectory=M.TRAJ_BRANCH, readoff=M.READOFF_BRANCHES,
                    description="decay branch: its final evaluation, the cooled loss at its budget"),
    ReadOffs(trajectory=M.TRAJ_TRUNK, readoff=M.READOFF_CONSTANT,
             description="constant-LR trunk: each read-off x the measured cooldown factor"),
    PointKind(trajectory=M.TRAJ_TRUNK, readoff=M.READOFF_BRANCHES,
              description="trunk of a branches study: only the branches' fork point"),
    PointKind(trajectory=M.TRAJ_BRANCH, readoff=M.READOFF_CONSTANT,
              description="branch of a constant study: measures the cooldown factor"),
)}


def point_rows(runs: pd.DataFrame, kept: pd.DataFrame,
               cooldown: tuple[Cooldown, ...]) -> pd.DataFrame:
    """The runs-frame rows that are points, kind by kind in ``POINT_KINDS`` order (a classic
    study: ``kept`` in its order), with ``point_id``, ``trunk``, ``cooldown`` and ``budget``."""
    kinds = kept["trajectory"].fillna("") + "/" + kept["readoff"].fillna("")
    known = {f"{t}/{r}": kind for (t, r), kind in POINT_KINDS.items()}
    unknown = sorted(set(kinds) - set(known))
    if unknown:
        ids = kept.loc[kinds.isin(unknown), "run_id"].head(3).tolist()
        raise AnalysisError(
            f"runs with {M.TAG_TRAJECTORY}/{M.TAG_READOFF} = {', '.join(map(repr, unknown))} "
            f"(e.g. {', '.join(ids)}) are of no known kind; known: {', '.join(map(repr, known))}")
    parts = [kind.rows(runs, kept[kinds == k], cooldown) for k, kind in known.items()
             if (kinds == k).any()]
    if not parts:
        return PointKind(trajectory="", readoff="", description="").rows(runs, kept, cooldown)
    return pd.concat(parts) if len(parts) > 1 else parts[0]
