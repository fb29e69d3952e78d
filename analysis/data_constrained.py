"""The data-constrained scaling law: loss when U unique tokens are repeated for D > U tokens.

Muennighoff et al. 2023, "Scaling Data-Constrained Language Models" (arXiv 2305.16264), §3 and
App. A: repeated tokens are worth less than fresh ones, with a decay over repetitions set by R*,

    D' = U + U·R*·(1 − exp(−R/R*)),   R = max(D/U − 1, 0)   (epochs beyond the first),
    L(N, D, U) = E + A/N^α + B/D'^β                          (Chinchilla form, D' for D).

D' = D for one epoch, grows with slope 1 at R = 0 and saturates at U·(1 + R*): R* is how many
repetitions are still "worth" fresh data. Muennighoff et al. fit R* ≈ 15 for autoregressive LMs;
Prabhudesai et al. 2025 ("Diffusion Beats Autoregressive in Data-Constrained Settings") report R*
in the hundreds for masked diffusion. (The paper's N' for excess parameters is not modelled.)

Fitting follows the Chinchilla recipe (Hoffmann et al. 2022 §D.2; analysis/huber.py): Huber loss
(δ = 1e-3) on log L̂ − log L, L-BFGS-B from the best points of a small grid. Uncertainty is a
bootstrap over trunks (rows of a trunk are one run read at several epochs, so they are resampled
together), each draw refitted warm from the point estimate; intervals are 2.5/97.5 percentiles.

Pure: a table in (columns group, N, D, U, loss, trunk), a frozen dataclass out.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Mapping

import numpy as np
import pandas as pd
from scipy.optimize import minimize, nnls

from analysis.huber import single_threaded_blas

HUBER_DELTA = 1e-3
EXPONENT_BOUNDS = (0.01, 3.0)
LOG_RSTAR_BOUNDS = (np.log(0.1), np.log(1e4))
AT_BOUND_LOG = 0.01
"""R* is at a bound when |ln R* − ln bound| < 0.01, i.e. within 1% of 0.1 or 1e4."""
PILEUP_SHARE = 0.2
"""Share of bootstrap draws at an R* bound beyond which R* is not identified (as in
analysis/bootstrap.py: a 20% pile-up already decides one end of a 95% interval)."""
MIN_POINTS = 8
PARAMS = ("E", "A", "B", "alpha", "beta", "R_star")
COLUMNS = ("group", "N", "D", "U", "loss", "trunk")
_N_STARTS = 4
_MAIN_OPTS = {"ftol": 1e-13, "gtol": 1e-9, "maxiter": 3000}
_BOOT_OPTS = {"ftol": 1e-11, "gtol": 1e-7, "maxiter": 500}


@dataclasses.dataclass(frozen=True)
class Interval:
    """Point estimate and 95% bootstrap interval (NaN bounds without a bootstrap)."""

    value: float
    lo: float = np.nan
    hi: float = np.nan

    def as_dict(self) -> dict[str, float | None]:
        return {k: _json_float(getattr(self, k)) for k in ("value", "lo", "hi")}


@dataclasses.dataclass(frozen=True)
class DataConstrainedFit:
    """One group's fit of L(N, D, U); params keyed by PARAMS, in natural units."""

    group: str
    n_points: int
    params: dict[str, Interval]
    r_star_at_bound: bool
    """True when R* (point or > PILEUP_SHARE of draws) sits at a bound: R* is not identified."""

    @property
    def identified(self) -> bool:
        return not self.r_star_at_bound

    def as_dict(self) -> dict:
        out: dict = {name: self.params[name].as_dict() for name in PARAMS}
        out["n_points"] = int(self.n_points)
        out["identified"] = bool(self.identified)
        return out


