"""All fits of one study: every group's frontier, isoFLOP curves, laws and backtest, and the
pairwise crossovers. Pure: a final-points table in, a :class:`StudyFit` out."""

from __future__ import annotations

import dataclasses
import itertools
from typing import Callable

import numpy as np
import pandas as pd

from analysis.compare import Backtest, Crossover, backtest, crossover
from analysis.frontier import (C_BIN_TOL_DEX, MIN_SIZES_PER_CURVE, Frontier, IsoFlopCurve,
                               assign_budgets, isoflop_curves, pareto_frontier)
from analysis.bootstrap import GroupData, LawFit, TooFewPoints
from analysis import data_constrained as dc
from analysis import hp_laws
from analysis.huber import single_threaded_blas
from analysis.laws import EXTRAPOLATE, LAWS
from analysis.load import DropCounts
from analysis.noise_floor import SeedSpread, seed_spread
from analysis.schema import AnalysisError
from analysis.trajectory import Cooldown


@dataclasses.dataclass(frozen=True, kw_only=True)
class GroupFit:
    """Everything fitted for one group (a family, or a family at one knob value)."""

    group: str
    family: str
    knob: float
    n_runs: int
    frontier: Frontier
    isoflops: tuple[IsoFlopCurve, ...]
    laws: dict[str, LawFit]
    """The laws.LAWS that could be fitted, in LAWS order; a missing one has a message."""
    backtest: Backtest | None
    messages: tuple[str, ...]
    """Why a law is missing, and every flagged isoFLOP curve."""
    hp: hp_laws.HpFit | None = None
    """Batch and LR laws (analysis/hp_laws.py) where the points vary batch and LR."""
    data_constrained: dc.DataConstrainedFit | None = None
    """Muennighoff et al.'s R* law (analysis/data_constrained.py) where points repeat a pool."""
    data_frontier: tuple[dict, ...] = ()
    """The token-bound frontier L*(U): per (U, D) the best loss over N (data_constrained.frontier)."""

    def law(self, name: str) -> LawFit | None:
        """The group's fit of law ``name`` (a key of laws.LAWS), None if it could not be fitted."""
        if name not in LAWS:
            raise KeyError(f"law {name!r} is unknown; known: {', '.join(LAWS)}")
        return self.laws.get(name)


@dataclasses.dataclass(frozen=True, kw_only=True)
class StudyFit:
    groups: tuple[GroupFit, ...]
    crossovers: tuple[Crossover, ...]
    dropped: DropCounts
    n_boot: int
    seed: int
    c_range: tuple[float, float]
    """Range searched for crossovers: smallest C in the data to 100x the largest."""
    flop_convention: str = "matmul"
    """What C counts: a core.flops.CONVENTIONS name, or 'table' for a table's own C."""
    n_column: str = "n_backbone"
    """What N counts (analysis.schema.N_COLUMNS), or 'table'."""
    cooldown: tuple[Cooldown, ...] = ()
    """Cooldown factors of a trajectory study (analysis/trajectory.py); () for a classic one."""
    cooldown_applied: bool = True
    """False when the constant-mode read-offs were fitted without their factor (--no-cooldown)."""
    seed_spread: tuple[SeedSpread, ...] = ()
    """The seed-to-seed noise floor of each group with repeated configurations."""

    @property
    def warnings(self) -> tuple[str, ...]:
        """What the fits rest on that was not measured (a cooldown factor assumed 1.0)."""
        return tuple(c.warning for c in self.cooldown if c.warning and self.cooldown_applied)

    def group(self, name: str) -> GroupFit:
        return next(g for g in self.groups if g.group == name)

    @property
    def any_law(self) -> bool:
        return any(g.laws for g in self.groups)


def select_groups(final: pd.DataFrame, families: list[str] | None = None) -> list[str]:
    """Groups to fit: all, or those whose family or group name is in ``families``.

    Raises :class:`AnalysisError` naming any requested family that has no runs, and when the table
    is empty; cheap, so the CLI calls it before any fitting.
    """
    if final.empty:
        raise AnalysisError("no usable runs: every run was dropped (failed, unfinished or NaN)")
    groups = sorted(final["group"].unique())
    if not families:
        return groups
    known = set(groups) | set(final["family"].unique())
    unknown = [f for f in families if f not in known]
    if unknown:
        raise AnalysisError(f"unknown family {', '.join(map(repr, unknown))}; the data has "
                            f"{', '.join(sorted(known))}")
    fam = dict(zip(final["group"], final["family"]))
    return [g for g in groups if g in families or fam[g] in families]


