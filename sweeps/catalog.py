"""The sweeps: `sweep_runs(recipe, name, **selection) -> list[RunConfig]`, and the registry.

A sweep is a record of the preset's Recipe (recipe.Sweep: name, grid, optional own shape, optional
search; what each one studies is said where LAPTOP defines it), and every sweep expands the same
way: budget -> family -> knob -> size (sweeps/grid.py). `selection` (sizes, budgets, families,
knobs: None = the recipe's) comes from the command line. No Ray, no I/O, no clock.
"""
from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from trainer.config import RunConfig
from sweeps.grid import grid_runs, select
from sweeps.recipe import DEFAULT_PRESET, PRESETS, Recipe, Search


def sweep_runs(recipe: Recipe, name: str, **selection) -> list[RunConfig]:
    """Every run of the recipe's sweep `name` (ValueError naming an unknown one), with the
    command-line selection replacing the grid's fields."""
    sweep = recipe.sweep(name)
    return grid_runs(name, recipe.shape_of(name), select(sweep.grid, **selection),
                     recipe.tokens_per_param, recipe.definitions)


def _names() -> list[str]:
    """Every preset's sweep names, the default preset's order first."""
    order = [DEFAULT_PRESET] + [p for p in PRESETS if p != DEFAULT_PRESET]
    return list(dict.fromkeys(s.name for p in order for s in PRESETS[p].sweeps))


SWEEPS: dict[str, Callable[..., list[RunConfig]]] = {
    name: functools.partial(sweep_runs, name=name) for name in _names()}
"""name -> sweep(recipe, **selection) -> list[RunConfig]."""


@dataclass(frozen=True)
class SearchSpace:
    """A search over RunConfig fields, for Ray Tune's OptunaSearch (one study per base config).

    params: dotted RunConfig field -> ("loguniform", low, high) | ("uniform", low, high)
            | ("choice", (value, ...)).
    """
    params: Mapping[str, tuple] = field(default_factory=dict)
    metric: str = "val_nelbo"
    mode: str = "min"
    num_samples: int = 8
    """Trials per base config."""

    def __post_init__(self):
        for name, spec in self.params.items():
            if not spec or spec[0] not in ("loguniform", "uniform", "choice"):
                raise ValueError(f"search param {name!r}: unknown distribution {spec!r}")
        if self.mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {self.mode!r}")
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {self.num_samples}")

    def apply(self, base: RunConfig, point: Mapping[str, object]) -> RunConfig:
        """The base config with a proposed point's values (keys must be this space's params)."""
        unknown = sorted(set(point) - set(self.params))
        if unknown:
            raise ValueError(f"point has parameters outside the search space: {unknown}")
        return base.with_overrides([f"{k}={json.dumps(v)}" for k, v in sorted(point.items())])

    def start(self, base: RunConfig) -> dict:
        """The base config's own values of the searched fields (a first point to evaluate)."""
        flat = base.to_dict()
        out = {}
        for name in self.params:
            node = flat
            for key in name.split("."):
                node = node[key]
            out[name] = node
        return out


def space(search: Search) -> SearchSpace:
    """The SearchSpace of a recipe's Search: log-uniform LR, a choice of batch sizes."""
    return SearchSpace(params={"train.lr": ("loguniform", search.lr[0], search.lr[1]),
                               "train.batch_size": ("choice", tuple(search.batch_sizes))},
                       metric=search.metric, mode=search.mode, num_samples=search.num_samples)


def search_spaces(recipe: Recipe) -> dict[str, SearchSpace]:
    """Search spaces of the recipe's sweeps that have one."""
    return {s.name: space(s.search) for s in recipe.sweeps if s.search is not None}
