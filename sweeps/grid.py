"""MECHANICS of the sweeps: which ladder sizes sit around the compute-optimal one, and the
RunConfigs of a recipe's `Grid`. Pure functions: no Ray, no I/O, no clock.

FLOP arithmetic is core/flops.py's; the choices (budgets, k, families, shape) are the recipe's.
"""
from __future__ import annotations

import dataclasses

from trainer.config import IOConfig, RunConfig, TrainConfig
from trainer.data.loader import DataConfig
from core.flops import compute_optimal_flops_per_token, train_flops_per_token
from core.ladder import LADDER, model_config
from trainer.families.registry import FAMILIES, NoiseConfig
from sweeps.definitions import PROJECT, Definitions
from sweeps.recipe import Grid, Shape
from sweeps.trajectory import trajectory_runs


def reference_flops_per_token(size: str, shape: Shape, time_cond: str = "none",
                              convention: str = "matmul") -> float:
    """Training FLOPs per token of a ladder size at the shape's vocabulary and sequence length,
    with the given time conditioning (core.ladder.TIME_CONDS): its layers run once per sequence
    but at the laptop widths "adaln" (cond_dim 128) still adds ~1-6% per token at T = 128, enough
    to move a size across f*, so each family's grid is centred on its own count. The exact
    per-run count is `trainer.plan.plan`'s (the tests use it). `convention`: the one the
    budgets are counted in (core.flops.CONVENTIONS)."""
    cfg = model_config(size, vocab_size=shape.vocab_size + 1, out_vocab_size=shape.vocab_size,
                       seq_len=shape.seq_len, time_cond=time_cond)
    return train_flops_per_token(cfg, convention)


def centred_sizes(budget: float, k: int, shape: Shape, tokens_per_param: float,
                  time_cond: str = "none", convention: str = "matmul") -> tuple[str, ...]:
    """k consecutive ladder sizes (by FLOPs/token) around f* = compute_optimal_flops_per_token:
    k // 2 strictly below f*, the rest above; shifted inwards where the ladder ends."""
    if not 2 <= k <= len(LADDER):
        raise ValueError(f"sizes_per_budget must be in [2, {len(LADDER)}], got {k}")
    flops = {s: reference_flops_per_token(s, shape, time_cond, convention) for s in LADDER}
    ladder = sorted(LADDER, key=flops.__getitem__)
    f_star = compute_optimal_flops_per_token(budget, tokens_per_param)
    below = sum(flops[s] < f_star for s in ladder)
    lo = min(max(below - k // 2, 0), len(ladder) - k)
    return tuple(ladder[lo:lo + k])


def make_run(sweep: str, shape: Shape, *, size: str, family: str, knob: float | None,
             budget: float, pool_tokens: int | None,
             definitions: Definitions = PROJECT) -> RunConfig:
    """One RunConfig: the shape's training settings under `definitions` (FLOP convention, the
    family's loss, time conditioning, training noise), tagged with the sweep."""
    noise = NoiseConfig(family=family, **definitions.noise_fields(family))
    if knob is not None:
        noise = noise.with_knob(knob)             # the family's knob field (FamilySpec.knob)
    return RunConfig(
        size=size,
        noise=noise,
        data=DataConfig(vocab_size=shape.vocab_size),
        train=TrainConfig(budget_flops=budget, batch_size=shape.batch_size, seq_len=shape.seq_len,
                          lr=shape.lr_for(size), warmup_frac=shape.warmup_frac, evals=shape.evals,
                          eval_seqs=shape.eval_seqs, eval_t_repeats=shape.eval_t_repeats,
                          data_pool_tokens=pool_tokens,
                          flop_convention=definitions.flop_convention),
        time_cond=definitions.time_cond_for(family),
        cond_dim=definitions.cond_dim,
        engine=shape.engine,
        io=IOConfig(experiment=sweep),
        sweep=sweep,
    )


def grid_runs(sweep: str, shape: Shape, grid: Grid, tokens_per_param: float,
              definitions: Definitions = PROJECT) -> list[RunConfig]:
    """Every run of a grid under `definitions`: one per point, ordered budget -> family -> knob ->
    size (ascending FLOPs/token); for a trajectory grid (Grid.readoff) the trunks that serve those
    points (sweeps/trajectory.py)."""
    points = point_runs(sweep, shape, grid, tokens_per_param, definitions)
    if grid.readoff is None:
        return points
    return trajectory_runs(points, grid.readoff, grid.seeds, shape.min_steps)


def point_runs(sweep: str, shape: Shape, grid: Grid, tokens_per_param: float,
               definitions: Definitions = PROJECT) -> list[RunConfig]:
    """One classic run per point of the grid (what a trajectory study's trunks replace): budget ->
    family -> knob -> pool -> size -> batch -> LR."""
    runs = []
    for budget in grid.budgets:
        for family in grid.families:
            time_cond = (definitions.time_cond_for(family)
                         or FAMILIES[family].time_cond_default)
            sizes = grid.sizes or centred_sizes(budget, grid.k_for(family), shape,
                                                grid.ratio_for(family, tokens_per_param),
                                                time_cond, definitions.flop_convention)
            for knob in grid.knobs if FAMILIES[family].knob else (None,):
                for pool in grid.pools():
                    for size in sizes:
                        run = make_run(sweep, shape, size=size, family=family, knob=knob,
                                       budget=budget, pool_tokens=pool,
                                       definitions=definitions)
                        runs += hp_variants(run, grid)
    return runs


def hp_variants(run: RunConfig, grid: Grid) -> list[RunConfig]:
    """The run at every (batch size, LR) of the grid's hyper-parameter grid (batch outer, LR
    inner); just the run when the grid has none."""
    if not grid.batch_sizes:
        return [run]
    return [dataclasses.replace(run, train=dataclasses.replace(run.train, batch_size=b, lr=lr))
            for b in grid.batch_sizes for lr in grid.lrs]


def select(grid: Grid, *, sizes=None, budgets=None, families=None, knobs=None, readoff=None,
           seeds=None) -> Grid:
    """The grid with command-line selections replacing its fields (None = keep the recipe's).
    Names are validated by Grid (ValueError naming an unknown size or family)."""
    changes = {}
    if sizes is not None:
        unknown = [s for s in sizes if s not in LADDER]
        if unknown:
            raise ValueError(f"size {unknown[0]!r} is not in the ladder; known: {', '.join(LADDER)}")
        changes["sizes"] = tuple(s for s in LADDER if s in set(sizes))   # ladder order
    if budgets is not None:
        changes["budgets"] = tuple(budgets)
    if families is not None:
        changes["families"] = tuple(families)
    if knobs is not None:
        changes["knobs"] = tuple(knobs)
    if readoff is not None:                       # "none": one run per point
        changes["readoff"] = None if readoff == "none" else readoff
    if seeds is not None:
        changes["seeds"] = seeds
    out = dataclasses.replace(grid, **changes)
    if knobs is not None and not any(FAMILIES[f].knob for f in out.families):
        with_knob = [name for name, spec in FAMILIES.items() if spec.knob]
        raise ValueError(f"knobs {tuple(knobs)} apply to {', '.join(with_knob)} only, and the "
                         f"families are {', '.join(out.families)}")
    return out
