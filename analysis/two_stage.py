"""Downstream accuracy against compute: the two-stage "ladder" fit. Pure: arrays and frames in,
typed results out (no MLflow; the loader is analysis/downstream.py).

Bhagia et al. 2024, *Establishing Task Scaling Laws via Compute-Efficient Model Ladders*
(arXiv 2412.04403, eq. 2; used for OLMo 2, and by Marin) predict a task's accuracy in two steps: a
loss from compute, then accuracy from the loss through a sigmoid. Here the loss is the run's
validation NELBO (nats/token), the quantity the study's laws are fitted to:

    stage 1 (per group and task):  acc(L) = chance + (top − chance) · sigmoid(−k · (L − L0))
                                   top in (chance, 1], k > 0 (lower loss -> higher accuracy)
    stage 2 (per group):           L(C) = A · C^−β + B, the study's own compute law
                                   (analysis/laws.py ``fit_law("compute", final, group)``)
    together:                      acc(C) = acc(L(C))

Stage 1 is weighted least squares on (val NELBO, accuracy) points with binomial weights
n / (p (1 − p)), p the observed accuracy clipped to [P_CLIP, 1 − P_CLIP] (a point at 0 % or 100 %
would otherwise weigh infinitely). Its intervals are a bootstrap over points (resampled with
replacement, refitted warm); the prediction intervals pair the b-th stage-1 draw with the b-th
draw of the compute law's own bootstrap.

No fake fit: a sigmoid through points that all sit at chance can be drawn anywhere. A group and
task gets no fit, and says why (:attr:`SigmoidFit.reason`), when it has fewer than MIN_POINTS
points, when every point's Wilson interval contains chance, or when fewer than MIN_ABOVE points
are above chance (Wilson lower bound > max(chance, CHANCE_FLOOR)): a sigmoid has 3 parameters.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from analysis.bootstrap import NOT_IDENTIFIED, PILEUP_SHARE, Estimate, LawFit, rng_for
from analysis.laws import fit_law

Z95 = 1.959964               # two-sided 95 % normal quantile
MIN_POINTS = 5
MIN_ABOVE = 3                # the sigmoid has 3 free parameters (top, k, L0): fewer points
                             # off the chance floor pin k to a step (k ~ 140 on 2 of 10 points)
CHANCE_FLOOR = 0.01          # "above chance" needs a Wilson lower bound above max(chance, this):
                             # generation tasks have chance 0, where one lucky hit in 200
                             # (a frequent word, a small number) would otherwise count
P_CLIP = 0.01                # binomial weights use p clipped to [P_CLIP, 1 − P_CLIP]
PARAMS = ("top", "k", "L0")
EXTRAPOLATE = 10.0           # predict at the largest evaluated C and at this multiple of it
LEVEL = 0.95
_K_RANGE = (1e-2, 1e3)       # k bounds, in units of 1 / (spread of the losses)
_TOP_EPS = 1e-6              # top >= chance + this
_AT_BOUND_RTOL = 1e-4


def wilson(k, n, z: float = Z95):
    """Wilson score interval of a binomial proportion k/n: (lo, hi), vectorised over arrays.

    (p̂ + z²/2n ± z·sqrt(p̂(1−p̂)/n + z²/4n²)) / (1 + z²/n) (Wilson 1927); unlike p̂ ± z·se it
    stays inside [0, 1] and is not empty at k = 0 or k = n. n = 0 gives (nan, nan).
    """
    k, n = np.asarray(k, float), np.asarray(n, float)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = k / n
        denom = 1 + z * z / n
        centre = (p + z * z / (2 * n)) / denom
        half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
        lo, hi = np.clip(centre - half, 0.0, 1.0), np.clip(centre + half, 0.0, 1.0)
    bad = ~(n > 0)
    lo, hi = np.where(bad, np.nan, lo), np.where(bad, np.nan, hi)
    return (float(lo), float(hi)) if lo.ndim == 0 else (lo, hi)


def sigmoid_accuracy(params: np.ndarray, loss, chance: float) -> np.ndarray:
    """acc(L) for parameters (..., 3) = (top, k, L0) at losses broadcasting to S: (..., *S)."""
    params = np.asarray(params, float)
    loss = np.asarray(loss, float)
    expand = (...,) + (None,) * loss.ndim
    top, k, l0 = (params[..., i][expand] for i in range(3))
    z = np.clip(k * (loss - l0), -500, 500)           # sigmoid(−z) without overflow
    return chance + (top - chance) / (1.0 + np.exp(z))


@dataclasses.dataclass(frozen=True, kw_only=True)
class SigmoidFit:
    """Stage 1 of one group and task: accuracy from validation loss."""

    group: str
    task: str
    chance: float
    """The task's chance accuracy (n-weighted mean over the points)."""
    n_points: int
    n_above: int
    """Points whose Wilson lower bound is above chance."""
    ok: bool
    reason: str = ""
    """Why there is no fit (``ok`` False); empty otherwise."""
    params: dict[str, Estimate] = dataclasses.field(default_factory=dict)
    """top, k (1/nats), L0 (nats/token) with bootstrap intervals; empty without a fit."""
    point: np.ndarray | None = dataclasses.field(default=None, compare=False, repr=False)
    """(3,) = (top, k, L0)."""
    samples: np.ndarray | None = dataclasses.field(default=None, compare=False, repr=False)
    """(n_boot, 3) bootstrap refits; NaN rows for draws that could not refit."""

    def predict(self, loss) -> np.ndarray:
        return sigmoid_accuracy(self.point, loss, self.chance)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TwoStageFit:
    """Stage 1, the compute law and acc(C) for one group and task."""

    stage1: SigmoidFit
    law: LawFit | None
    """The group's L(C) (laws.LAWS['compute']); None when not fitted (``law_reason`` says why)."""
    law_reason: str = ""
    c_max: float = np.nan
    """Largest training compute among the evaluated points (FLOPs)."""
    predictions: dict[str, Estimate] = dataclasses.field(default_factory=dict)
    """'acc@Cmax' and 'acc@10x': acc(L(C)) at c_max and EXTRAPOLATE × c_max."""

    @property
    def group(self) -> str:
        return self.stage1.group

    @property
    def task(self) -> str:
        return self.stage1.task

    @property
    def ok(self) -> bool:
        return self.stage1.ok and self.law is not None

    @property
    def reason(self) -> str:
        return self.stage1.reason or self.law_reason

    def predict(self, C) -> np.ndarray:
        """acc(L(C)) at compute ``C`` (FLOPs)."""
        return self.stage1.predict(self.law.predict(C=np.asarray(C, float)))

    def band(self, C, level: float = LEVEL) -> tuple[np.ndarray, np.ndarray]:
        """Pointwise bootstrap interval of acc(C): stage-1 draw b with compute-law draw b."""
        curves = _paired_curves(self.stage1, self.law, np.asarray(C, float))
        if curves is None:
            nan = np.full(np.shape(C), np.nan)
            return nan, nan
        q = 50 * (1 - level)
        return np.percentile(curves, q, axis=0), np.percentile(curves, 100 - q, axis=0)


