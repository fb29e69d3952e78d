"""Optimal batch size and learning rate: the loss surface over (log B, log eta) per (N, D), its
optimum, and the laws B*(D) = k D^b and eta*(B) = k' B^c (2512.10858, section "practical guidance
on batch size and learning rate"). Pure: a ``schema.FINAL_COLUMNS`` group in, an :class:`HpFit` out.

The reference is dvruette/gidd-easydel notebooks/critical_batch_size2.ipynb:
- per (N, noise, B, tokens) a quadratic of log loss in log lr (``np.polyfit(log lr, log loss, 2)``);
  the optimum kept only where the quadratic is convex and its minimum lies inside the LRs tried;
- B* per (N, D) from a quadratic in log B, the same two conditions; fits in natural logs.
Here B* and eta* of one (N, D) are the minimum of one quadratic surface
``log L = q0 + q1 x + q2 y + q3 x^2 + q4 y^2 + q5 x y`` (x = ln B in tokens, y = ln eta), kept on
the same two conditions (positive definite, inside the grid's box). eta*(B): the notebook fits a
quadratic in ln eta at every B; here it is the same surface's minimum over ln eta at every B
tried (a laptop grid has 3 LRs, where a 1-D quadratic interpolates and leaves no residual to
bootstrap), kept where convex and inside the LRs tried; then ln eta* = a_(N,D) + c ln B with one
intercept per (N, D) (the exponent at fixed N and D). B*(D): ln B* = ln k + b ln D over the
(N, D) whose optimum is kept.

Intervals: a wild bootstrap (Rademacher signs on the surface residuals, one sign per trunk, since a
trajectory trunk's read-offs share their noise), every surface and both laws refitted per draw;
2.5/97.5 percentiles. A draw whose surface has no interior optimum gives no B* for that (N, D).
"""
from __future__ import annotations

import dataclasses
import zlib

import numpy as np
import pandas as pd

from analysis.bootstrap import Estimate, TooFewPoints

MIN_VALUES = 3
"""Distinct batch sizes and LRs a surface needs (a quadratic in each)."""
D_DIGITS = 3
"""D is rounded to this many significant digits to group the points of one (N, D)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class Optimum:
    """The fitted optimum of one (N, D)'s surface."""
    N: float
    D: float
    n_points: int
    batch: Estimate
    """B* in tokens per step."""
    lr: Estimate
    loss: float
    """The surface's minimum loss."""
    kept: bool
    """Convex with its minimum inside the grid (the notebook's conditions)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class PowerLaw:
    """y = coefficient * x^exponent with bootstrap intervals."""
    exponent: Estimate
    coefficient: Estimate
    n: int
    """Points it was fitted to ((N, D) optima, or (N, D, B) LR optima)."""

    def as_dict(self) -> dict:
        return {"exponent": _est(self.exponent), "coefficient": _est(self.coefficient), "n": self.n}


@dataclasses.dataclass(frozen=True, kw_only=True)
class HpFit:
    group: str
    optima: tuple[Optimum, ...]
    batch_law: PowerLaw | None
    """B*(D) in tokens; None with a message when fewer than 2 optima were kept."""
    lr_law: PowerLaw | None
    """eta*(B), B in tokens."""
    messages: tuple[str, ...]
    n_boot: int

    def as_dict(self) -> dict:
        return {"batch_law": self.batch_law.as_dict() if self.batch_law else None,
                "lr_law": self.lr_law.as_dict() if self.lr_law else None,
                "optima": [{"N": o.N, "D": o.D, "n_points": o.n_points, "kept": o.kept,
                            "loss": o.loss, "batch_tokens": _est(o.batch), "lr": _est(o.lr)}
                           for o in self.optima],
                "messages": list(self.messages)}


def _est(e: Estimate) -> dict:
    return {"value": e.value, "lo": e.lo, "hi": e.hi}


def has_hp_grid(g: pd.DataFrame) -> bool:
    """Whether a group's points vary batch and LR enough for this analysis."""
    if "batch_tokens" not in g or "lr" not in g:
        return False
    ok = g.dropna(subset=["batch_tokens", "lr"])
    return ok["batch_tokens"].nunique() >= MIN_VALUES and ok["lr"].nunique() >= MIN_VALUES


