"""Comparisons built on fitted L(C) laws: crossover compute between groups, and a backtest."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from analysis.frontier import assign_budgets
from analysis.bootstrap import LEVEL, LawFit, TooFewPoints
from analysis.laws import LAWS, fit_law

_GRID = 2000  # log-spaced C points to locate sign changes; ~250 per decade over 8 decades


@dataclasses.dataclass(frozen=True, kw_only=True)
class Crossover:
    """Where group a's L(C) crosses group b's within ``c_range`` (first crossing from below)."""

    a: str
    b: str
    c: float
    """Crossover compute (FLOPs) of the point fits; NaN if they do not cross in range."""
    lo: float
    hi: float
    """Bootstrap interval of the crossover over draws that cross (NaN if none do)."""
    frac: float
    """Fraction of paired bootstrap draws that cross in range."""
    lower_above: str
    """The group with the lower loss above the crossover (throughout, if none)."""
    c_range: tuple[float, float]
    n_crossings: int
    """Sign changes of the point fits' difference in range (two power laws can cross twice)."""
    flag: str | None = None
    """Set when either L(C) has a parameter the data does not identify: the crossover is a
    prediction derived from it."""

    @property
    def crosses(self) -> bool:
        return bool(np.isfinite(self.c))

    @property
    def message(self) -> str:
        other = self.b if self.lower_above == self.a else self.a
        rng = f"[{self.c_range[0]:.3g}, {self.c_range[1]:.3g}] FLOPs"
        if not self.crosses:
            flag = f"; {self.flag}" if self.flag else ""
            return (f"{self.a} vs {self.b}: no crossover in range {rng}; {self.lower_above} is "
                    f"lower throughout ({self.frac:.0%} of bootstrap draws cross{flag})")
        ci = f" [{self.lo:.3g}, {self.hi:.3g}]" if np.isfinite(self.lo) else ""
        more = f"; first of {self.n_crossings} crossings" if self.n_crossings > 1 else ""
        flag = f"; {self.flag}" if self.flag else ""
        return (f"{self.lower_above} beats {other} above C = {self.c:.3g}{ci} FLOPs "
                f"({self.frac:.0%} of bootstrap draws cross in {rng}{more}{flag})")


def _first_crossing(logc: np.ndarray, diff: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows of ``diff`` (B, G) on the grid ``logc`` (G,) -> (ln C at the first sign change or NaN,
    sign of diff just after it, number of sign changes); linear interpolation between points."""
    s = np.sign(diff)
    change = (s[:, 1:] * s[:, :-1]) < 0
    has = change.any(axis=1)
    i = np.argmax(change, axis=1)
    rows = np.arange(len(diff))
    d0, d1 = diff[rows, i], diff[rows, i + 1]
    with np.errstate(invalid="ignore", divide="ignore"):
        x = logc[i] + (logc[i + 1] - logc[i]) * d0 / (d0 - d1)
    return np.where(has, x, np.nan), np.where(has, s[rows, i + 1], s[:, -1]), change.sum(axis=1)


def crossover(fa: LawFit, fb: LawFit, c_range: tuple[float, float]) -> Crossover:
    """Crossover of two L(C) fits on [c_lo, c_hi], with a bootstrap interval from paired draws.

    Draw b of one group is paired with draw b of the other; the groups' resamples are independent,
    so pairing by index is a valid joint draw.
    """
    logc = np.linspace(np.log(c_range[0]), np.log(c_range[1]), _GRID)
    grid = np.exp(logc)
    x, sign, count = _first_crossing(logc, (fa.predict(C=grid) - fb.predict(C=grid))[None])
    n = min(len(fa.samples), len(fb.samples))
    both = np.isfinite(fa.samples[:n]).all(1) & np.isfinite(fb.samples[:n]).all(1)
    lo = hi = np.nan
    frac = 0.0
    if both.any():
        law = LAWS[fa.law].form
        diff = (law.predict(fa.samples[:n][both], {"C": grid})
                - law.predict(fb.samples[:n][both], {"C": grid}))
        xb, _, _ = _first_crossing(logc, diff)
        crossed = np.isfinite(xb)
        frac = float(crossed.mean())
        if crossed.any():
            q = [50 * (1 - LEVEL), 100 - 50 * (1 - LEVEL)]
            lo, hi = np.exp(np.percentile(xb[crossed], q))
    return Crossover(a=fa.group, b=fb.group, c=float(np.exp(x[0])), lo=float(lo), hi=float(hi),
                     frac=frac, lower_above=fa.group if sign[0] < 0 else fb.group,
                     c_range=(float(c_range[0]), float(c_range[1])), n_crossings=int(count[0]),
                     flag=_derived_flag(fa, fb))


def _derived_flag(*fits: LawFit) -> str | None:
    bad = [f"{f.group} L(C) {k}" for f in fits for k, e in f.params.items() if e.flag]
    return f"derived from {', '.join(bad)}, not identified by these runs" if bad else None


@dataclasses.dataclass(frozen=True, kw_only=True)
class Backtest:
    """L(C) refitted without the largest budget, scored on that budget's best run."""

    group: str
    held_out_budget: float
    C: float
    actual: float
    predicted: float

    @property
    def error(self) -> float:
        """Relative error of the prediction: predicted/actual − 1."""
        return self.predicted / self.actual - 1.0


def backtest(final: pd.DataFrame, group: str) -> Backtest:
    """Refit L(C) without the group's largest budget and predict its best run's loss.

    This is the honest check of an extrapolation: the fit never saw the point it predicts.
    Raises :class:`TooFewPoints` when the remaining frontier is too short to fit.
    """
    g = final[final["group"] == group]
    budget = assign_budgets(g).to_numpy()
    top = budget.max()
    held, train = g[np.isclose(budget, top, rtol=1e-9)], g[~np.isclose(budget, top, rtol=1e-9)]
    best = held.loc[held["loss"].idxmin()]
    try:
        fit = fit_law("compute", train, group, n_boot=0)
    except TooFewPoints as e:
        raise TooFewPoints(f"backtest {e} once the largest budget ({top:.3g}) is held out") from e
    return Backtest(group=group, held_out_budget=float(top), C=float(best["C"]),
                    actual=float(best["loss"]), predicted=float(fit.predict(C=best["C"])))