# --------------------------------------------------------------------------------------------------
# Stage 1
# --------------------------------------------------------------------------------------------------
def _wls(loss, acc, w, chance, start, bounds):
    from scipy.optimize import least_squares

    sw = np.sqrt(w)

    def resid(theta):
        return sw * (sigmoid_accuracy(theta, loss, chance) - acc)

    def jac(theta):
        top, k, l0 = theta
        s = 1.0 / (1.0 + np.exp(np.clip(k * (loss - l0), -500, 500)))
        ds = -(top - chance) * s * (1 - s)                # d acc / d z, z = k (L − L0)
        return sw[:, None] * np.stack([s, ds * (loss - l0), -ds * k], axis=1)

    res = least_squares(resid, np.clip(start, bounds[0], bounds[1]), jac=jac, bounds=bounds,
                        method="trf", x_scale="jac")
    return res.x, float(res.cost)


def _bounds(loss: np.ndarray, chance: float) -> tuple[np.ndarray, np.ndarray]:
    spread = max(float(np.ptp(loss)), 1e-3)
    lo = np.array([chance + _TOP_EPS, _K_RANGE[0] / spread, -np.inf])
    hi = np.array([1.0, _K_RANGE[1] / spread, np.inf])
    return lo, hi


def _starts(loss: np.ndarray, acc: np.ndarray, chance: float):
    spread = max(float(np.ptp(loss)), 1e-3)
    top = min(1.0, max(float(acc.max()) + 0.02, chance + 0.01))
    for l0 in np.linspace(loss.min() - 0.25 * spread, loss.max() + 0.25 * spread, 5):
        for k in (2.0, 6.0, 20.0):
            yield np.array([top, k / spread, l0])


