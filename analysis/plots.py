"""Figures of a :class:`StudyFit`. Only draws: every number comes from the fit objects.

Uses ``matplotlib.figure.Figure`` directly (no pyplot), so nothing global is touched and PNGs are
rendered by Agg whatever backend the process has.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from analysis import conventions, plots_hp
from analysis.study import GroupFit, StudyFit

_DPI = 120
NELBO_LABEL = "validation NELBO (nats/token)"
"""y label of our own runs' loss; a table from elsewhere is labelled plainly "loss"."""
LOSS_VS_COMPUTE = "compute"
"""The law (laws.LAWS) the loss-vs-compute figures draw: L(C), a law of loss in C alone."""
_BUDGET_CMAP = "viridis"  # sequential: budget order reads as colour order, never repeats


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _loss_axis(ax) -> None:
    """Log-scaled loss axis labelled 2.5, 3, 4 rather than 3×10^0."""
    ax.set_yscale("log")
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain)  # a loss range rarely contains a power of ten


def _unidentified(fit) -> str:
    """Legend text for a law with parameters the data does not pin down."""
    names = ", ".join(k for k, e in fit.params.items() if e.flag)
    return f"{names} not identified by these runs"


def _c_label(convention: str) -> str:
    return f"training compute C (FLOPs, convention {convention})"


def _c_grid(study: StudyFit) -> np.ndarray:
    return np.logspace(np.log10(study.c_range[0]), np.log10(study.c_range[1]), 200)


def _draw_law(ax, g: GroupFit, grid: np.ndarray, color, label: str) -> None:
    fit = g.law(LOSS_VS_COMPUTE)
    if fit is None:
        return
    ax.plot(grid, fit.predict(C=grid), color=color, lw=1.5, label=label)
    lo, hi = fit.band(C=grid)
    if np.isfinite(lo).all():
        ax.fill_between(grid, lo, hi, color=color, alpha=0.2, lw=0)


def plot_group(g: GroupFit, study: StudyFit, final: pd.DataFrame, runs: pd.DataFrame | None,
               path: Path, loss_label: str = NELBO_LABEL) -> Path:
    """Loss vs compute for one group: learning curves (if ``runs``), final points, frontier, law."""
    fig = Figure(figsize=(6.4, 4.6))
    ax = fig.subplots()
    if runs is not None:
        mine = runs[runs["family"] == g.family]
        mine = mine[mine["knob"].isna()] if np.isnan(g.knob) else mine[mine["knob"] == g.knob]
        col = conventions.column(study.flop_convention)
        col = col if col in mine else "flops"
        for _, r in mine.groupby("mlflow_run_id"):
            ax.plot(r[col], r["val_nelbo"], color="0.8", lw=0.7, zorder=1)
    pts = final[final["group"] == g.group]
    ax.scatter(pts["C"], pts["loss"], s=12, color="0.45", label="final evaluations", zorder=2)
    ax.plot(g.frontier.C, g.frontier.loss, "o-", color="C3", ms=5, lw=1, label="Pareto frontier",
            zorder=3)
    fit = g.law(LOSS_VS_COMPUTE)
    if fit is not None:
        p = fit.params
        label = (f"A·C^-β + B: β={p['beta'].value:.3g}, B={p['B'].value:.3g} "
                 f"(95% band)")
        _draw_law(ax, g, _c_grid(study), "C0", label)
        if fit.flags:
            ax.text(0.02, 0.02, _unidentified(fit), transform=ax.transAxes, fontsize=7,
                    color="C3", va="bottom")
    _loss_axis(ax)
    ax.set(xscale="log", xlabel=_c_label(study.flop_convention),
           ylabel=loss_label, title=f"{g.group}: loss vs compute")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_pareto(study: StudyFit, path: Path, loss_label: str = NELBO_LABEL) -> Path:
    """All groups' frontiers and L(C) laws on one chart: the study's headline figure."""
    fig = Figure(figsize=(7, 5))
    ax = fig.subplots()
    grid = _c_grid(study)
    for i, g in enumerate(study.groups):
        color = f"C{i % 10}"
        ax.plot(g.frontier.C, g.frontier.loss, "o", color=color, ms=4)
        fit = g.law(LOSS_VS_COMPUTE)
        _draw_law(ax, g, grid, color, g.group + (" (" + _unidentified(fit) + ")"
                                                 if fit and fit.flags else ""))
        if fit is None:
            ax.plot(g.frontier.C, g.frontier.loss, "-", color=color, lw=1,
                    label=f"{g.group} (no fit)")
    for x in study.crossovers:
        if x.crosses:
            ax.axvline(x.c, color="0.5", ls=":", lw=1)
    _loss_axis(ax)
    ax.set(xscale="log", xlabel=_c_label(study.flop_convention),
           ylabel=loss_label, title="Pareto frontiers and L(C) = A·C^-β + B")
    ax.legend(fontsize=8)
    return _save(fig, path)


