"""The per-batch objective and the validation NELBO: model + noise family + token windows -> nats.

Shared by the DeepSpeed training job, the plain-PyTorch reference loop (benchmarks, tests) and the
samplers, so every path computes the same loss. Nothing here knows about engines or trackers.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from core.ladder import takes_t
from trainer.families.base import NoiseFamily, NoisyBatch

VAL_T_POWER = 2.0  # importance sampling of t for validation (t = u²): see families.base.stratified_t


def forward(model: nn.Module, batch: NoisyBatch, positions: torch.Tensor | None = None) -> torch.Tensor:
    """(B, T, V) logits, or the (n, V) rows of a (B, T) bool mask `positions`. Time-conditioned
    models get t; others ignore it."""
    conditioned = takes_t(getattr(model, "module", model).cfg)     # unwrap a DeepSpeed engine
    t = batch.model_t() if conditioned else None
    layout = batch.layout()                                       # Eso-LM's ordered attention
    if positions is None:
        return model(batch.inputs, t, **layout)
    return model(batch.inputs, t, positions, **layout)


def loss(model: nn.Module, family: NoiseFamily, batch: NoisyBatch,
         normalizer: float | None = None) -> torch.Tensor:
    """Training loss (scalar) of a prepared batch; logits only where the family scores (see
    NoiseFamily.scored_positions and .loss for `normalizer`). A batch's second pass (`seq`) adds
    its sum over the same normaliser: per token of the windows, not of the pass's inputs."""
    normalizer = family.loss_count(batch) if normalizer is None else normalizer
    parts = []
    for part in _passes(batch):
        positions = family.scored_positions(part)
        parts.append(family.loss(forward(model, part, positions), part, normalizer=normalizer,
                                 positions=positions))
    return parts[0] if len(parts) == 1 else torch.stack(parts).sum()


def _passes(batch: NoisyBatch) -> list[NoisyBatch]:
    """The batch and its second pass, if any (NoisyBatch.seq)."""
    return [batch] if batch.seq is None else [batch, batch.seq]


def batch_loss(model: nn.Module, family: NoiseFamily, window: torch.Tensor,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """Training loss (scalar) on one batch of clean windows (B, T + 1)."""
    return loss(model, family, family.prepare(window, generator))


@torch.no_grad()
def evaluate(model: nn.Module, family: NoiseFamily, windows: np.ndarray, *, seed: int = 0,
             batch_size: int = 32, t_repeats: int = 1, device: torch.device | str = "cpu",
             rank: int = 0, world: int = 1) -> float:
    """Validation NELBO in nats/token over fixed windows (N, T + 1).

    The noise (t and z_t) comes from a generator seeded with `seed` only and is drawn for whole
    batches, so every run of a study that evaluates the same windows with the same family sees
    identical t-samples and corruptions, on any number of ranks: losses differ by the models alone
    (common random numbers). `t_repeats` evaluates each window at that many independent t-draws to
    cut the Monte-Carlo error of the diffusion NELBO. With world > 1 each rank scores its share of
    every batch (all ranks run the same number of forwards, as ZeRO-3's gathers require) and the
    sums are all-reduced."""
    was_training = model.training
    model.eval()
    gen = torch.Generator(device=device).manual_seed(seed)
    x = torch.as_tensor(np.asarray(windows), dtype=torch.long, device=device)
    acc = torch.zeros(2, dtype=torch.float64)                    # (sum of NELBO, token count)
    for _ in range(t_repeats):
        for i in range(0, x.shape[0], batch_size):
            full = family.prepare(x[i:i + batch_size], gen, t_power=VAL_T_POWER, training=False)
            batch = _rows(full, rank, world)
            total = 0.0
            for part in _passes(batch):                              # Eso-LM: + sequential part
                positions = family.scored_positions(part)            # the rest contribute 0
                total += family.nelbo(forward(model, part, positions), part, positions
                                      ).double().sum().item()
            acc += torch.tensor([total, batch.targets.numel()], dtype=torch.float64)
    if world > 1:
        torch.distributed.all_reduce(acc)
    model.train(was_training)
    return (acc[0] / acc[1]).item()


def _rows(batch: NoisyBatch, rank: int, world: int) -> NoisyBatch:
    """This rank's contiguous share of a global batch."""
    if world == 1:
        return batch
    return batch.rows(torch.arange(batch.targets.shape[0]).tensor_split(world)[rank])
