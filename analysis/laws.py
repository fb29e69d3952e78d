"""Scaling-law fits with bootstrap intervals: L(C) on the frontier, L(N, D), and N*(C), D*(C).

Every function takes a ``schema.FINAL_COLUMNS`` table of ONE group's final runs and returns a
typed result. Uncertainty is a bootstrap over runs: each draw resamples the group's runs with
replacement and refits; intervals are the 2.5/97.5 percentiles (95%). Draws come from
``rng_for(seed, group)``, so every law of a group sees the same resamples and results do not
depend on which other groups were fitted.
"""

from __future__ import annotations

import dataclasses
import zlib

import numpy as np
import pandas as pd

from analysis import huber
from analysis.frontier import (IsoFlopCurve, assign_budgets, fit_parabolas, parabola_minimum,
                               pareto_frontier)
from analysis.schema import AnalysisError

LEVEL = 0.95
EXTRAPOLATE = (10.0, 100.0)  # predict L(C) at these multiples of the largest budget
_MAX_ND_CORR = 0.99  # |corr(ln N, ln D)| above this leaves L(N, D) unidentified
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
    """Key of ``huber.LAWS`` (the law's form), or "allocation" for approach 2."""
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

    @property
    def flags(self) -> dict[str, str]:
        """{parameter or derived quantity: why it is not identified by these runs}."""
        return {k: e.flag for k, e in {**self.params, **self.derived}.items() if e.flag}

    @property
    def identified(self) -> bool:
        return not any(e.flag for e in self.params.values())

    def predict(self, **features: np.ndarray) -> np.ndarray:
        """Loss at ``features`` (e.g. ``C=...``); only for laws of loss (not "allocation")."""
        return huber.LAWS[self.law].predict(self.point, features)

    def band(self, level: float = LEVEL, **features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pointwise bootstrap interval of the prediction at ``features``."""
        ok = np.isfinite(self.samples).all(axis=1)
        if not ok.any():
            nan = np.full(np.shape(self.predict(**features)), np.nan)
            return nan, nan
        curves = huber.LAWS[self.law].predict(self.samples[ok], features)
        q = 50 * (1 - level)
        return np.percentile(curves, q, axis=0), np.percentile(curves, 100 - q, axis=0)


def rng_for(seed: int, group: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(group.encode())])


def resamples(seed: int, group: str, n: int, n_boot: int):
    """Bootstrap over runs: per draw, (draw index, multiplicity of each run, runs drawn >= once)."""
    rng = rng_for(seed, group)
    for b in range(n_boot):
        counts = np.bincount(rng.integers(0, n, n), minlength=n)
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


def _law_fit(form: huber.LawForm, group: str, point: np.ndarray, samples: np.ndarray,
             n_points: int, objective: float, extra: dict | None = None,
             flags: dict[str, str] | None = None) -> LawFit:
    """``extra``: {name: (point, samples)} predictions that read every parameter (e.g. L@10x)."""
    def named(arr):
        return {p: arr[..., i] for i, p in enumerate(form.params)}

    flags = flags or {}
    dp, ds = form.derived(named(point)), form.derived(named(samples))
    dflags = _derived_flags(list(dp), form.derived_from, flags)
    for name, (p, s) in (extra or {}).items():
        dp[name], ds[name] = p, s
    dflags |= _derived_flags(list(extra or {}), form.params, flags)
    names = list(dp)
    derived = _estimates(names, np.array([dp[k] for k in names], float).reshape(len(names)),
                         np.stack([ds[k] for k in names], axis=1) if names
                         else np.zeros((len(samples), 0)), dflags)
    return LawFit(law=form.name, group=group,
                  params=_estimates(form.params, point, samples, flags),
                  derived=derived, n_points=n_points,
                  n_boot=int(np.isfinite(samples).all(axis=1).sum()), objective=objective,
                  point=point, samples=samples)


@huber.single_threaded_blas
def fit_compute_law(final: pd.DataFrame, group: str, *, n_boot: int = 1000, seed: int = 0,
                    extrapolate: tuple[float, ...] = EXTRAPOLATE) -> LawFit:
    """L(C) = A·C^(−β) + B on the group's Pareto frontier (final evaluations only).

    Each bootstrap draw resamples the group's runs, rebuilds the frontier from the drawn runs
    (a run drawn k times weighs k) and refits. Derived: ``L@10x`` etc., the predicted loss at those
    multiples of the largest compute in the data.
    """
    form = huber.LAWS["compute"]
    g = final[final["group"] == group].sort_values(["C", "loss"], kind="stable")
    front = pareto_frontier(g, group)
    if len(front.C) < form.min_points:
        raise TooFewPoints(f"{group}: {len(front.C)} frontier point(s), L(C) needs >= "
                           f"{form.min_points} (add budgets)")
    d = huber.design(form, {"C": front.C}, front.loss)
    theta, value = huber.fit(form, d)
    C, loss = g["C"].to_numpy(float), g["loss"].to_numpy(float)
    full = huber.design(form, {"C": C}, loss, scale=d.scale)
    thetas = np.full((n_boot, len(theta)), np.nan)
    if n_boot:
        r_inv = huber.whitener(form, theta, d)
        for b, counts, idx in resamples(seed, group, len(C), n_boot):
            # idx is sorted by (C, loss) like g, so the frontier is a scan
            best_before = np.minimum.accumulate(np.concatenate([[np.inf], loss[idx][:-1]]))
            idx = idx[loss[idx] < best_before]
            if len(idx) >= form.min_points:
                thetas[b] = huber.refit(form, theta, r_inv, full.take(idx),
                                        counts[idx].astype(float))
    point, samples = huber.natural(form, theta, d.scale), huber.natural(form, thetas, d.scale)
    cmax = float(C.max())
    extra = {f"L@{m:g}x": (form.predict(point, {"C": m * cmax}),
                           form.predict(samples, {"C": m * cmax}))
             for m in extrapolate}
    return _law_fit(form, group, point, samples, len(front.C), value, extra,
                    flags=identification(form, theta, thetas, d))


@huber.single_threaded_blas
def fit_chinchilla(final: pd.DataFrame, group: str, *, n_boot: int = 1000, seed: int = 0
                   ) -> LawFit:
    """L(N, D) = E + A/N^α + B/D^β on all of the group's final runs (Chinchilla approach 3).

    Derived: a_N = β/(α+β) and b_D = α/(α+β), the exponents of N*(C) and D*(C) it implies.
    """
    form = huber.LAWS["chinchilla"]
    g = final[final["group"] == group]
    N, D, loss = (g[c].to_numpy(float) for c in ("N", "D", "loss"))
    n_n, n_d = len(np.unique(N)), len(np.unique(D))
    if len(g) < form.min_points or n_n < 3 or n_d < 3:
        raise TooFewPoints(f"{group}: {len(g)} run(s) with {n_n} distinct N and {n_d} distinct D; "
                           f"L(N, D) needs >= {form.min_points} runs and >= 3 distinct N and D")
    corr = np.corrcoef(np.log(N), np.log(D))[0, 1]
    if abs(corr) > _MAX_ND_CORR:
        # e.g. one budget (D = C/6N) or a fixed tokens-per-parameter ratio: A/N^α and B/D^β are
        # then one power law and any split between them fits equally well.
        raise TooFewPoints(f"{group}: ln N and ln D are collinear (correlation {corr:+.3f}), so "
                           "L(N, D) cannot separate them; it needs several N per budget "
                           "across several budgets")
    d = huber.design(form, {"N": N, "D": D}, loss)
    theta, value = huber.fit(form, d)
    thetas = np.full((n_boot, len(theta)), np.nan)
    if n_boot:
        r_inv = huber.whitener(form, theta, d)
        for b, counts, idx in resamples(seed, group, len(N), n_boot):
            thetas[b] = huber.refit(form, theta, r_inv, d.take(idx), counts[idx].astype(float))
    return _law_fit(form, group, huber.natural(form, theta, d.scale),
                    huber.natural(form, thetas, d.scale), len(g), value,
                    flags=identification(form, theta, thetas, d))


ALLOCATION_PARAMS = ("k_N", "a", "k_D", "b")


def _power_fits(logc: np.ndarray, logn: np.ndarray, logd: np.ndarray) -> np.ndarray:
    """Row-wise OLS of ln N* and ln D* on ln C over budgets; NaN entries are missing budgets.

    Inputs (B, nb); returns (B, 4) = (k_N, a, k_D, b) with N* = k_N·C^a, D* = k_D·C^b.
    """
    m = np.isfinite(logn)
    cnt = m.sum(axis=1)
    x = np.where(m, logc, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        xm = x.sum(1) / cnt
        dx = np.where(m, logc - xm[:, None], 0.0)
        out = []
        for y in (logn, logd):
            ym = np.where(m, y, 0.0).sum(1) / cnt
            slope = (dx * np.where(m, y - ym[:, None], 0.0)).sum(1) / (dx ** 2).sum(1)
            out += [np.exp(ym - slope * xm), slope]
    res = np.stack(out, axis=1)
    res[cnt < 2] = np.nan
    return res


def fit_allocation(final: pd.DataFrame, group: str, curves: list[IsoFlopCurve], *,
                   n_boot: int = 1000, seed: int = 0) -> LawFit:
    """Approach 2: the minima of the isoFLOP parabolas -> N*(C) = k_N·C^a and D*(C) = k_D·C^b.

    Only budgets whose curve has an interior minimum are used (flagged ones are reported apart).
    Draws resample runs *within* each budget: an isoFLOP design fixes its budgets, and a global
    resample would often leave a budget with < 3 sizes. A draw whose parabola loses its interior
    minimum drops that budget; a draw with < 2 budgets left fails.
    """
    good = [c for c in curves if c.ok]
    if len(good) < 2:
        raise TooFewPoints(f"{group}: {len(good)} isoFLOP budget(s) with an interior minimum, "
                           f"N*(C) needs >= 2")
    logc = np.log([c.budget for c in good])
    point = _power_fits(logc[None], np.log([[c.n_opt for c in good]]),
                        np.log([[c.d_opt for c in good]]))[0]
    samples = np.full((n_boot, 4), np.nan)
    if n_boot:
        g = final[final["group"] == group]
        budget = assign_budgets(g).to_numpy()
        rng = rng_for(seed, group)
        logn = np.full((n_boot, len(good)), np.nan)
        logd = np.full((n_boot, len(good)), np.nan)
        for j, c in enumerate(good):
            runs = g[np.isclose(budget, c.budget, rtol=1e-9)]
            runs = runs[runs["N"].between(*c.window)]             # the sizes the parabola uses
            u = np.log(runs["N"].to_numpy(float)) - c.center
            lnr = np.log(runs["C"].to_numpy(float) / (runs["N"] * runs["D"]).to_numpy(float))
            w = rng.multinomial(len(runs), np.full(len(runs), 1 / len(runs)), size=n_boot)
            coef = fit_parabolas(u, runs["loss"].to_numpy(float), w.astype(float))
            v = parabola_minimum(coef, u.min(), u.max())
            order = np.argsort(u)
            logn[:, j] = v + c.center
            logd[:, j] = (np.log(c.budget) - np.interp(v, u[order], lnr[order]) - logn[:, j])
        samples = _power_fits(np.broadcast_to(logc, logn.shape), logn, logd)
    params = _estimates(ALLOCATION_PARAMS, point, samples)
    return LawFit(law="allocation", group=group, params=params, derived={}, n_points=len(good),
                  n_boot=int(np.isfinite(samples).all(axis=1).sum()), objective=np.nan,
                  point=point, samples=samples)