def budget_colors(budgets) -> list:
    """One RGBA colour per budget on a sequential map of log C: distinct for distinct budgets
    however many there are (a 10-colour cycle made the 1st and 11th curves look like one)."""
    from matplotlib import colormaps

    logc = np.log10(np.asarray(budgets, float))
    span = logc.max() - logc.min() if len(logc) else 0.0
    t = (logc - logc.min()) / span if span > 0 else np.zeros(len(logc))
    return [colormaps[_BUDGET_CMAP](0.9 * x) for x in t]   # 0.9: skip the map's faint yellow end


def isoflop_figure(g: GroupFit, loss_label: str = NELBO_LABEL, convention: str = "matmul"
                   ) -> Figure:
    """Loss vs N per budget with the fitted parabolas and their minima; flagged curves dashed.
    Budgets are labelled by their runs' median C under ``convention``."""
    fig = Figure(figsize=(6.4, 4.6))
    ax = fig.subplots()
    levels = [c.c_level if np.isfinite(c.c_level) else c.budget for c in g.isoflops]
    colors = budget_colors(levels)
    for c, color, level in zip(g.isoflops, colors, levels):
        ax.plot(c.N, c.loss, "o", color=color, ms=4, label=f"C={level:.2g}")
        if c.coef is not None:
            u = np.linspace(np.log(c.window[0]), np.log(c.window[1]), 100) - c.center
            ax.plot(np.exp(u + c.center), np.polyval(c.coef[::-1], u), color=color,
                    ls="-" if c.ok else "--", lw=1)
        if c.ok:
            u = np.log(c.n_opt) - c.center
            ax.plot(c.n_opt, np.polyval(c.coef[::-1], u), "*", color=color, ms=11, mec="k")
    ax.set(xscale="log", xlabel="parameters N", ylabel=f"final {loss_label}",
           title=f"{g.group}: isoFLOP curves (★ fitted minimum, dashed = flagged)")
    if len(g.isoflops) > 1:
        from matplotlib.cm import ScalarMappable
        from matplotlib.colors import Normalize

        logc = np.log10(levels)
        sm = ScalarMappable(Normalize(logc.min(), logc.min() + (logc.max() - logc.min()) / 0.9),
                            _BUDGET_CMAP)
        fig.colorbar(sm, ax=ax, label=f"log10 budget C (FLOPs, {convention})")
    if len(g.isoflops) <= 10:  # past that a legend hides the curves; the colour bar reads C
        ax.legend(fontsize=7, ncol=2)
    return fig


def plot_isoflops(g: GroupFit, path: Path, loss_label: str = NELBO_LABEL,
                  convention: str = "matmul") -> Path:
    return _save(isoflop_figure(g, loss_label, convention), path)


