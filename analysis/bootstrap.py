"""The law interface and the bootstrap driver every law shares (the laws themselves: laws.py).

A law is a :class:`Law`: its name, formula and parameters, a point fit to ONE group's final runs
(a ``schema.FINAL_COLUMNS`` table) and a refit of bootstrap draws. :meth:`Law.fit` is the driver:
point fit, draws, natural units, identification flags, derived quantities and intervals, a typed
:class:`LawFit`. Uncertainty is a bootstrap over runs: intervals are the 2.5/97.5 percentiles
(95%) of the draws; where points share a trunk (trajectory studies: analysis/trajectory.py) the
bootstrap draws trunks, not points. Draws come from ``rng_for(seed, group)``, so every law of a group sees the same
resamples and results do not depend on which other groups were fitted. :class:`HuberLaw` is the
shared kind of law of loss: a ``huber.LawForm`` fitted by the Huber engine, each draw a resample of
runs with replacement refitted warm from the point estimate.
"""

from __future__ import annotations

import dataclasses
import functools
import zlib
from typing import Callable

import numpy as np
import pandas as pd

from analysis import huber
from analysis.frontier import IsoFlopCurve, isoflop_curves
from analysis.schema import AnalysisError

LEVEL = 0.95
PILEUP_SHARE = 0.2
"""A parameter whose bootstrap draws sit at a bound of the fit (``huber.at_bound``) this often is
not identified even if its point estimate is not: 95% intervals are read off the 2.5/97.5
percentiles, so a 20% pile-up already decides one end of the interval, which is then the bound
(e.g. α = 2.06 [0.084, 4]), not a measurement."""
NOT_IDENTIFIED = "not identified by these runs"


class TooFewPoints(AnalysisError):
    """Too few (distinct) points for a law; the message names the group and the count needed."""


@dataclasses.dataclass(frozen=True)
class Estimate:
    """Point estimate and bootstrap interval (NaN bounds when no bootstrap was run)."""

    value: float
    lo: float = np.nan
    hi: float = np.nan
    flag: str | None = None
    """Why the value is not identified by the data (at a bound of the fit, or derived from such a
    parameter); None when it is. A flagged value is shown without its interval."""

    @property
    def identified(self) -> bool:
        return self.flag is None

    def fmt(self, spec: str = ".3g") -> str:
        if self.flag:
            return f"{self.value:{spec}} (not identified)"
        if not np.isfinite(self.lo):
            return format(self.value, spec)
        return f"{self.value:{spec}} [{self.lo:{spec}}, {self.hi:{spec}}]"


