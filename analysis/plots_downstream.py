"""Figures of the downstream evaluations (analysis/downstream.py). Only draws: every number comes
from the frame (``downstream.EVAL_COLUMNS``) and the fits (analysis/two_stage.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from analysis.plots import _c_label, _save, _slug
from analysis.two_stage import EXTRAPOLATE, TwoStageFit


def group_colors(df: pd.DataFrame) -> dict[str, str]:
    """One colour per group, the same on every task's figure."""
    return {g: f"C{i % 10}" for i, g in enumerate(sorted(df["group"].unique()))}


def plot_accuracy(df: pd.DataFrame, task: str, path: Path, fits: list[TwoStageFit] = (),
                  colors: dict[str, str] | None = None) -> Path:
    """Accuracy vs training compute on one task: Wilson 95 % error bars per run, one colour per
    group, the chance level dashed, and each group's two-stage acc(C) with its band where fitted."""
    colors = colors or group_colors(df)
    mine = df[(df["task"] == task) & np.isfinite(df["compute"]) & (df["compute"] > 0)]
    fig = Figure(figsize=(6.4, 4.6))
    ax = fig.subplots()
    for group, g in mine.groupby("group"):
        g = g.sort_values("compute")
        err = np.vstack([g["acc"] - g["lo"], g["hi"] - g["acc"]])
        ax.errorbar(g["compute"], g["acc"], yerr=err, fmt="o", ms=4, capsize=2,
                    color=colors[group], label=group)
    for f in fits:
        if f.task != task or not f.ok or f.group not in colors:
            continue
        pts = mine[mine["group"] == f.group]
        grid = np.logspace(np.log10(pts["compute"].min()), np.log10(EXTRAPOLATE * f.c_max), 100)
        ax.plot(grid, f.predict(grid), color=colors[f.group], lw=1.2)
        lo, hi = f.band(grid)
        if np.isfinite(lo).all():
            ax.fill_between(grid, lo, hi, color=colors[f.group], alpha=0.15, lw=0)
    chance = df.loc[df["task"] == task, "chance"].dropna()
    if len(chance):
        ax.axhline(float(chance.mean()), color="0.35", ls="--", lw=1, label="chance")
    if mine.empty:
        ax.text(0.5, 0.5, "no run with a known training compute", ha="center",
                transform=ax.transAxes)
    else:
        ax.set_xscale("log")
    convention = df["flop_convention"].iloc[0] if len(df) else "?"
    ax.set(xlabel=_c_label(convention), ylabel=f"{task} accuracy (Wilson 95 %)",
           title=f"{task}: accuracy vs compute" + (" (lines: two-stage fit)"
                                                   if any(f.ok and f.task == task for f in fits)
                                                   else ""))
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    return _save(fig, path)


def write_plots(df: pd.DataFrame, out_dir: str | Path, fits: list[TwoStageFit] = ()
                ) -> list[Path]:
    """accuracy_<task>.png for every task under ``out_dir``; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    colors = group_colors(df)
    return [plot_accuracy(df, task, out / f"accuracy_{_slug(task)}.png", fits, colors)
            for task in dict.fromkeys(df["task"])]