# --- one surface --------------------------------------------------------------------------------
def _design(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.column_stack([np.ones_like(x), x, y, x * x, y * y, x * y])


def surface_optimum(q: np.ndarray, box: tuple[tuple[float, float], tuple[float, float]]
                    ) -> tuple[float, float, float, bool]:
    """(x*, y*, log L*, kept) of ``log L = q . (1, x, y, x^2, y^2, xy)``; kept when the Hessian is
    positive definite and (x*, y*) lies in ``box`` = ((x_lo, x_hi), (y_lo, y_hi))."""
    h = np.array([[2 * q[3], q[5]], [q[5], 2 * q[4]]])
    if not (h[0, 0] > 0 and np.linalg.det(h) > 0):
        return np.nan, np.nan, np.nan, False
    x, y = np.linalg.solve(h, -q[1:3])
    (xl, xh), (yl, yh) = box
    val = float((_design(np.array([x]), np.array([y])) @ q)[0])
    return float(x), float(y), val, bool(xl <= x <= xh and yl <= y <= yh)


def _lr_optima(q: np.ndarray, x: np.ndarray, y: np.ndarray) -> list[tuple[float, float]]:
    """(x, y*) per batch size tried: the surface's minimum over ln eta at that ln B,
    y* = -(q2 + q5 x) / (2 q4), kept when convex in y with the minimum inside the LRs tried."""
    if q[4] <= 0:
        return []
    out = []
    for xb in np.unique(x):
        ys = -(q[2] + q[5] * xb) / (2 * q[4])
        if y.min() <= ys <= y.max():
            out.append((float(xb), float(ys)))
    return out


@dataclasses.dataclass
class _Config:
    N: float
    D: float
    x: np.ndarray
    y: np.ndarray
    z: np.ndarray
    units: np.ndarray
    """Index of each point's trunk in the group's trunk list."""

    @property
    def box(self):
        return (self.x.min(), self.x.max()), (self.y.min(), self.y.max())


def _configs(g: pd.DataFrame) -> tuple[list[_Config], int, list[str]]:
    g = g.dropna(subset=["batch_tokens", "lr"])
    trunks = {t: i for i, t in enumerate(sorted(g["trunk"].astype(str).unique()))}
    # One (N, D) = one size at one budget: its batches reach the budget within 1%, so D differs
    # a little by batch (the median is its D). Without budgets (a table): D to D_DIGITS digits.
    key = (g["budget"] if "budget" in g and g["budget"].notna().all()
           else g["D"].map(lambda d: float(f"{d:.{D_DIGITS}g}")))
    out, notes = [], []
    for (n, _), c in g.groupby([g["N"], key], sort=True):
        d = float(c["D"].median())
        if c["batch_tokens"].nunique() < MIN_VALUES or c["lr"].nunique() < MIN_VALUES:
            notes.append(f"(N={n:.3g}, D={d:.3g}): {c['batch_tokens'].nunique()} batch sizes x "
                         f"{c['lr'].nunique()} LRs; a surface needs >= {MIN_VALUES} of each")
            continue
        out.append(_Config(N=float(n), D=float(d), x=np.log(c["batch_tokens"].to_numpy(float)),
                           y=np.log(c["lr"].to_numpy(float)), z=np.log(c["loss"].to_numpy(float)),
                           units=c["trunk"].astype(str).map(trunks).to_numpy()))
    return out, len(trunks), notes


def _fit_all(configs: list[_Config], zs: list[np.ndarray]):
    """Per config: (q, optimum tuple, lr optima) for log-losses ``zs``."""
    res = []
    for c, z in zip(configs, zs):
        q = np.linalg.lstsq(_design(c.x, c.y), z, rcond=None)[0]
        res.append((q, surface_optimum(q, c.box), _lr_optima(q, c.x, c.y)))
    return res


def _laws(configs: list[_Config], res) -> tuple[np.ndarray, np.ndarray]:
    """(ln k, b) of B*(D) and (mean intercept, c) of eta*(B); NaN where too few optima."""
    kept = [(np.log(c.D), r[1][0]) for c, r in zip(configs, res) if r[1][3]]
    batch = np.full(2, np.nan)
    if len({k[0] for k in kept}) >= 2:
        ld, lb = np.array(kept).T
        b, a = np.polyfit(ld, lb, 1)
        batch = np.array([a, b])
    # eta*(B): one intercept per (N, D), one common slope (within-config regression)
    xs, ys, a_s = [], [], []
    for r in res:
        pts = r[2]
        if len(pts) >= 2:
            x, y = np.array(pts).T
            xs.append(x - x.mean())
            ys.append(y - y.mean())
            a_s.append((x.mean(), y.mean()))
    lr = np.full(2, np.nan)
    if xs:
        xc, yc = np.concatenate(xs), np.concatenate(ys)
        if (xc ** 2).sum() > 0:
            c = float((xc * yc).sum() / (xc ** 2).sum())
            mx, my = np.array(a_s).T
            lr = np.array([float(np.mean(my - c * mx)), c])
    return batch, lr


def _interval(point: float, draws: np.ndarray, level: float = 0.95) -> Estimate:
    draws = draws[np.isfinite(draws)]
    if not np.isfinite(point):
        return Estimate(np.nan)
    if len(draws) < 10:
        return Estimate(point)
    lo, hi = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2])
    return Estimate(point, float(lo), float(hi))


