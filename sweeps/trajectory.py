"""One run, many budgets: a study's points (family, knob, size, budget) regrouped into trajectory
trunks. Pure: no Ray, no I/O, no clock.

Per (family, knob, size) one trunk trains at constant LR (after a warmup shared by its branches) to
the largest budget that size serves, and evaluates at every budget it serves (train.readoffs). Two
read-offs (Grid.readoff):

- ``constant`` (2512.10858, gidd-easydel notebooks/utils.py: constant LR, no cooldown, the loss
  read off the curve): a point is the trunk's evaluation at the budget; a few *cooled* points get a
  decay branch too (the size just above f* at every budget), so the study measures each family's
  cooldown factor (branch / trunk at the same budget) instead of assuming one (their
  cooldown_ablations.ipynb measured 1.0245 for a 20% cooldown);
- ``branches`` (WSD-S, Hägele et al. 2024; OLMo-core model_ladder): every point is a decay branch
  forked from the trunk at (1 − decay_frac) of that budget's steps, its final evaluation the point.

`seeds` = K > 1 repeats, per (family, knob), the trunk at the middle budget's cooled size with seeds
1 … K−1 (with the same branches), so the report can set the seed-to-seed spread beside the fits.
"""
from __future__ import annotations

import dataclasses
from collections import defaultdict
from dataclasses import dataclass

from trainer.config import READOFFS, RunConfig
from trainer.plan import branch_configs, decay_steps, plan


@dataclass(frozen=True)
class Point:
    """One point of a study: a (family, knob, size, budget) and the run that yields it."""
    family: str
    knob: float | None
    size: str
    budget: float
    run_id: str
    """The run it is read off (a trunk or a classic run) or the branch whose end it is."""
    trunk: str
    """The run the point's training is part of (its own id for a classic run)."""
    seed: int


def _key(cfg: RunConfig) -> str:
    """A point's run without its budget: the runs one trunk replaces."""
    d = cfg.science()
    d["train"].pop("budget_flops")
    return repr(sorted((k, repr(v)) for k, v in d.items()))


def _cooled(points: list[RunConfig]) -> set[str]:
    """Constant read-off: the points that also get a decay branch: per (family, knob) and budget,
    the first size above f* (index k // 2 of that budget's sizes, in grid order)."""
    by_curve: dict[tuple, list[RunConfig]] = defaultdict(list)
    for c in points:
        by_curve[(c.noise.family, c.noise.knob(), c.train.budget_flops)].append(c)
    return {curve[len(curve) // 2].run_id() for curve in by_curve.values()}


def trajectory_runs(points: list[RunConfig], readoff: str, seeds: int = 1,
                    min_steps: int | None = None) -> list[RunConfig]:
    """The trunks that serve `points` (classic RunConfigs, grid order); each trunk's branches are
    its train.forks (trainer.plan.branch_configs). `min_steps` set: a trunk is also read off at
    every other budget of the study below its own that it reaches in >= min_steps steps (free
    points: an evaluation each; on the large-model side of those budgets' isoFLOP curves)."""
    if readoff not in READOFFS:
        raise ValueError(f"readoff must be one of {READOFFS}, got {readoff!r}")
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"seeds must be a positive int, got {seeds!r}")
    cooled = _cooled(points)
    study = sorted({c.train.budget_flops for c in points})
    groups: dict[str, list[RunConfig]] = {}
    for c in points:
        groups.setdefault(_key(c), []).append(c)
    trunks: dict[str, RunConfig] = {}
    for key, members in groups.items():
        members = sorted(members, key=lambda c: c.train.budget_flops)
        budgets = tuple(c.train.budget_flops for c in members)
        top, low = members[-1], members[0]
        warm = max(1, round(low.train.warmup_frac * plan(low, low.data.vocab_size).steps))
        cooled_here = tuple(c.train.budget_flops for c in members if c.run_id() in cooled)
        if min_steps is not None:
            budgets = tuple(sorted(set(budgets) | {
                b for b in study if b < budgets[0]
                and _steps(low, b) >= max(min_steps, 4 * warm)}))
        forks = budgets if readoff == "branches" else cooled_here
        train = dataclasses.replace(top.train, schedule="constant", readoffs=budgets, forks=forks,
                                    warmup_steps=warm, readoff=readoff)
        trunks[key] = dataclasses.replace(top, train=train)
    return list(trunks.values()) + _repeats(trunks, points, seeds)


def _steps(cfg: RunConfig, budget: float) -> int:
    """Steps of `cfg` run to `budget` (0 where the budget cannot be met within 1%)."""
    try:
        return plan(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, budget_flops=budget)),
                    cfg.data.vocab_size).steps
    except ValueError:
        return 0


def _repeats(trunks: dict[str, RunConfig], points: list[RunConfig], seeds: int) -> list[RunConfig]:
    """Per (family, knob): the trunk holding the middle budget's cooled point, with seeds 1..K-1."""
    if seeds == 1:
        return []
    budgets = sorted({c.train.budget_flops for c in points})
    mid = budgets[len(budgets) // 2]
    cooled = _cooled([c for c in points if c.train.budget_flops == mid])
    out = []
    for c in points:
        if c.run_id() in cooled:
            t = trunks[_key(c)]
            out += [dataclasses.replace(t, train=dataclasses.replace(t.train, seed=t.train.seed + s))
                    for s in range(1, seeds)]
    return out


def planned_points(runs: list[RunConfig]) -> list[Point]:
    """Every point the runs yield: a classic run's budget, a trunk's read-offs (the branch's end
    where the read-off is 'branches')."""
    out = []
    for c in runs:
        base = dict(family=c.noise.family, knob=c.noise.knob(), size=c.size, seed=c.train.seed)
        if not c.train.readoffs:
            out.append(Point(**base, budget=c.train.budget_flops, run_id=c.run_id(), trunk=c.run_id()))
            continue
        ends = {b.train.budget_flops: b.run_id() for b in branch_configs(c)}
        for b in c.train.readoffs:
            rid = ends[b] if c.train.readoff == "branches" else c.run_id()
            out.append(Point(**base, budget=b, run_id=rid, trunk=c.run_id()))
    return out


def run_flops(cfg: RunConfig) -> float:
    """Training FLOPs a run's job spends (a trunk: its own budget plus its branches' decays), in the
    run's FLOP convention."""
    p = plan(cfg, cfg.data.vocab_size)
    total = p.steps * p.flops_per_step
    for b in branch_configs(cfg):
        q = plan(b, b.data.vocab_size)
        total += decay_steps(b.train, q.steps) * q.flops_per_step
    return total
