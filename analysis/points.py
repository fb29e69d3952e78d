"""From a runs frame (``schema.RUN_COLUMNS``) to the points of the laws (``schema.FINAL_COLUMNS``),
and what was dropped on the way.

Which evaluations of a run are points depends on its kind (analysis/trajectory.py): a classic run
(one run per point) gives its final evaluation; a trajectory study's decay branch gives its final
evaluation (read-off mode ``branches``) or only measures the cooldown (mode ``constant``); a
constant-LR trunk gives one point per read-off budget (mode ``constant``), its loss times the
measured cooldown factor, or none (mode ``branches``). Whatever the kind, only FINISHED runs count
and N, D and C are counted the same way (:func:`study_points`).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from analysis import conventions
from analysis import schema as S
from analysis import trajectory
from analysis.schema import AnalysisError
from analysis.trajectory import Cooldown
from core import schema as M
from core.flops import CONVENTIONS


@dataclasses.dataclass(frozen=True, kw_only=True)
class DropCounts:
    """Runs left out of the fits, by reason. Reported so a thin frontier is never a mystery."""

    failed: int = 0
    """Runs whose MLflow status is FAILED/KILLED: their last point is not a finished run's end."""
    unfinished: int = 0
    """Runs still RUNNING (or SCHEDULED): their last point is mid-schedule."""
    nan: int = 0
    """Points whose loss, N, D or C is missing, non-finite or <= 0 (diverged, no eval)."""
    duplicate: int = 0
    """Extra MLflow runs of one dlm.run_id (a resumed job; the finished, longest one is kept), or
    rows of a table repeating another row's values (the first is kept)."""
    worst: int = 0
    """Points left out on request (``--drop-worst K``: each group's K highest losses)."""

    @property
    def total(self) -> int:
        return self.failed + self.unfinished + self.nan + self.duplicate

    def __add__(self, other: DropCounts) -> DropCounts:
        return DropCounts(**{f.name: getattr(self, f.name) + getattr(other, f.name)
                             for f in dataclasses.fields(self)})


def study_convention(runs: pd.DataFrame) -> str:
    """The FLOP convention the runs were trained under (their ``train.flop_convention``), the one
    a fit uses by default; AnalysisError if the runs mix conventions (then name one: --flops)."""
    found = sorted(runs["flop_convention"].dropna().unique())
    if len(found) > 1:
        raise AnalysisError(f"the runs were trained under {len(found)} FLOP conventions "
                            f"({', '.join(found)}); choose the one to fit under with --flops")
    return found[0] if found else conventions.DEFAULT


# Columns a runs frame written before they existed (an older runs.parquet, a hand-built frame)
# lacks, and what they mean there: a classic run of unknown seed.
_LEGACY_RUN_COLUMNS = {"trajectory": "", "trunk_tag": "", "readoff": "", "readoff_budget": np.nan,
                       "seed": np.nan, "batch_tokens": np.nan, "lr": np.nan,
                       "pool_tokens": np.nan}


def final_points(runs: pd.DataFrame, n_column: str = S.DEFAULT_N_COLUMN,
                 flops: str | None = None) -> tuple[pd.DataFrame, DropCounts]:
    """The points of a runs frame as a ``schema.FINAL_COLUMNS`` table, and what was dropped:
    :func:`study_points` without its cooldown factors."""
    table, dropped, _ = study_points(runs, n_column, flops)
    return table, dropped


