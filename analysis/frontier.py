"""Pareto frontiers of loss against compute, and isoFLOP curves (loss against N at fixed budget).

Both are built from each run's FINAL evaluation only. With a cosine (or any decaying) schedule the
intermediate evaluations of a run are not compute-optimal points: at 30% of its budget a run still
has a high learning rate and has not annealed, so its loss there is worse than a run *planned* for
that compute would reach (Chinchilla, Hoffmann et al. 2022, §3 and Fig. A1: one cosine cycle must
match the run length). Mixing intermediate points into the frontier would bias L(C) upward at small
C and flatten the fitted exponent.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

C_BIN_TOL_DEX = 0.2
"""Widest span of log10 C (dex) that one isoFLOP budget's runs may have when the table gives no
budget. Bins split at the widest gaps first, so two budgets merge only if all their runs fit in
one span of this width: 0.2 dex (a factor 1.58) stays below the closest spacing of Chinchilla's
budgets (6e18 -> 1e19, 0.22 dex) and of our sweeps' (>= 2x, 0.3 dex), and holds a budget whose
runs scatter by up to ±25% (runs ending on whole steps, C values read off a paper's figure).
See :func:`assign_budgets`."""
MIN_SIZES_PER_CURVE = 3  # a parabola has 3 coefficients
_EXTREME = {"small": "smallest", "large": "largest"}
PARABOLA_HALF_WINDOW = 2
"""The isoFLOP parabola is fitted to the best size and up to this many sizes on each side of it. A
curve is parabolic in ln N only near its minimum: on a wide grid the far ends (a plateau of
under-trained large models, or a steep rise) would drag the vertex off the minimum or out of the
grid. A curve of <= 2·k + 1 sizes around an interior best run is fitted whole."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class Frontier:
    """Runs of one group that no cheaper-or-equal run beats, sorted by compute."""

    group: str
    C: np.ndarray
    """(k,) training FLOPs, ascending."""
    loss: np.ndarray
    """(k,) final loss, nats/token, strictly decreasing."""
    run_id: tuple[str, ...]


@dataclasses.dataclass(frozen=True, kw_only=True)
class IsoFlopCurve:
    """Loss against model size at one compute budget, with its fitted parabola in ln N."""

    group: str
    budget: float
    """FLOPs (the budget tag, else the median final C of the cluster): groups the curve's runs.
    Its convention is the one the runs were trained under; ``c_level`` and ``c_opt`` are in the
    table's (fit_laws --flops), where one budget's runs may differ in C."""
    N: np.ndarray
    """(m,) parameters, ascending."""
    D: np.ndarray
    loss: np.ndarray
    coef: tuple[float, float, float] | None
    """loss ≈ c0 + c1·u + c2·u², u = ln N − u0 with u0 = ``center``; None if < 3 sizes."""
    center: float
    n_opt: float
    """Parabola vertex in N; NaN unless it is a minimum inside the sampled sizes."""
    d_opt: float
    """Tokens at ``n_opt``: ``c_opt`` / (C/(N·D) interpolated in ln N), so it respects the
    table's FLOP accounting."""
    c_opt: float = np.nan
    """C of the runs interpolated in ln N at ``n_opt``: the compute the allocation law puts the
    minimum at (= the budget to within a step's rounding under the training convention)."""
    c_level: float = np.nan
    """Median C of the curve's runs (its label)."""
    flag: str | None
    """Why the curve has no usable interior minimum, and which sizes to add; None if fine."""
    window: tuple[float, float] = (0.0, np.inf)
    """Smallest and largest N the parabola was fitted to (PARABOLA_HALF_WINDOW)."""

    @property
    def ok(self) -> bool:
        return self.flag is None


def frontier_mask(C: np.ndarray, loss: np.ndarray) -> np.ndarray:
    """Boolean mask of Pareto points: loss strictly below every point with C' <= C."""
    if len(C) == 0:
        return np.zeros(0, dtype=bool)
    order = np.lexsort((loss, C))
    best_before = np.minimum.accumulate(np.concatenate([[np.inf], loss[order][:-1]]))
    mask = np.zeros(len(C), dtype=bool)
    mask[order] = loss[order] < best_before
    return mask


def pareto_frontier(final: pd.DataFrame, group: str) -> Frontier:
    """Frontier of ``group`` from a ``schema.FINAL_COLUMNS`` table (final evaluations only)."""
    g = final[final["group"] == group]
    C, loss = g["C"].to_numpy(float), g["loss"].to_numpy(float)
    m = frontier_mask(C, loss)
    order = np.argsort(C[m], kind="stable")
    ids = g["run_id"].to_numpy()[m][order]
    return Frontier(group=group, C=C[m][order], loss=loss[m][order], run_id=tuple(map(str, ids)))


def assign_budgets(final: pd.DataFrame, tol_dex: float = C_BIN_TOL_DEX) -> pd.Series:
    """Budget (FLOPs) of every run: its ``budget`` value, else the median C of its log-C bin.

    Bins come from splitting the sorted log10 C at its widest gap, recursively, until no bin spans
    more than ``tol_dex``: natural clusters (one budget's runs, a few percent apart) stay whole
    however densely they are sampled, and a bin never chains across budgets the way a fixed gap
    threshold does on scattered C. ``tol_dex=0`` puts every distinct C in its own bin.
    """
    budget = final["budget"].astype(float).copy()
    missing = budget.isna().to_numpy()
    if missing.any():
        logc = np.log10(final.loc[missing, "C"].to_numpy(float))
        order = np.argsort(logc, kind="stable")
        cluster = np.empty(len(logc), dtype=int)
        cluster[order] = _log_bins(logc[order], tol_dex)
        med = pd.Series(10 ** logc).groupby(cluster).transform("median").to_numpy()
        budget[missing] = med
    return budget


def _log_bins(sorted_logc: np.ndarray, tol: float) -> np.ndarray:
    """Bin index of each value of ascending ``sorted_logc``: split at the widest gap until every
    bin spans <= ``tol`` (iterative: a 10,000-row table of distinct C must not recurse 10,000 deep)."""
    cuts = []
    stack = [(0, len(sorted_logc))]
    while stack:
        lo, hi = stack.pop()
        if hi - lo < 2 or sorted_logc[hi - 1] - sorted_logc[lo] <= tol:
            continue
        k = lo + 1 + int(np.argmax(np.diff(sorted_logc[lo:hi])))
        cuts.append(k)
        stack += [(lo, k), (k, hi)]
    starts = np.zeros(len(sorted_logc), dtype=int)
    starts[cuts] = 1
    return np.cumsum(starts)


def fit_parabolas(u: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted least-squares parabolas y ≈ c0 + c1·u + c2·u², one per row of ``w``.

    ``u``, ``y``: (m,); ``w``: (B, m) weights (bootstrap counts). Returns (B, 3); rows whose
    normal equations are singular (< 3 distinct sizes drawn) are NaN. Vectorised over draws.
    """
    powers = u[None, :] ** np.arange(5)[:, None]  # (5, m): u^0..u^4
    s = w @ powers.T  # (B, 5) weighted moments Σ w u^k
    t = w @ (powers[:3] * y).T  # (B, 3) Σ w y u^k
    gram = s[:, [[0, 1, 2], [1, 2, 3], [2, 3, 4]]]  # (B, 3, 3)
    _, inv = np.unique(u, return_inverse=True)
    onehot = np.eye(inv.max() + 1)[inv]  # (m, sizes)
    ok = (((w > 0) @ onehot) > 0).sum(axis=1) >= 3  # a parabola needs 3 distinct sizes drawn
    out = np.full((w.shape[0], 3), np.nan)
    if ok.any():
        out[ok] = np.linalg.solve(gram[ok], t[ok][..., None])[..., 0]
    return out


def parabola_minimum(coef: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Vertex u* = −c1/(2·c2) of each row of ``coef`` (B, 3); NaN unless convex and in [lo, hi]."""
    c1, c2 = coef[:, 1], coef[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        v = -c1 / (2 * c2)
    return np.where((c2 > 0) & (v >= lo) & (v <= hi), v, np.nan)


def parabola_window(best: int, m: int) -> slice:
    """The sizes (indices into m ascending sizes) a curve's parabola is fitted to: the best one and
    up to PARABOLA_HALF_WINDOW on each side, at least MIN_SIZES_PER_CURVE where there are."""
    k = PARABOLA_HALF_WINDOW
    lo, hi = max(0, best - k), min(m, best + k + 1)
    while hi - lo < min(m, MIN_SIZES_PER_CURVE):
        lo, hi = (lo - 1, hi) if lo > 0 else (lo, hi + 1)
    return slice(lo, hi)


def _sizes_to_add(lnN: np.ndarray, side: str) -> str:
    step = float(np.mean(np.diff(lnN))) if len(lnN) > 1 else np.log(2)
    step = max(step, np.log(1.5))
    edge = lnN[0] if side == "small" else lnN[-1]
    sign = -1 if side == "small" else 1
    return ", ".join(f"{np.exp(edge + sign * k * step):.3g}" for k in (1, 2))


def isoflop_curves(final: pd.DataFrame, group: str) -> list[IsoFlopCurve]:
    """One :class:`IsoFlopCurve` per budget of ``group``, sanity-checked.

    A curve whose best run is its smallest (largest) size has no interior minimum: the optimum lies
    beyond the grid, so it is flagged with that side and two sizes one and two grid steps further.
    """
    g = final[final["group"] == group].assign(_budget=lambda t: assign_budgets(t).to_numpy())
    curves = []
    for budget, runs in g.groupby("_budget", sort=True):
        runs = runs.sort_values("N")
        # Several runs of one size at one budget (seeds, duplicates): average their loss.
        per = runs.groupby("N", sort=True).agg(loss=("loss", "mean"), D=("D", "mean"),
                                               C=("C", "mean"))
        N, loss = per.index.to_numpy(float), per["loss"].to_numpy(float)
        D, C = per["D"].to_numpy(float), per["C"].to_numpy(float)
        lnN = np.log(N)
        center = float(lnN.mean())
        coef, n_opt, d_opt, c_opt, flag, window = None, np.nan, np.nan, np.nan, None, (N[0], N[-1])
        where = f"{group} at C={budget:.3g}"
        if len(N) < MIN_SIZES_PER_CURVE:
            flag = (f"{where}: {len(N)} size(s), an isoFLOP parabola needs >= "
                    f"{MIN_SIZES_PER_CURVE}; add sizes around N={N[np.argmin(loss)]:.3g}")
        else:
            best = int(np.argmin(loss))
            near = parabola_window(best, len(N))
            window = (float(N[near][0]), float(N[near][-1]))
            c = fit_parabolas(lnN[near] - center, loss[near], np.ones((1, len(N[near]))))[0]
            coef = tuple(float(x) for x in c)
            u = parabola_minimum(c[None], lnN[near][0] - center, lnN[near][-1] - center)[0]
            if best in (0, len(N) - 1):
                side = "small" if best == 0 else "large"
                flag = (f"{where}: no interior minimum, best run is the {_EXTREME[side]} size "
                        f"(N={N[best]:.3g}); runs missing on the {side} side, add N ≈ "
                        f"{_sizes_to_add(lnN, side)}")
            elif not np.isfinite(u):
                flag = f"{where}: the parabola in ln N has no minimum inside the sampled sizes"
            else:
                n_opt = float(np.exp(u + center))
                c_opt = float(np.exp(np.interp(u + center, lnN, np.log(C))))
                ratio = np.exp(np.interp(u + center, lnN, np.log(C / (N * D))))
                d_opt = float(c_opt / (ratio * n_opt))
        curves.append(IsoFlopCurve(group=group, budget=float(budget), N=N, D=D, loss=loss,
                                   coef=coef, center=center, n_opt=n_opt, d_opt=d_opt, flag=flag,
                                   window=window, c_opt=c_opt, c_level=float(np.median(C))))
    return curves