@dataclasses.dataclass(frozen=True, kw_only=True)
class LawFit:
    """A fitted law of one group: natural-unit parameters and derived quantities with intervals."""

    law: str
    """Key of ``laws.LAWS``."""
    group: str
    params: dict[str, Estimate]
    derived: dict[str, Estimate]
    n_points: int
    """Points the point estimate was fitted on (frontier points for L(C))."""
    n_boot: int
    """Bootstrap draws that gave a fit; ``samples`` has NaN rows for the others."""
    objective: float
    point: np.ndarray = dataclasses.field(compare=False, repr=False)
    """(k,) natural parameters in ``params`` order."""
    samples: np.ndarray = dataclasses.field(compare=False, repr=False)
    """(n_boot_requested, k) natural parameters per draw."""
    form: huber.LawForm | None = dataclasses.field(default=None, compare=False, repr=False)
    """The law's form for laws of loss (``predict``, ``band``); None for others."""

    @property
    def flags(self) -> dict[str, str]:
        """{parameter or derived quantity: why it is not identified by these runs}."""
        return {k: e.flag for k, e in {**self.params, **self.derived}.items() if e.flag}

    @property
    def identified(self) -> bool:
        return not any(e.flag for e in self.params.values())

    def predict(self, **features: np.ndarray) -> np.ndarray:
        """Loss at ``features`` (e.g. ``C=...``); only for laws of loss (those with a form)."""
        return self.form.predict(self.point, features)

    def band(self, level: float = LEVEL, **features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pointwise bootstrap interval of the prediction at ``features``."""
        ok = np.isfinite(self.samples).all(axis=1)
        if not ok.any():
            nan = np.full(np.shape(self.predict(**features)), np.nan)
            return nan, nan
        curves = self.form.predict(self.samples[ok], features)
        q = 50 * (1 - level)
        return np.percentile(curves, q, axis=0), np.percentile(curves, 100 - q, axis=0)


def rng_for(seed: int, group: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(group.encode())])


def trunk_units(points: pd.DataFrame) -> np.ndarray | None:
    """(n,) bootstrap unit of each point: codes of its ``trunk`` in order of first appearance, or
    None when every point is its own unit (no ``trunk`` column, or all distinct: a classic study)."""
    if "trunk" not in points:
        return None
    codes, uniques = pd.factorize(points["trunk"].astype(str), sort=False)
    return None if len(uniques) == len(points) else codes


def resamples(seed: int, group: str, n: int, n_boot: int, units: np.ndarray | None = None):
    """Bootstrap over units: per draw, (draw index, multiplicity of each of the n points, points
    drawn >= once).

    ``units`` (n,) ints in 0..k−1 (``trunk_units``): the points of one trunk share its noise (a
    trunk read off at several budgets, a trunk and its branches), so a draw picks k trunks with
    replacement and every point of a trunk drawn m times enters m times. None: each point is its
    own unit, and the draws are those of a bootstrap over points (the same stream as units
    0..n−1: a classic study's results do not change)."""
    rng = rng_for(seed, group)
    units = np.arange(n) if units is None else np.asarray(units)
    k = int(units.max()) + 1 if n else 0
    for b in range(n_boot):
        counts = np.bincount(rng.integers(0, k, k), minlength=k)[units]
        yield b, counts, np.flatnonzero(counts)


def _estimates(names, point: np.ndarray, samples: np.ndarray,
               flags: dict[str, str] | None = None) -> dict[str, Estimate]:
    """``point`` (k,), ``samples`` (B, k) with NaN rows for failed draws -> {name: Estimate}."""
    ok = samples[np.isfinite(samples).all(axis=1)]
    q = [50 * (1 - LEVEL), 100 - 50 * (1 - LEVEL)]
    lo, hi = np.percentile(ok, q, axis=0) if len(ok) else np.full((2, len(names)), np.nan)
    flags = flags or {}
    return {n: Estimate(float(point[i]), float(lo[i]), float(hi[i]), flags.get(n))
            for i, n in enumerate(names)}


def identification(form: huber.LawForm, theta: np.ndarray, thetas: np.ndarray,
                   d: huber.Design) -> dict[str, str]:
    """{parameter: reason} for the parameters of a fit the data does not identify: the point
    estimate at a bound of the fit, or >= PILEUP_SHARE of the bootstrap draws there."""
    point = huber.at_bound(form, theta, d)
    ok = np.isfinite(thetas).all(axis=1)
    piled = huber.at_bound(form, thetas[ok], d).mean(axis=0) if ok.any() else point * 0.0
    flags = {}
    for i, name in enumerate(form.params):
        if point[i]:
            flags[name] = f"{NOT_IDENTIFIED}: the estimate is at a bound of the fit"
        elif piled[i] >= PILEUP_SHARE:
            flags[name] = (f"{NOT_IDENTIFIED}: {piled[i]:.0%} of bootstrap draws are at a bound "
                           "of the fit")
    return flags


def _derived_flags(names, sources, flags: dict[str, str]) -> dict[str, str]:
    bad = [p for p in sources if p in flags]
    if not bad:
        return {}
    why = f"derived from {', '.join(bad)}, {NOT_IDENTIFIED}"
    return {n: why for n in names}


@dataclasses.dataclass(frozen=True, eq=False)
class GroupData:
    """What a law is fitted on: one group's final runs and (computed once) its isoFLOP curves."""

    final: pd.DataFrame
    """The group's rows of a ``schema.FINAL_COLUMNS`` table."""
    group: str
    given_curves: tuple[IsoFlopCurve, ...] | None = None

    @functools.cached_property
    def curves(self) -> tuple[IsoFlopCurve, ...]:
        if self.given_curves is not None:
            return self.given_curves
        return tuple(isoflop_curves(self.final, self.group))


@dataclasses.dataclass(frozen=True, kw_only=True)
class Point:
    """A law's fit to all of a group's data, in the law's own coordinates (``Law.natural``)."""

    value: np.ndarray
    objective: float
    n_points: int
    state: object = None
    """What the law's draws, flags and derived quantities need from the point fit."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class Law:
    """A registered law. Subclasses define ``point`` and ``draws``; ``fit`` is the shared driver."""

    name: str = ""
    formula: str = ""
    params: tuple[str, ...] = ()
    """Natural parameters, in the order of the fit's arrays (a law with a form: the form's)."""
    derived: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]] = lambda p: {}
    """Derived quantities from natural parameters (arrays over bootstrap draws)."""
    derived_from: tuple[str, ...] = ()
    """The parameters ``derived`` reads: a derived quantity is only as identified as they are."""
    form: huber.LawForm | None = None
    """Laws of loss: the form that predicts L (``LawFit.predict``, bands, crossovers); name,
    formula and params default to the form's."""

    def __post_init__(self):
        if self.form is not None:
            for field in ("name", "formula", "params"):
                mine, its = getattr(self, field), getattr(self.form, field)
                if not mine:
                    object.__setattr__(self, field, its)
                elif mine != its:
                    raise ValueError(f"law {self.name!r}: {field} {mine!r} is not its "
                                     f"form's {its!r}")
        for field in ("name", "formula", "params"):
            if not getattr(self, field):
                raise ValueError(f"law {self.name or '?'}: {field} is required")

    def point(self, data: GroupData) -> Point:
        """Fit to all of the group's data; raises :class:`TooFewPoints` naming what is missing."""
        raise NotImplementedError

    def draws(self, data: GroupData, point: Point, seed: int, n_boot: int) -> np.ndarray:
        """(n_boot, k) refits of bootstrap draws in ``point``'s coordinates; NaN rows failed."""
        raise NotImplementedError

    def natural(self, point: Point, values: np.ndarray) -> np.ndarray:
        """The law's coordinates (..., k) -> natural parameters (..., k)."""
        return values

    def flags(self, point: Point, draws: np.ndarray) -> dict[str, str]:
        """{parameter: why it is not identified by these runs}."""
        return {}

    def extra(self, data: GroupData, point: np.ndarray, samples: np.ndarray) -> dict:
        """{name: (point, samples)} predictions that read every parameter (e.g. L@10x)."""
        return {}

    def fit(self, data: GroupData, *, n_boot: int = 1000, seed: int = 0) -> LawFit:
        """The driver every law shares: point fit, bootstrap, flags, derived, intervals."""
        pt = self.point(data)
        raw = (self.draws(data, pt, seed, n_boot) if n_boot
               else np.full((0, len(self.params)), np.nan))
        point, samples = self.natural(pt, pt.value), self.natural(pt, raw)
        flags = self.flags(pt, raw)

        def named(arr):
            return {p: arr[..., i] for i, p in enumerate(self.params)}

        dp, ds = self.derived(named(point)), self.derived(named(samples))
        dflags = _derived_flags(list(dp), self.derived_from, flags)
        extra = self.extra(data, point, samples)
        for name, (p, s) in extra.items():
            dp[name], ds[name] = p, s
        dflags |= _derived_flags(list(extra), self.params, flags)
        names = list(dp)
        derived = _estimates(names, np.array([dp[k] for k in names], float).reshape(len(names)),
                             np.stack([ds[k] for k in names], axis=1) if names
                             else np.zeros((len(samples), 0)), dflags)
        return LawFit(law=self.name, group=data.group,
                      params=_estimates(self.params, point, samples, flags),
                      derived=derived, n_points=pt.n_points,
                      n_boot=int(np.isfinite(samples).all(axis=1).sum()), objective=pt.objective,
                      point=point, samples=samples, form=self.form)


# ---------------------------------------------------------------------------------------------
# Laws of loss fitted by the Huber engine (Chinchilla approach 3's recipe, huber.py)
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _HuberState:
    runs: pd.DataFrame
    """The runs, in the order the bootstrap indexes them."""
    design: huber.Design
    """The point fit's data (fit space)."""
    full: huber.Design
    """Every run, at the point fit's scale: what a draw's refit selects from."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class HuberLaw(Law):
    """``form`` fitted to the group's runs by the Huber engine. Each bootstrap draw resamples the
    runs (their trunks, where points share one: ``resamples``), keeps ``drawn`` of them (a run
    drawn k times weighs k) and refits warm from the point estimate; parameters at a bound of the
    fit are flagged (``identification``)."""

    form: huber.LawForm

    def runs(self, data: GroupData) -> pd.DataFrame:
        """The group's runs in bootstrap order."""
        return data.final

    def points(self, runs: pd.DataFrame, group: str) -> pd.DataFrame:
        """The runs the point estimate is fitted on; raises TooFewPoints (default: all runs)."""
        if len(runs) < self.form.min_points:
            raise TooFewPoints(f"{group}: {len(runs)} run(s), {self.formula} needs >= "
                               f"{self.form.min_points}")
        return runs

    def drawn(self, runs: pd.DataFrame, idx: np.ndarray) -> np.ndarray | None:
        """The drawn runs ``idx`` (sorted) a draw's refit uses, or None if it cannot refit."""
        return idx

    def _features(self, t) -> dict[str, np.ndarray]:
        return {f: t[f].to_numpy(float) for f in self.form.features}

    def point(self, data: GroupData) -> Point:
        runs = self.runs(data)
        pts = self.points(runs, data.group)
        d = huber.design(self.form, self._features(pts), pts["loss"].to_numpy(float))
        theta, value = huber.fit(self.form, d)
        full = huber.design(self.form, self._features(runs), runs["loss"].to_numpy(float),
                            scale=d.scale)
        return Point(value=theta, objective=value, n_points=len(pts),
                     state=_HuberState(runs=runs, design=d, full=full))

    def draws(self, data: GroupData, point: Point, seed: int, n_boot: int) -> np.ndarray:
        s: _HuberState = point.state
        thetas = np.full((n_boot, len(point.value)), np.nan)
        r_inv = huber.whitener(self.form, point.value, s.design)
        units = trunk_units(s.runs)
        for b, counts, idx in resamples(seed, data.group, len(s.runs), n_boot, units):
            idx = self.drawn(s.runs, idx)
            if idx is not None:
                thetas[b] = huber.refit(self.form, point.value, r_inv, s.full.take(idx),
                                        counts[idx].astype(float))
        return thetas

    def natural(self, point: Point, values: np.ndarray) -> np.ndarray:
        return huber.natural(self.form, values, point.state.design.scale)

    def flags(self, point: Point, draws: np.ndarray) -> dict[str, str]:
        return identification(self.form, point.value, draws, point.state.design)
