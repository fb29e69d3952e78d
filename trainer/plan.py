"""`plan(config, vocab_size)`: everything a run's config implies before any process, file or MLflow
run exists: the model shape, the step count its FLOP budget buys, the evaluation steps and the
parameter counts. Torch-free (like trainer/config.py), so the orchestrator's driver validates and
orders a sweep's runs with it before Ray starts, and the trainer calls the same function.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from core.flops import (flops_for_steps, flops_per_token_by_convention, param_counts,
                        steps_for_budget)
from core.ladder import ModelConfig, model_config
from trainer.config import RunConfig, TrainConfig
from trainer.families.registry import FAMILIES
# the metric step unit, so that evaluations never share an MLflow step
from core.schema import STEP_UNIT, flop_step


@dataclass
class Plan:
    """Everything derived from the config before any process group, file or MLflow run exists."""
    cfg: RunConfig
    run_id: str
    model_cfg: ModelConfig
    steps: int
    flops_per_step: float
    eval_steps: list[int]
    n_backbone: int
    """Per-token non-embedding parameters: the N the laws are fitted on, equal for every family
    at one ladder size (core.flops.backbone_params)."""
    n_time_cond: int
    """Time-conditioning parameters (run once per sequence; never in N or a 6N-style count)."""
    n_nonembed: int
    """n_backbone + n_time_cond: everything but the embedding and head (the pre-issue-13 N)."""
    n_total: int
    flops_per_token: dict[str, float]
    """Training FLOPs per token under every convention of core.flops.CONVENTIONS (name -> FLOPs);
    the run's own, train.flop_convention, is the one its budget and step count use."""
    readoff_steps: dict[int, float] = field(default_factory=dict)
    """Trunk: step -> read-off budget (train.readoffs and, when it has any, its own budget)."""
    fork_steps: dict[int, float] = field(default_factory=dict)
    """Trunk: step -> budget of the decay branch (train.forks) whose checkpoint it keeps there."""
    fork_step: int | None = None
    """Branch: the step it starts from (steps − decay_steps), out of its trunk's forks/."""


def plan(cfg: RunConfig, vocab_size: int) -> Plan:
    """The plan of `cfg` on a corpus of `vocab_size` real tokens; ValueError naming the field
    (train.budget_flops, train.evals) when the budget cannot be met."""
    if vocab_size < 2:
        raise ValueError(f"vocab_size must be >= 2, got {vocab_size}")
    spec = FAMILIES[cfg.noise.family]
    for field, value in spec.train_requires:
        if getattr(cfg.noise, field) != value:
            raise ValueError(f"noise.{field}: the {spec.name} family trains at {field} = {value:g} "
                             f"only (got {getattr(cfg.noise, field):g}; see its line in "
                             "trainer/families/registry.py); evaluation and sampling take others")
    tc = cfg.train
    mcfg = model_config(cfg.size, vocab_size=spec.input_vocab_size(vocab_size),
                        out_vocab_size=vocab_size, seq_len=tc.seq_len, causal=spec.causal,
                        time_cond=cfg.resolved_time_cond(), cond_dim=cfg.cond_dim, mlp=cfg.mlp)
    tokens_per_step = tc.batch_size * tc.seq_len
    try:
        steps = steps_for_budget(tc.budget_flops, mcfg, tokens_per_step, tc.flop_convention)
    except ValueError as exc:
        raise ValueError(f"train.budget_flops: {exc}") from None
    per_step = flops_for_steps(1, mcfg, tokens_per_step, tc.flop_convention)
    def steps_of(budget: float) -> int:
        return steps_for_budget(budget, mcfg, tokens_per_step, tc.flop_convention)
    readoff_steps = {steps_of(b): float(b) for b in tc.readoffs}
    if readoff_steps:
        readoff_steps[steps] = float(tc.budget_flops)
    if tc.readoffs and len(readoff_steps) < len(set(tc.readoffs) | {tc.budget_flops}):
        raise ValueError(f"train.readoffs: two budgets of {tc.readoffs} fall on one step")
    fork_steps = {steps_of(b) - decay_steps(tc, steps_of(b)): float(b) for b in tc.forks}
    fixed = {0, steps} | set(readoff_steps)
    taken = {flop_step(s * per_step) for s in fixed}     # an even step next to a read-off yields
    evals = sorted(fixed | {s for s in (round(k * steps / tc.evals) for k in range(1, tc.evals))
                            if flop_step(s * per_step) not in taken})
    if len({flop_step(s * per_step) for s in evals}) < len(evals):
        raise ValueError(f"train.evals: {tc.evals} evaluations over {tc.budget_flops:.3g} FLOPs are "
                         f"closer than 1 {STEP_UNIT} (the metric step unit); use fewer")
    n = param_counts(mcfg)
    return Plan(cfg, cfg.run_id(), mcfg, steps, per_step, evals, n_backbone=n.backbone,
                n_time_cond=n.time_cond, n_nonembed=n.nonembed, n_total=n.total,
                flops_per_token=flops_per_token_by_convention(mcfg), readoff_steps=readoff_steps,
                fork_steps=fork_steps,
                fork_step=steps - decay_steps(tc, steps) if tc.trunk_id else None)


def decay_steps(tc: TrainConfig, total_steps: int) -> int:
    """Steps of a WSD run's final linear decay: decay_frac of its steps, at least one."""
    return max(1, round(tc.decay_frac * total_steps))


def branch_config(trunk: RunConfig, budget: float) -> RunConfig:
    """The decay branch of `trunk` at `budget` (one of its train.forks): the trunk's run to that
    budget under WSD, same warmup, decaying over decay_frac of its own steps; its steps before the
    decay are the trunk's (same seed, batches and noise per step), so it starts from the trunk's
    checkpoint there (plan.fork_step; out_dir/<trunk run id>/forks/)."""
    tc = trunk.train
    if budget not in tc.forks:
        raise ValueError(f"train.forks: {budget:.4g} is not a fork of run {trunk.run_id()} "
                         f"(forks: {tc.forks})")
    train = dataclasses.replace(tc, budget_flops=float(budget), schedule="wsd", readoffs=(),
                                forks=(), trunk_id=trunk.run_id())
    return dataclasses.replace(trunk, train=train)


def branch_configs(cfg: RunConfig) -> list[RunConfig]:
    """The decay branches a trunk's job trains after it, smallest budget first."""
    return [branch_config(cfg, b) for b in sorted(cfg.train.forks)]