def fit_hp(g: pd.DataFrame, group: str, *, n_boot: int = 1000, seed: int = 0) -> HpFit:
    """The surfaces, optima and both laws of one group's points (columns N, D, batch_tokens, lr,
    loss, trunk). Raises :class:`TooFewPoints` naming the group when no (N, D) has a surface."""
    configs, n_units, notes = _configs(g)
    if not configs:
        raise TooFewPoints(f"{group}: no (N, D) with >= {MIN_VALUES} batch sizes x "
                           f"{MIN_VALUES} LRs; no batch/LR law")
    res = _fit_all(configs, [c.z for c in configs])
    batch, lr = _laws(configs, res)
    resid = [c.z - _design(c.x, c.y) @ r[0] for c, r in zip(configs, res)]
    rng = np.random.default_rng([seed, zlib.crc32(group.encode())])
    opt_draws = np.full((n_boot, len(configs), 2), np.nan)
    law_draws = np.full((n_boot, 4), np.nan)
    for i in range(n_boot):
        signs = rng.choice([-1.0, 1.0], size=n_units)
        zs = [c.z - e + signs[c.units] * e for c, e in zip(configs, resid)]
        r = _fit_all(configs, zs)
        for j, rj in enumerate(r):
            if rj[1][3]:
                opt_draws[i, j] = rj[1][:2]
        law_draws[i] = np.concatenate(_laws(configs, r))
    optima = tuple(
        Optimum(N=c.N, D=c.D, n_points=len(c.z), kept=r[1][3], loss=float(np.exp(r[1][2])),
                batch=_exp(_interval(r[1][0], opt_draws[:, j, 0])),
                lr=_exp(_interval(r[1][1], opt_draws[:, j, 1])))
        for j, (c, r) in enumerate(zip(configs, res)))
    messages = list(notes)
    for o in optima:
        if not o.kept:
            messages.append(f"{group} (N={o.N:.3g}, D={o.D:.3g}): the batch x LR surface has no "
                            "minimum inside the grid (not convex, or the optimum is off the "
                            "grid's edge); left out of B*(D)")
    laws = {}
    for name, pt, cols, what in (("batch_law", batch, (0, 1), "B*(D)"),
                                 ("lr_law", lr, (2, 3), "eta*(B)")):
        if not np.isfinite(pt).all():
            messages.append(f"{group}: {what} needs optima at >= 2 values; none fitted")
            laws[name] = None
            continue
        laws[name] = PowerLaw(exponent=_interval(pt[1], law_draws[:, cols[1]]),
                              coefficient=_exp(_interval(pt[0], law_draws[:, cols[0]])),
                              n=sum(o.kept for o in optima) if name == "batch_law"
                              else sum(len(r[2]) for r in res))
    return HpFit(group=group, optima=optima, messages=tuple(messages), n_boot=n_boot, **laws)


def _exp(e: Estimate) -> Estimate:
    return Estimate(float(np.exp(e.value)), float(np.exp(e.lo)), float(np.exp(e.hi)), e.flag)
