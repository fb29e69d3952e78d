"""Tables from planted laws, for recovery tests, the benchmark and CLI demos.

Both return the ``--from-table`` layout (family, N, D, C, loss, budget, run_id): feed them to
:func:`analysis.load.table_from_frame` to get a final-points table. Noise is multiplicative,
loss·exp(σ·ε) with ε ~ N(0, 1), so σ = 0.01 is "1% noise".
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.schema import FLOPS_PER_PARAM_TOKEN

# Hoffmann et al. 2022 approach-3 estimates, a realistic default for L(N, D).
CHINCHILLA = {"E": 1.69, "A": 406.4, "alpha": 0.34, "B": 410.7, "beta": 0.28}


def compute_law_table(*, A: float, beta: float, B: float, C: np.ndarray, noise: float = 0.01,
                      seed: int = 0, family: str = "synthetic") -> pd.DataFrame:
    """One run per compute value with loss A·C^(−β) + B; N, D follow Chinchilla's D = 20·N."""
    rng = np.random.default_rng(seed)
    C = np.asarray(C, float)
    loss = (A * C ** -beta + B) * np.exp(noise * rng.standard_normal(C.size))
    N = np.sqrt(C / (FLOPS_PER_PARAM_TOKEN * 20))
    return pd.DataFrame({"family": family, "N": N, "D": C / (FLOPS_PER_PARAM_TOKEN * N), "C": C,
                         "loss": loss, "budget": C,
                         "run_id": [f"{family}-{i}" for i in range(C.size)]})


def chinchilla_optimum(C: np.ndarray, p: dict[str, float]) -> np.ndarray:
    """N*(C) of L(N, D) under C = 6·N·D (Hoffmann et al. 2022, eq. 4)."""
    a, b = p["alpha"], p["beta"]
    g = (a * p["A"] / (b * p["B"])) ** (1 / (a + b))
    return g * (np.asarray(C, float) / FLOPS_PER_PARAM_TOKEN) ** (b / (a + b))


def isoflop_table(*, budgets: np.ndarray, params: dict[str, float] | None = None,
                  sizes: int = 7, span: float = 8.0, noise: float = 0.01, seed: int = 0,
                  family: str = "synthetic") -> pd.DataFrame:
    """An isoFLOP grid: ``sizes`` models per budget, log-spaced over ``span``x around N*(C),
    D = C/(6·N), loss from the planted L(N, D) with multiplicative noise."""
    p = dict(CHINCHILLA if params is None else params)
    rng = np.random.default_rng(seed)
    budgets = np.asarray(budgets, float)
    offsets = np.exp(np.linspace(-0.5, 0.5, sizes) * np.log(span))
    C = np.repeat(budgets, sizes)
    N = (chinchilla_optimum(budgets, p)[:, None] * offsets[None]).ravel()
    D = C / (FLOPS_PER_PARAM_TOKEN * N)
    loss = p["E"] + p["A"] / N ** p["alpha"] + p["B"] / D ** p["beta"]
    loss = loss * np.exp(noise * rng.standard_normal(loss.size))
    return pd.DataFrame({"family": family, "N": N, "D": D, "C": C, "loss": loss, "budget": C,
                         "run_id": [f"{family}-{i}" for i in range(C.size)]})


def scattered_isoflop_table(*, budgets: np.ndarray, params: dict[str, float] | None = None,
                            sizes: int = 11, span: float = 8.0, jitter: float = 0.1,
                            noise: float = 0.01, seed: int = 0,
                            family: str = "synthetic") -> pd.DataFrame:
    """An isoFLOP grid whose C is scattered the way a table read off a paper's figure is: every
    run's compute is its budget times a factor log-uniform in [1/(1+jitter), 1+jitter], D = C/(6·N)
    and the loss follows the planted L(N, D) at that (N, D). No ``budget`` column: the analysis
    has to bin C itself (``frontier.assign_budgets``)."""
    p = dict(CHINCHILLA if params is None else params)
    t = isoflop_table(budgets=budgets, params=p, sizes=sizes, span=span, noise=0.0, seed=seed,
                      family=family)
    rng = np.random.default_rng([seed, 1])
    C = t["C"].to_numpy() * np.exp(rng.uniform(-1, 1, len(t)) * np.log1p(jitter))
    N = t["N"].to_numpy()
    D = C / (FLOPS_PER_PARAM_TOKEN * N)
    loss = (p["E"] + p["A"] / N ** p["alpha"] + p["B"] / D ** p["beta"]) \
        * np.exp(noise * rng.standard_normal(len(t)))
    return pd.DataFrame({"family": family, "N": N, "D": D, "C": C, "loss": loss,
                         "run_id": t["run_id"]})


def hp_grid_table(*, b: float = 0.8225, k: float = 3.3e-3, c: float = 0.341, k_lr: float = 2e-4,
                  Ns=(2.5e4, 1e5), Ds=(7e5, 1.5e6, 3e6, 6e6), batches=(128, 256, 512, 1024, 2048),
                  lrs=(1e-3, 2e-3, 4e-3, 8e-3, 1.6e-2), kappa_b: float = 0.05,
                  kappa_lr: float = 0.08, noise: float = 0.002, seed: int = 0,
                  family: str = "synthetic") -> pd.DataFrame:
    """A batch x LR grid per (N, D) from planted laws B*(D) = k D^b (tokens) and
    eta*(B) = k_lr B^c: ln L = ln L0(N, D) + kappa_b (ln B - ln B*)^2 + kappa_lr (ln eta - ln eta*(B))^2,
    L0 Chinchilla's. One trunk per (N, B, eta), read off at every D (shared noise draws are not
    modelled: each point its own)."""
    rng = np.random.default_rng(seed)
    rows = []
    for n in Ns:
        for bt in batches:
            for lr in lrs:
                trunk = f"{family}-{n:g}-{bt}-{lr:g}"
                for d in Ds:
                    p = CHINCHILLA
                    l0 = p["E"] + p["A"] / n ** p["alpha"] + p["B"] / d ** p["beta"]
                    x = np.log(bt) - np.log(k * d ** b)
                    y = np.log(lr) - np.log(k_lr * bt ** c)
                    loss = l0 * np.exp(kappa_b * x * x + kappa_lr * y * y
                                       + noise * rng.standard_normal())
                    rows.append({"family": family, "N": n, "D": d, "C": 6 * n * d, "loss": loss,
                                 "budget": 6 * n * d, "batch_tokens": bt, "lr": lr,
                                 "trunk": trunk, "run_id": f"{trunk}-{d:g}"})
    return pd.DataFrame(rows)