def plot_residuals(study: StudyFit, path: Path) -> Path:
    """ln L̂ − ln L of each group's frontier under its L(C) fit, against compute."""
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.subplots()
    for i, g in enumerate(study.groups):
        fit = g.law(LOSS_VS_COMPUTE)
        if fit is None:
            continue
        res = np.log(fit.predict(C=g.frontier.C)) - np.log(g.frontier.loss)
        ax.plot(g.frontier.C, res, "o-", color=f"C{i % 10}", ms=4, lw=0.8, label=g.group)
    ax.axhline(0, color="k", lw=0.8)
    ax.set(xscale="log", xlabel=_c_label(study.flop_convention), ylabel="ln L̂ − ln L",
           title="L(C) residuals on the frontier")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_speed_quality(table: pd.DataFrame, path: Path) -> Path:
    """Gen-PPL vs tokens/s of every sampling point (a ``speed_quality_table``), log-log.

    One colour per group; a line through each sampling run's step counts, each point labelled with
    its steps; the front over all groups as a staircase (per judge), its points ringed in black;
    degenerate points hollow grey.
    """
    fig = Figure(figsize=(7.2, 5.2))
    ax = fig.subplots()
    ok = table[np.isfinite(table["tokens_per_s"]) & np.isfinite(table["gen_ppl"])
               & (table["tokens_per_s"] > 0) & (table["gen_ppl"] > 0)]
    for i, group in enumerate(sorted(table["group"].unique())):
        color = f"C{i % 10}"
        mine = ok[ok["group"] == group]
        for _, r in mine.groupby("run", sort=False):
            r = r.sort_values("steps")
            ax.plot(r["tokens_per_s"], r["gen_ppl"], "-", color=color, lw=0.8, alpha=0.6)
        good, bad = mine[~mine["degenerate"]], mine[mine["degenerate"]]
        ax.plot(good["tokens_per_s"], good["gen_ppl"], "o", color=color, ms=5, label=group)
        ax.plot(bad["tokens_per_s"], bad["gen_ppl"], "o", mfc="none", mec="0.55", ms=5)
        for x, y, s in zip(mine["tokens_per_s"], mine["gen_ppl"], mine["steps"]):
            ax.annotate(str(s), (x, y), xytext=(3, 3), textcoords="offset points", fontsize=6,
                        color="0.3")
    for k, (_, j) in enumerate(ok[ok["front_all"]].groupby("judge_run_id", sort=False)):
        j = j.sort_values("tokens_per_s")
        # Staircase: best gen-PPL attainable at speed >= x (where="pre": y[i+1] on (x_i, x_i+1]).
        ax.step(j["tokens_per_s"], j["gen_ppl"], where="pre", color="k", lw=1,
                ls=("-", "--", ":")[k % 3], label="Pareto front" if k == 0 else None)
        ax.plot(j["tokens_per_s"], j["gen_ppl"], "o", mfc="none", mec="k", ms=9, mew=1.3)
    if ok["degenerate"].any():
        ax.plot([], [], "o", mfc="none", mec="0.55", ms=5, label="degenerate (low entropy)")
    if ok.empty:
        ax.text(0.5, 0.5, "no finite points", ha="center", transform=ax.transAxes)
    else:
        _loss_axis(ax)
        ax.set_xscale("log")
    judges = "; ".join(dict.fromkeys(j or "(unnamed judge)" for j in table["judge"]))
    ax.set(xlabel="generation speed (tokens/s)", ylabel="generative perplexity",
           title=f"speed vs quality of the samplers\njudge: {judges}")
    ax.title.set_fontsize(9)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    return _save(fig, path)


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=_DPI)
    return path


def write_plots(study: StudyFit, final: pd.DataFrame, out_dir: str | Path,
                runs: pd.DataFrame | None = None, loss_label: str = NELBO_LABEL) -> list[Path]:
    """Every figure as PNG under ``out_dir``; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [plot_pareto(study, out / "pareto.png", loss_label),
             plot_residuals(study, out / "residuals.png")]
    for g in study.groups:
        paths.append(plot_group(g, study, final, runs,
                                out / f"loss_vs_compute_{_slug(g.group)}.png", loss_label))
        if g.isoflops:
            paths.append(plot_isoflops(g, out / f"isoflops_{_slug(g.group)}.png", loss_label,
                                       study.flop_convention))
        if g.hp is not None:
            paths.append(plots_hp.plot_hp(g, out / f"hp_laws_{_slug(g.group)}.png"))
        if g.data_constrained is not None:
            paths.append(plots_hp.plot_data_constrained(
                g, final, out / f"data_constrained_{_slug(g.group)}.png"))
    return paths
