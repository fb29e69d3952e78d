"""Bootstrap intervals contain the planted values in >= 90% of 50 seeds (95% intervals).

200 draws per seed keeps this to seconds; Monte Carlo error in the 2.5/97.5 percentiles at 200
draws makes the intervals slightly narrow, so this is a conservative check of the method.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis import synthetic
from analysis.laws import LAWS, fit_law
from analysis.load import table_from_frame

SEEDS = range(50)
DRAWS = 200


def _covered(fit, truth: dict[str, float]) -> list[bool]:
    return [fit.params[k].lo <= v <= fit.params[k].hi for k, v in truth.items()]


def test_compute_law_intervals_cover_planted_values():
    """12 frontier points over 1e12..1e19 FLOPs (loss 9.8 -> 1.83), 1% noise."""
    beta, b_inf = 0.3, 1.8
    a = 8.0 * 1e12 ** beta
    hits = []
    for seed in SEEDS:
        raw = synthetic.compute_law_table(A=a, beta=beta, B=b_inf, C=np.logspace(12, 19, 12),
                                          seed=seed)
        fit = fit_law("compute", table_from_frame(raw)[0], "synthetic", n_boot=DRAWS, seed=seed)
        hits.append(_covered(fit, {"A": a, "beta": beta, "B": b_inf}))
    coverage = np.mean(hits, axis=0)
    assert (coverage >= 0.9).all(), coverage


def test_chinchilla_intervals_cover_planted_values():
    """10 x 10 factorial grid of N (1e5..1e11) and D (1e7..1e13), 1% noise."""
    p = synthetic.CHINCHILLA
    form = LAWS["chinchilla"].form
    N, D = (x.ravel() for x in np.meshgrid(np.logspace(5, 11, 10), np.logspace(7, 13, 10)))
    clean = form.predict(np.array([p[k] for k in form.params]), {"N": N, "D": D})
    hits = []
    for seed in SEEDS:
        loss = clean * np.exp(0.01 * np.random.default_rng(seed).standard_normal(N.size))
        final, _ = table_from_frame(
            pd.DataFrame({"family": "planted", "N": N, "D": D, "loss": loss}))
        fit = fit_law("chinchilla", final, "planted", n_boot=DRAWS, seed=seed)
        hits.append(_covered(fit, p))
    coverage = np.mean(hits, axis=0)
    assert (coverage >= 0.9).all(), coverage