def _json_float(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def effective_data(D, U, r_star) -> np.ndarray:
    """D' = U + U·R*·(1 − exp(−R/R*)) with R = max(D/U − 1, 0) (Muennighoff et al. 2023, eq. 5).

    Equals D for D ≤ U; tends to U·(1 + R*) as D/U → ∞. Broadcasts over its arguments.
    """
    D, U, r_star = (np.asarray(x, dtype=float) for x in (D, U, r_star))
    R = np.maximum(D / U - 1.0, 0.0)
    repeated = U * r_star * -np.expm1(-R / r_star)
    return np.where(D <= U, D, U + repeated)


def predict(fit_or_params: DataConstrainedFit | Mapping[str, float], N, D, U) -> np.ndarray:
    """L = E + A/N^α + B/D'^β from a fit (point estimates) or a mapping with PARAMS' keys."""
    p = fit_or_params
    if isinstance(p, DataConstrainedFit):
        p = {k: v.value for k, v in p.params.items()}
    N = np.asarray(N, dtype=float)
    d_eff = effective_data(D, U, p["R_star"])
    return p["E"] + p["A"] / N ** p["alpha"] + p["B"] / d_eff ** p["beta"]


def frontier(table: pd.DataFrame) -> pd.DataFrame:
    """The token-bound frontier: per (group, U, D to 3 significant digits) the best loss over N.

    Columns group, U, D, epochs (= D/U), N_best, loss; one row per frontier point.
    """
    t = table.assign(D=[float(f"{d:.3g}") for d in table["D"]])
    best = t.loc[t.groupby(["group", "U", "D"])["loss"].idxmin()]
    out = pd.DataFrame({"group": best["group"], "U": best["U"], "D": best["D"],
                        "epochs": best["D"] / best["U"], "N_best": best["N"],
                        "loss": best["loss"]})
    return out.sort_values(["group", "U", "D"]).reset_index(drop=True)


# --- fitting -------------------------------------------------------------------------------------
# Fit-space vector θ = (ln a, ln b, ln R*, α, β, E) with the power terms centred on the data's
# geometric means, A/N^α = a·(N/N0)^−α: uncentred ln A would be ~α·ln N0 and strongly correlated
# with α (analysis/huber.py does the same). Natural A = a·N0^α, B = b·U0^β.


@dataclasses.dataclass(frozen=True)
class _Data:
    N: np.ndarray
    D: np.ndarray
    U: np.ndarray
    log_loss: np.ndarray
    N0: float
    U0: float

    def take(self, idx: np.ndarray) -> "_Data":
        return dataclasses.replace(self, N=self.N[idx], D=self.D[idx], U=self.U[idx],
                                   log_loss=self.log_loss[idx])


def _objective(theta: np.ndarray, d: _Data) -> tuple[float, np.ndarray]:
    """Σ Huber_δ(log L̂ − log L) / δ² (scaled so L-BFGS-B's tolerances bite) and its gradient."""
    log_a, log_b, log_r, alpha, beta, E = theta
    r_star = np.exp(log_r)
    R = np.maximum(d.D / d.U - 1.0, 0.0)
    decay = np.exp(-R / r_star)
    d_eff = d.U + d.U * r_star * (1.0 - decay)
    x_n, x_d = np.log(d.N / d.N0), np.log(d_eff / d.U0)
    a = np.exp(log_a - alpha * x_n)
    b = np.exp(log_b - beta * x_d)
    pred = E + a + b
    r = np.log(pred) - d.log_loss
    huber = np.where(np.abs(r) <= HUBER_DELTA, 0.5 * r**2, HUBER_DELTA * (np.abs(r) - 0.5 * HUBER_DELTA))
    w = np.clip(r, -HUBER_DELTA, HUBER_DELTA) / pred / HUBER_DELTA**2
    d_deff_dlogr = d.U * r_star * (1.0 - decay - (R / r_star) * decay)
    grad = np.array([np.sum(w * a), np.sum(w * b), np.sum(w * -beta * b * d_deff_dlogr / d_eff),
                     np.sum(w * -a * x_n), np.sum(w * -b * x_d), np.sum(w)])
    return float(np.sum(huber) / HUBER_DELTA**2), grad


def _bounds(d: _Data) -> list[tuple[float | None, float | None]]:
    e_max = float(np.exp(d.log_loss.min()))
    return [(None, None), (None, None), LOG_RSTAR_BOUNDS, EXPONENT_BOUNDS, EXPONENT_BOUNDS,
            (0.0, e_max)]


def _minimise(theta0: np.ndarray, d: _Data, opts: dict) -> np.ndarray:
    bounds = _bounds(d)
    lo = np.array([-np.inf if b[0] is None else b[0] for b in bounds])
    hi = np.array([np.inf if b[1] is None else b[1] for b in bounds])
    res = minimize(_objective, np.clip(theta0, lo, hi), args=(d,), jac=True, method="L-BFGS-B",
                   bounds=bounds, options=opts)
    return res.x


def _grid_starts(d: _Data) -> list[np.ndarray]:
    """Grid over (α, β, R*, E); ln a, ln b solved by non-negative least squares at each node."""
    loss = np.exp(d.log_loss)
    starts = []
    for alpha, beta, r_star, e_frac in itertools.product(
            (0.3, 0.7), (0.3, 0.7), (3.0, 30.0, 300.0, 3000.0), (0.0, 0.5, 0.9)):
        E = e_frac * loss.min()
        d_eff = effective_data(d.D, d.U, r_star)
        basis = np.column_stack([(d.N / d.N0) ** -alpha, (d_eff / d.U0) ** -beta])
        coef, _ = nnls(basis, loss - E)
        coef = np.maximum(coef, 1e-6 * loss.min())
        starts.append(np.array([np.log(coef[0]), np.log(coef[1]), np.log(r_star), alpha, beta, E]))
    return starts


def _fit_point(d: _Data) -> np.ndarray:
    starts = sorted(_grid_starts(d), key=lambda th: _objective(th, d)[0])[:_N_STARTS]
    fits = [_minimise(th, d, _MAIN_OPTS) for th in starts]
    return min(fits, key=lambda th: _objective(th, d)[0])


def _natural(theta: np.ndarray, d: _Data) -> np.ndarray:
    """Fit space -> PARAMS order (E, A, B, alpha, beta, R_star)."""
    log_a, log_b, log_r, alpha, beta, E = theta
    return np.array([E, np.exp(log_a) * d.N0**alpha, np.exp(log_b) * d.U0**beta, alpha, beta,
                     np.exp(log_r)])


def _at_r_bound(log_r: np.ndarray) -> np.ndarray:
    return np.minimum(np.abs(log_r - LOG_RSTAR_BOUNDS[0]),
                      np.abs(log_r - LOG_RSTAR_BOUNDS[1])) < AT_BOUND_LOG


def _check(t: pd.DataFrame, group: str) -> None:
    if len(t) < MIN_POINTS:
        raise ValueError(f"group {group!r}: {len(t)} points, the data-constrained law needs "
                         f">= {MIN_POINTS}")
    if t["U"].nunique() < 2:
        raise ValueError(f"group {group!r}: one unique-token pool U only, needs >= 2 distinct U")
    if not (t["D"] > t["U"]).any():
        raise ValueError(f"group {group!r}: no run repeats its data (D > U), R* cannot be "
                         "identified")
    values = t[["N", "D", "U", "loss"]].to_numpy(dtype=float)
    if not (np.isfinite(values).all() and (values > 0).all()):
        raise ValueError(f"group {group!r}: N, D, U and loss must be finite and positive")


@single_threaded_blas  # L-BFGS-B's tiny BLAS calls: see analysis/huber.py
def fit_data_constrained(table: pd.DataFrame, group: str, *, n_boot: int = 1000,
                         seed: int = 0) -> DataConstrainedFit:
    """Fit L(N, D, U) to one group's rows of ``table``; bootstrap over trunks for intervals.

    Raises ValueError (naming the group) with < 8 points, < 2 distinct U, or no row with D > U.
    """
    missing = set(COLUMNS) - set(table.columns)
    if missing:
        raise ValueError(f"table lacks columns {sorted(missing)}")
    t = table[table["group"] == group].reset_index(drop=True)
    _check(t, group)
    N, D, U = (t[c].to_numpy(dtype=float) for c in ("N", "D", "U"))
    d = _Data(N=N, D=D, U=U, log_loss=np.log(t["loss"].to_numpy(dtype=float)),
              N0=float(np.exp(np.log(N).mean())), U0=float(np.exp(np.log(U).mean())))
    theta = _fit_point(d)
    point = _natural(theta, d)

    trunks = t["trunk"].to_numpy()
    members = [np.flatnonzero(trunks == k) for k in pd.unique(trunks)]
    rng = np.random.default_rng(seed)
    draws = np.empty((n_boot, len(PARAMS)))
    log_r = np.empty(n_boot)
    for i in range(n_boot):
        pick = rng.integers(len(members), size=len(members))
        sub = d.take(np.concatenate([members[j] for j in pick]))
        th = _minimise(theta, sub, _BOOT_OPTS)
        draws[i], log_r[i] = _natural(th, d), th[2]

    if n_boot:
        lo, hi = np.percentile(draws, [2.5, 97.5], axis=0)
        pileup = bool(np.mean(_at_r_bound(log_r)) > PILEUP_SHARE)
    else:
        lo = hi = np.full(len(PARAMS), np.nan)
        pileup = False
    params = {name: Interval(float(point[k]), float(lo[k]), float(hi[k]))
              for k, name in enumerate(PARAMS)}
    at_bound = bool(_at_r_bound(np.array([theta[2]]))[0]) or pileup
    return DataConstrainedFit(group=str(group), n_points=len(t), params=params,
                              r_star_at_bound=at_bound)
