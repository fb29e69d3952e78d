"""Sweeps: named, pure expansions of a study into RunConfigs (no Ray, no I/O, no clock).

    expand("compute_bound")                        # laptop isoFLOP grid (the default preset)
    expand("compute_bound", preset="cluster")      # the same study at GPU scale
    expand("smoke", families=("masked",), overrides=("train.lr=1e-3",))
    expand("compute_bound", overrides=("train.batch_size=law:out/fits/hparams_grid/fits.json",))
    search_space("hparams")                        # Optuna space over each hparams base config

The orchestrator calls `expand` before Ray starts: unknown sweep, preset, family or size names
raise ValueError naming them. Choices live in sweeps/recipe.py (one Recipe per preset, its sweeps
records: name, grid, optional shape and search), the mechanics in sweeps/grid.py, the registry
(SWEEPS) and search spaces in sweeps/catalog.py.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping

from trainer.config import RunConfig
from sweeps import from_law
from sweeps.catalog import SWEEPS, SearchSpace, search_spaces
from sweeps.recipe import DEFAULT_PRESET, PRESETS, Recipe, preset as get_preset

__all__ = ["SWEEPS", "PRESETS", "DEFAULT_PRESET", "Recipe", "SearchSpace", "expand", "search_space"]


def _sweep(name: str):
    if name not in SWEEPS:
        raise ValueError(f"sweep {name!r} is unknown; known: {', '.join(SWEEPS)}")
    return SWEEPS[name]


def expand(name: str, *, preset: str | None = DEFAULT_PRESET,
           sizes: Iterable[str] | None = None, budgets: Iterable[float] | None = None,
           families: Iterable[str] | None = None, knobs: Iterable[float] | None = None,
           overrides: Iterable[str] = (), readoff: str | None = None,
           seeds: int | None = None, law_files: Mapping[str, dict] | None = None
           ) -> list[RunConfig]:
    """The runs of sweep `name` under a preset, in a deterministic order.

    sizes / budgets / families / knobs replace the recipe's (sizes: these at every budget instead
    of centring on the compute-optimal size); `overrides` are `field.path=value` strings applied to
    every run (RunConfig.with_overrides). readoff ('constant' | 'branches' | 'none') and seeds
    replace the grid's (a trajectory study: one trunk per family, knob and size; its points are
    sweeps.trajectory.planned_points). Every run has sweep=name and io.experiment=name.
    `law_files`: path -> from_law.parse(path, text) of every ``law:PATH`` override's file."""
    sweep = _sweep(name)
    recipe = get_preset(preset)
    selection = {k: None if v is None else tuple(v) for k, v in
                 (("sizes", sizes), ("budgets", budgets), ("families", families), ("knobs", knobs))}
    if isinstance(overrides, str):
        raise ValueError(f"overrides must be a list of field=value strings, got the string {overrides!r}")
    overrides, laws = from_law.split(list(overrides))
    runs = sweep(recipe, **selection, readoff=readoff, seeds=seeds)
    if overrides:
        runs = [r.with_overrides(overrides) for r in runs]
    # --set train.batch_size=law:FITS: `law_files` maps FITS to its parsed groups (sweeps/from_law.py)
    runs = from_law.apply(runs, laws, law_files or {})
    for r in runs:
        if r.sweep != name or r.io.experiment != name:
            raise ValueError(f"override changes the sweep tag or experiment of sweep {name!r} "
                             f"(sweep={r.sweep!r}, io.experiment={r.io.experiment!r})")
    seen: dict[str, RunConfig] = {}
    for r in runs:
        rid = r.run_id()
        if rid in seen:
            raise ValueError(f"sweep {name!r}: two runs are identical (run id {rid}, "
                             f"{r.noise.family} {r.size} C={r.train.budget_flops:.3g})"
                             + (f" after overrides {overrides}" if overrides else ""))
        seen[rid] = r
    return runs


def search_space(name: str, *, preset: str | None = DEFAULT_PRESET) -> SearchSpace | None:
    """The search space of a sweep whose points an optimiser proposes (hparams), else None."""
    _sweep(name)
    return search_spaces(get_preset(preset)).get(name)