def _at_bound(theta: np.ndarray, bounds) -> np.ndarray:
    """(..., 3) bool: the parameter sits at a finite bound of the fit."""
    def near(b: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore"):
            return np.isfinite(b) & (np.abs(theta - b) <= _AT_BOUND_RTOL * np.abs(b))

    return near(bounds[0]) | near(bounds[1])


def _flags(point: np.ndarray, samples: np.ndarray, bounds) -> dict[str, str]:
    ok = np.isfinite(samples).all(axis=1)
    piled = _at_bound(samples[ok], bounds).mean(axis=0) if ok.any() else np.zeros(3)
    flags = {}
    for i, name in enumerate(PARAMS):
        if _at_bound(point, bounds)[i]:
            flags[name] = f"{NOT_IDENTIFIED}: the estimate is at a bound of the fit"
        elif piled[i] >= PILEUP_SHARE:
            flags[name] = f"{NOT_IDENTIFIED}: {piled[i]:.0%} of bootstrap draws are at a bound"
    return flags


def _estimates(point: np.ndarray, samples: np.ndarray, flags: dict[str, str]
               ) -> dict[str, Estimate]:
    ok = samples[np.isfinite(samples).all(axis=1)]
    q = [50 * (1 - LEVEL), 100 - 50 * (1 - LEVEL)]
    lo, hi = np.percentile(ok, q, axis=0) if len(ok) else np.full((2, samples.shape[1]), np.nan)
    return {n: Estimate(float(point[i]), float(lo[i]), float(hi[i]), flags.get(n))
            for i, n in enumerate(PARAMS)}


def beats_chance(lo, chance) -> np.ndarray:
    """Whether Wilson lower bounds `lo` clear the chance level (at least CHANCE_FLOOR)."""
    return np.asarray(lo, float) > np.maximum(np.asarray(chance, float), CHANCE_FLOOR)


def fit_accuracy(loss, k, n, chance, *, group: str = "", task: str = "", n_boot: int = 200,
                 seed: int = 0) -> SigmoidFit:
    """Stage 1 on one group's points of one task: ``loss`` (val NELBO), ``k`` correct of ``n``
    items, ``chance`` (scalar or per point). Points with a non-finite loss or n <= 0 are left out.
    Returns ``ok=False`` with a reason when the points cannot identify a sigmoid (module doc)."""
    loss, k, n = (np.asarray(a, float).ravel() for a in (loss, k, n))
    chance_pt = np.broadcast_to(np.asarray(chance, float), loss.shape)
    use = np.isfinite(loss) & np.isfinite(k) & (n > 0) & np.isfinite(chance_pt)
    loss, k, n, chance_pt = loss[use], k[use], n[use], chance_pt[use]
    c = float(np.average(chance_pt, weights=n)) if len(n) else float("nan")
    lo, hi = wilson(k, n)
    above = int(beats_chance(lo, chance_pt).sum())
    at_chance = int((~beats_chance(lo, chance_pt) & (chance_pt <= hi)).sum())
    base = dict(group=group, task=task, chance=c, n_points=len(loss), n_above=above)
    if len(loss) < MIN_POINTS:
        return SigmoidFit(**base, ok=False,
                          reason=f"{len(loss)} point(s), a sigmoid needs >= {MIN_POINTS}: no fit")
    if at_chance == len(loss):
        return SigmoidFit(**base, ok=False, reason=f"all {len(loss)} points at chance: no fit")
    if above < MIN_ABOVE:
        return SigmoidFit(**base, ok=False,
                          reason=f"{above} of {len(loss)} points above chance (needs >= "
                                 f"{MIN_ABOVE}): no fit")
    acc = k / n
    p = np.clip(acc, P_CLIP, 1 - P_CLIP)
    w = n / (p * (1 - p))                               # 1 / binomial variance of acc
    bounds = _bounds(loss, c)
    point = min((_wls(loss, acc, w, c, s, bounds) for s in _starts(loss, acc, c)),
                key=lambda r: r[1])[0]
    samples = np.full((n_boot, 3), np.nan)
    rng = rng_for(seed, f"{group}/{task}")
    for b in range(n_boot):
        idx = rng.integers(0, len(loss), len(loss))
        if len(np.unique(loss[idx])) < 3:               # three parameters need three losses
            continue
        samples[b] = _wls(loss[idx], acc[idx], w[idx], c, point, bounds)[0]
    params = _estimates(point, samples, _flags(point, samples, bounds))
    return SigmoidFit(**base, ok=True, params=params, point=point, samples=samples)


# --------------------------------------------------------------------------------------------------
# Stage 2 and the composition
# --------------------------------------------------------------------------------------------------
def _paired_curves(s1: SigmoidFit, law: LawFit, C: np.ndarray) -> np.ndarray | None:
    """(B, *C.shape) acc(L(C)) for the paired bootstrap draws that both refitted; None if none."""
    m = min(len(s1.samples), len(law.samples))
    a, b = s1.samples[:m], law.samples[:m]
    ok = np.isfinite(a).all(axis=1) & np.isfinite(b).all(axis=1)
    if not ok.any():
        return None
    losses = law.form.predict(b[ok], {"C": C})          # (B', *S)
    return np.stack([sigmoid_accuracy(a[ok][i], losses[i], s1.chance) for i in range(ok.sum())])


def _prediction(s1: SigmoidFit, law: LawFit, c: float) -> Estimate:
    value = float(s1.predict(law.predict(C=np.array(c))))
    curves = _paired_curves(s1, law, np.array(c))
    if curves is None:
        return Estimate(value)
    q = [50 * (1 - LEVEL), 100 - 50 * (1 - LEVEL)]
    lo, hi = np.percentile(curves, q)
    flags = [e.flag for e in s1.params.values() if e.flag] + list(law.flags.values())
    return Estimate(value, float(lo), float(hi),
                    f"derived from a parameter {flags[0]}" if flags else None)


def _law(final: pd.DataFrame, group: str, n_boot: int, seed: int) -> tuple[LawFit | None, str]:
    if group not in set(final["group"]):
        return None, f"{group}: no finished trial points for its compute law L(C)"
    try:
        return fit_law("compute", final, group, n_boot=n_boot, seed=seed), ""
    except ValueError as e:                              # TooFewPoints is an AnalysisError
        return None, f"compute law: {e}"


def fit_two_stage(evals: pd.DataFrame, final: pd.DataFrame, *, n_boot: int = 200, seed: int = 0
                  ) -> list[TwoStageFit]:
    """Every (group, task) of a downstream frame (analysis.downstream.EVAL_COLUMNS), with the
    group's compute law fitted on ``final`` (schema.FINAL_COLUMNS: the study's trial points, C
    counted under the same FLOP convention as ``evals['compute']``)."""
    fits, laws = [], {}
    for (group, task), g in evals.groupby(["group", "task"], sort=False):
        s1 = fit_accuracy(g["val_nelbo"], g["k"], g["n"], g["chance"], group=group, task=task,
                          n_boot=n_boot, seed=seed)
        c_max = float(g["compute"].max())
        if not s1.ok:
            fits.append(TwoStageFit(stage1=s1, law=None, c_max=c_max))
            continue
        if group not in laws:
            laws[group] = _law(final, group, n_boot, seed)
        law, why = laws[group]
        preds = ({} if law is None or not np.isfinite(c_max) else
                 {"acc@Cmax": _prediction(s1, law, c_max),
                  f"acc@{EXTRAPOLATE:g}x": _prediction(s1, law, EXTRAPOLATE * c_max)})
        fits.append(TwoStageFit(stage1=s1, law=law, law_reason=why, c_max=c_max,
                                predictions=preds))
    order = {t: i for i, t in enumerate(dict.fromkeys(evals["task"]))}
    return sorted(fits, key=lambda f: (order[f.task], f.group))