def study_points(runs: pd.DataFrame, n_column: str = S.DEFAULT_N_COLUMN,
                 flops: str | None = None
                 ) -> tuple[pd.DataFrame, DropCounts, tuple[Cooldown, ...]]:
    """The points of a runs frame (``schema.FINAL_COLUMNS``), what was dropped, and the cooldown
    factors measured from its decay branches (analysis/trajectory.py; report them).

    A classic run's point is its final evaluation; trajectory runs give theirs by kind
    (``trajectory.POINT_KINDS``). N is the ``n_column`` count (one of ``schema.N_COLUMNS``;
    default the backbone N); D the tokens at the point's evaluation; C the training FLOPs there
    under convention ``flops`` (a core.flops.CONVENTIONS key; default the runs' own,
    :func:`study_convention`): as logged for runs trained under it, else from the run's FLOPs per
    token under it (analysis/conventions.py) × its tokens. ``budget`` is the run's budget tag (a
    trunk's read-off: the read-off budget): it only groups the points of one isoFLOP curve.

    Only FINISHED runs count: a failed or running job's last point sits mid-schedule. One dlm.run_id
    logged under several MLflow runs (a resume) keeps its finished run with the most compute.
    """
    runs = runs.assign(**{k: v for k, v in _LEGACY_RUN_COLUMNS.items() if k not in runs})
    fin = runs[runs["is_final"]].copy()
    fin["_ok"] = fin["status"] == M.STATUS_FINISHED
    fin = fin.sort_values(["run_id", "_ok", "step"], na_position="first")
    dedup = fin.drop_duplicates("run_id", keep="last")
    failed = dedup["status"].isin(["FAILED", "KILLED"])
    unfinished = ~dedup["_ok"] & ~failed
    kept = dedup[dedup["_ok"]]
    cooldown = trajectory.cooldown_factors(runs, kept)
    rows = trajectory.point_rows(runs, kept, cooldown)
    # A runs table written before the per-convention columns existed counts C under the project's
    # default convention, and no other.
    rows = rows.assign(**{k: v for k, v in (("flop_convention", conventions.DEFAULT),
                                            (conventions.column(flops or conventions.DEFAULT),
                                             np.nan)) if k not in rows})
    conv = study_convention(rows) if flops is None else flops
    if conv not in CONVENTIONS:
        raise AnalysisError(f"unknown FLOP convention {conv!r}; known: {', '.join(CONVENTIONS)}")
    C = rows["flops"].where(rows["flop_convention"] == conv, rows[conventions.column(conv)])
    table = pd.DataFrame({
        "run_id": rows["point_id"], "family": rows["family"], "knob": rows["knob"],
        "N": rows[n_column], "D": rows["tokens"], "C": C,
        "loss": rows["val_nelbo"] * rows["cooldown"], "budget": rows["budget"],
        "trunk": rows["trunk"], "loss_constant": rows["val_nelbo"], "cooldown": rows["cooldown"],
        "seed": rows["seed"], "batch_tokens": rows["batch_tokens"], "lr": rows["lr"],
        "U": rows["pool_tokens"],
    })
    table, nan = drop_bad(table)
    return table, DropCounts(failed=int(failed.sum()), unfinished=int(unfinished.sum()), nan=nan,
                             duplicate=len(fin) - len(dedup)), cooldown


def drop_bad(table: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """``table`` without rows whose N, D, C or loss is missing, non-finite or <= 0, with its
    ``group`` column and in ``schema.FINAL_COLUMNS`` order; and how many rows were dropped."""
    vals = table[["N", "D", "C", "loss"]].to_numpy(dtype=float)
    ok = np.isfinite(vals).all(axis=1) & (vals > 0).all(axis=1)
    out = table[ok].copy()
    for c in S.FINAL_OPTIONAL:                    # hand-built tables may lack them
        if c not in out:
            out[c] = np.nan
    out["knob"] = out["knob"].astype(float)
    out.insert(1, "group", [S.group_label(f, k) for f, k in zip(out["family"], out["knob"])])
    return out.reset_index(drop=True)[list(S.FINAL_COLUMNS)], int((~ok).sum())


def without_cooldown(final: pd.DataFrame) -> pd.DataFrame:
    """``final`` with every point at its loss as evaluated (``loss_constant``): a constant-mode
    study refitted without the measured cooldown factor (fit_laws --no-cooldown)."""
    return final.assign(loss=final["loss_constant"], cooldown=1.0)
