"""The scaling laws, a registry (LAWS): L(C) on the frontier, L(N, D), and N*(C), D*(C).

Every law is fitted by the shared bootstrap driver (bootstrap.Law.fit) on ONE group's final runs
and returns a typed ``LawFit``. The study fits every entry of LAWS, in order; reports and plots read
them from here. Adding a law = one entry: a ``HuberLaw`` (a ``huber.LawForm`` fitted to all of a
group's runs; override ``points`` / ``drawn`` to fit another selection) or a ``Law`` subclass with
its own ``point`` and ``draws``.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from analysis import huber
from analysis.bootstrap import (GroupData, HuberLaw, Law, LawFit, Point, TooFewPoints, resamples,
                                rng_for, trunk_units)
from analysis.frontier import (MIN_SIZES_PER_CURVE, IsoFlopCurve, assign_budgets, fit_parabolas,
                               parabola_minimum, pareto_frontier)

EXTRAPOLATE = (10.0, 100.0)  # predict L(C) at these multiples of the largest budget
_MAX_ND_CORR = 0.99  # |corr(ln N, ln D)| above this leaves L(N, D) unidentified


@dataclasses.dataclass(frozen=True, kw_only=True)
class ComputeLaw(HuberLaw):
    """L(C) on the group's Pareto frontier (final evaluations only). Each draw rebuilds the
    frontier from the drawn runs. Derived: ``L@10x`` etc., the predicted loss at ``extrapolate``
    multiples of the largest compute in the data."""

    extrapolate: tuple[float, ...] = EXTRAPOLATE

    def runs(self, data: GroupData) -> pd.DataFrame:
        return data.final.sort_values(["C", "loss"], kind="stable")

    def points(self, runs: pd.DataFrame, group: str) -> pd.DataFrame:
        front = pareto_frontier(runs, group)
        if len(front.C) < self.form.min_points:
            raise TooFewPoints(f"{group}: {len(front.C)} frontier point(s), L(C) needs >= "
                               f"{self.form.min_points} (add budgets)")
        return pd.DataFrame({"C": front.C, "loss": front.loss})

    def drawn(self, runs: pd.DataFrame, idx: np.ndarray) -> np.ndarray | None:
        # idx is sorted by (C, loss) like the runs, so the frontier is a scan
        loss = runs["loss"].to_numpy(float)
        best_before = np.minimum.accumulate(np.concatenate([[np.inf], loss[idx][:-1]]))
        idx = idx[loss[idx] < best_before]
        return idx if len(idx) >= self.form.min_points else None

    def extra(self, data: GroupData, point: np.ndarray, samples: np.ndarray) -> dict:
        cmax = float(data.final["C"].to_numpy(float).max())
        return {f"L@{m:g}x": (self.form.predict(point, {"C": m * cmax}),
                              self.form.predict(samples, {"C": m * cmax}))
                for m in self.extrapolate}


@dataclasses.dataclass(frozen=True, kw_only=True)
class ChinchillaLaw(HuberLaw):
    """L(N, D) on all of the group's final runs (Chinchilla approach 3); needs N and D that vary
    apart. Derived: a_N = β/(α+β) and b_D = α/(α+β), the exponents of N*(C) and D*(C)."""

    def points(self, runs: pd.DataFrame, group: str) -> pd.DataFrame:
        N, D = runs["N"].to_numpy(float), runs["D"].to_numpy(float)
        n_n, n_d = len(np.unique(N)), len(np.unique(D))
        if len(runs) < self.form.min_points or n_n < 3 or n_d < 3:
            raise TooFewPoints(f"{group}: {len(runs)} run(s) with {n_n} distinct N and {n_d} "
                               f"distinct D; L(N, D) needs >= {self.form.min_points} runs and "
                               ">= 3 distinct N and D")
        corr = np.corrcoef(np.log(N), np.log(D))[0, 1]
        if abs(corr) > _MAX_ND_CORR:
            # e.g. one budget (D = C/6N) or a fixed tokens-per-parameter ratio: A/N^α and B/D^β
            # are then one power law and any split between them fits equally well.
            raise TooFewPoints(f"{group}: ln N and ln D are collinear (correlation {corr:+.3f}), "
                               "so L(N, D) cannot separate them; it needs several N per budget "
                               "across several budgets")
        return runs


def _chinchilla_derived(p: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    # Minimising A/N^α + B/D^β subject to C = 6·N·D gives N* ∝ C^(β/(α+β)), D* ∝ C^(α/(α+β))
    # (Hoffmann et al. 2022, eq. 4).
    s = p["alpha"] + p["beta"]
    return {"a_N": p["beta"] / s, "b_D": p["alpha"] / s}


# ---------------------------------------------------------------------------------------------
# Approach 2: power laws through the isoFLOP minima
# ---------------------------------------------------------------------------------------------
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


@dataclasses.dataclass(frozen=True, kw_only=True)
class AllocationLaw(Law):
    """The minima of the isoFLOP parabolas -> N*(C) = k_N·C^a and D*(C) = k_D·C^b.

    Only budgets whose curve has an interior minimum are used (flagged ones are reported apart).
    Draws resample runs *within* each budget: an isoFLOP design fixes its budgets, and a global
    resample would often leave a budget with < 3 sizes. Points that share a trunk (a trajectory
    study: one run read off at several budgets) are not independent across budgets, so there the
    draws resample trunks across all budgets (bootstrap.resamples). A draw whose parabola loses
    its interior minimum, or draws < 3 sizes of a budget, drops that budget; a draw with < 2
    budgets left fails.
    """

    def point(self, data: GroupData) -> Point:
        if not any(len(c.N) >= MIN_SIZES_PER_CURVE for c in data.curves):
            # not an isoFLOP grid (e.g. one run per budget)
            raise TooFewPoints(f"{data.group}: no budget has >= {MIN_SIZES_PER_CURVE} sizes, so "
                               "no isoFLOP curves and no N*(C), D*(C)")
        good = [c for c in data.curves if c.ok]
        if len(good) < 2:
            raise TooFewPoints(f"{data.group}: {len(good)} isoFLOP budget(s) with an interior "
                               f"minimum, N*(C) needs >= 2")
        logc = np.log([c.c_opt for c in good])
        value = _power_fits(logc[None], np.log([[c.n_opt for c in good]]),
                            np.log([[c.d_opt for c in good]]))[0]
        return Point(value=value, objective=np.nan, n_points=len(good), state=good)

    def draws(self, data: GroupData, point: Point, seed: int, n_boot: int) -> np.ndarray:
        good: list[IsoFlopCurve] = point.state
        g = data.final
        budget = assign_budgets(g).to_numpy()
        units = trunk_units(g)
        if units is None:
            rng = rng_for(seed, data.group)
        else:
            # Trajectory study: a trunk is a point of several budgets, so draws resample trunks
            # across all budgets at once and a budget's points weigh their trunk's multiplicity.
            weights = np.zeros((n_boot, len(g)))
            for b, counts, _ in resamples(seed, data.group, len(g), n_boot, units):
                weights[b] = counts
        logn = np.full((n_boot, len(good)), np.nan)
        logd = np.full((n_boot, len(good)), np.nan)
        logc = np.full((n_boot, len(good)), np.nan)
        for j, c in enumerate(good):
            sel = (np.isclose(budget, c.budget, rtol=1e-9)
                   & g["N"].between(*c.window).to_numpy())         # the sizes the parabola uses
            runs = g[sel]
            u = np.log(runs["N"].to_numpy(float)) - c.center
            lnc = np.log(runs["C"].to_numpy(float))
            lnr = lnc - np.log((runs["N"] * runs["D"]).to_numpy(float))
            w = (rng.multinomial(len(runs), np.full(len(runs), 1 / len(runs)), size=n_boot)
                 if units is None else weights[:, sel])
            coef = fit_parabolas(u, runs["loss"].to_numpy(float), w.astype(float))
            v = parabola_minimum(coef, u.min(), u.max())
            order = np.argsort(u)
            logn[:, j] = v + c.center
            logc[:, j] = np.interp(v, u[order], lnc[order])   # C at the drawn minimum
            logd[:, j] = logc[:, j] - np.interp(v, u[order], lnr[order]) - logn[:, j]
        return _power_fits(logc, logn, logd)


# ---------------------------------------------------------------------------------------------
# The registry: the study fits every law here, in this order; fits.json / fits.parquet list
# them in this order too.
# ---------------------------------------------------------------------------------------------
LAWS: dict[str, Law] = {law.name: law for law in (
    # Approach 2 first: a group's notes list the isoFLOP curves' flags, then why N*(C) is missing.
    AllocationLaw(name="allocation", formula="N*(C) = k_N·C^a, D*(C) = k_D·C^b",
                  params=("k_N", "a", "k_D", "b")),
    ComputeLaw(form=huber.LawForm(name="compute", formula="L(C) = A·C^-beta + B",
                                  terms=(huber.Term("A", "beta", "C"), huber.Term("B")),
                                  params=("A", "beta", "B"))),
    ChinchillaLaw(form=huber.LawForm(name="chinchilla",
                                     formula="L(N, D) = E + A/N^alpha + B/D^beta",
                                     terms=(huber.Term("E"), huber.Term("A", "alpha", "N"),
                                            huber.Term("B", "beta", "D")),
                                     params=("E", "A", "alpha", "B", "beta")),
                  derived=_chinchilla_derived, derived_from=("alpha", "beta")),
)}


@huber.single_threaded_blas
def fit_law(law: str | Law, final: pd.DataFrame, group: str, *, n_boot: int = 1000,
            seed: int = 0, curves: list[IsoFlopCurve] | None = None) -> LawFit:
    """Fit one law (a name in LAWS, or a Law) to ``group``'s runs of a final-points table.

    ``curves``: the group's isoFLOP curves if already built (else built when a law needs them).
    Raises :class:`TooFewPoints` when the group's data cannot fit the law."""
    law = LAWS[law] if isinstance(law, str) else law
    data = GroupData(final[final["group"] == group], group,
                     None if curves is None else tuple(curves))
    return law.fit(data, n_boot=n_boot, seed=seed)