def _attempt(fn: Callable, messages: list[str]):
    try:
        return fn()
    except TooFewPoints as e:
        messages.append(str(e))
        return None


def fit_group(final: pd.DataFrame, group: str, *, n_boot: int, seed: int,
              c_bin_tol: float = C_BIN_TOL_DEX) -> GroupFit:
    g = final[final["group"] == group]
    # Runs without a budget (tables from elsewhere) are binned in log C once, here, so isoFLOP
    # curves, their bootstrap and the backtest all see the same budgets.
    g = g.assign(budget=assign_budgets(g, c_bin_tol).to_numpy())
    messages: list[str] = []
    curves = tuple(isoflop_curves(g, group))
    # Not an isoFLOP grid (e.g. one run per budget): the allocation law's one note says so, not
    # one flag per budget.
    if any(len(c.N) >= MIN_SIZES_PER_CURVE for c in curves):
        messages += [c.flag for c in curves if c.flag]
    data = GroupData(g, group, curves)
    hp = (_attempt(lambda: hp_laws.fit_hp(g, group, n_boot=n_boot, seed=seed), messages)
          if hp_laws.has_hp_grid(g) else None)
    if hp is not None:
        messages += list(hp.messages)
    repeated = g[np.isfinite(g["U"])] if "U" in g else g.iloc[:0]
    constrained, data_frontier = None, ()
    if (repeated["D"] > repeated["U"]).any():
        data_frontier = tuple(dc.frontier(repeated).to_dict("records"))
        try:
            constrained = dc.fit_data_constrained(repeated, group, n_boot=n_boot, seed=seed)
        except ValueError as e:
            messages.append(str(e))
    laws = {}
    for name, law in LAWS.items():
        fit = _attempt(lambda: law.fit(data, n_boot=n_boot, seed=seed), messages)
        if fit is not None:
            laws[name] = fit
    return GroupFit(
        group=group, family=str(g["family"].iloc[0]), knob=float(g["knob"].iloc[0]),
        n_runs=len(g), frontier=pareto_frontier(g, group), isoflops=curves, laws=laws,
        # Without an L(C) on all the data there is nothing to backtest (and its message says why).
        backtest=_attempt(lambda: backtest(g, group), messages) if "compute" in laws else None,
        messages=tuple(messages), hp=hp, data_constrained=constrained,
        data_frontier=data_frontier,
    )


@single_threaded_blas
def fit_study(final: pd.DataFrame, dropped: DropCounts = DropCounts(), *,
              families: list[str] | None = None, n_boot: int = 1000, seed: int = 0,
              c_bin_tol: float = C_BIN_TOL_DEX, flop_convention: str = "matmul",
              n_column: str = "n_backbone", cooldown: tuple[Cooldown, ...] = (),
              cooldown_applied: bool = True) -> StudyFit:
    """Fit every selected group of a ``schema.FINAL_COLUMNS`` table and compare them pairwise.
    ``flop_convention`` and ``n_column`` say what the table's C and N count, ``cooldown`` the
    factors its trunk read-offs were multiplied by (``cooldown_applied``), for the reports; the
    seed-to-seed noise floor is measured from the table's repeated configurations.

    ``c_bin_tol``: widest log10-C span (dex) of one isoFLOP budget for runs with no budget
    (``frontier.assign_budgets``)."""
    groups = select_groups(final, families)
    fits = tuple(fit_group(final, g, n_boot=n_boot, seed=seed, c_bin_tol=c_bin_tol)
                 for g in groups)
    used = final[final["group"].isin(groups)]
    c_range = (float(used["C"].min()), float(used["C"].max()) * max(EXTRAPOLATE))
    crossings = tuple(crossover(a.law("compute"), b.law("compute"), c_range)
                      for a, b in itertools.combinations(fits, 2)
                      if a.law("compute") and b.law("compute"))
    return StudyFit(groups=fits, crossovers=crossings, dropped=dropped, n_boot=n_boot, seed=seed,
                    c_range=c_range, flop_convention=flop_convention, n_column=n_column,
                    cooldown=tuple(c for c in cooldown if c.group in groups),
                    cooldown_applied=cooldown_applied, seed_spread=seed_spread(used))


def nan_to_none(x):
    """JSON has no NaN: recursively map non-finite floats to None."""
    if isinstance(x, dict):
        return {k: nan_to_none(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [nan_to_none(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return float(x) if np.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x
