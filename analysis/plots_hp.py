"""Figures of the batch / LR laws (analysis/hp_laws.py) and of the data-constrained law
(analysis/data_constrained.py), one PNG per group; Figure without pyplot, like analysis/plots.py."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from analysis import data_constrained as dc
from analysis.study import GroupFit

_DPI = 120


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=_DPI)
    return path


def plot_hp(g: GroupFit, path: Path) -> Path:
    """B*(D) with each (N, D)'s optimum and interval; eta*(B) with the (N, D) optima."""
    fig = Figure(figsize=(10, 4))
    ax1, ax2 = fig.subplots(1, 2)
    kept = [o for o in g.hp.optima if o.kept]
    for ax, law, xs, ys, err, xl, yl in (
            (ax1, g.hp.batch_law, [o.D for o in kept], [o.batch for o in kept], True,
             "training tokens D", "optimal batch B* (tokens per step)"),
            (ax2, g.hp.lr_law, [o.batch.value for o in kept], [o.lr for o in kept], True,
             "batch B (tokens per step)", "optimal peak LR eta*")):
        v = np.array([y.value for y in ys])
        lo = np.array([y.lo for y in ys])
        hi = np.array([y.hi for y in ys])
        if len(v):
            yerr = np.vstack([v - np.where(np.isfinite(lo), lo, v), np.where(np.isfinite(hi), hi, v) - v])
            ax.errorbar(xs, v, yerr=yerr, fmt="o", capsize=3, label="(N, D) optima (95%)")
        if law is not None and len(xs):
            grid = np.logspace(np.log10(min(xs)) - 0.1, np.log10(max(xs)) + 0.1, 50)
            e = law.exponent
            ax.plot(grid, law.coefficient.value * grid ** e.value, "-",
                    label=f"exponent {e.value:.3g} [{e.lo:.3g}, {e.hi:.3g}]")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(xl)
        ax.set_ylabel(yl)
        ax.legend(fontsize=8)
    fig.suptitle(f"{g.group}: batch and LR laws")
    return _save(fig, path)


def plot_data_constrained(g: GroupFit, final: pd.DataFrame, path: Path) -> Path:
    """Loss against epochs D/U per pool size U and size N, with the fitted law's curves."""
    fit = g.data_constrained
    pts = final[(final["group"] == g.group) & np.isfinite(final["U"])]
    fig = Figure(figsize=(6, 4.5))
    ax = fig.subplots()
    for (u, n), c in pts.groupby(["U", "N"]):
        c = c.sort_values("D")
        line = ax.plot(c["D"] / u, c["loss"], "o", ms=4, label=f"U={u:.3g}, N={n:.3g}")[0]
        ep = np.logspace(np.log10((c["D"] / u).min()), np.log10((c["D"] / u).max()), 60)
        ax.plot(ep, dc.predict(fit, n, ep * u, u), "-", color=line.get_color(), lw=1)
    ax.set_xscale("log")
    ax.set_xlabel("epochs D / U")
    ax.set_ylabel("validation loss")
    r = fit.as_dict()["R_star"]
    ax.set_title(f"{g.group}: R* = {r['value']:.3g}")
    ax.legend(fontsize=6, ncol=2)
    return _save(fig, path)
