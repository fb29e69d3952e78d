"""Eso-LM (Sahoo et al.; 2602.15014's third family): masked diffusion that ends in sequential decoding.

Read off s-sahoo/scaling-dllms algo.py (`EsoLM`, which extends `MDLM`), trainer_base.py (`LogLinear`),
models/dit.py (`EsoLMDiT`) and configs/algo/esolm.yaml:

- A knob α₀ ∈ [0, 1] (`NoiseConfig.alpha_0`) and the schedule α_t = α₀·(1 − (1 − ε)·t) (LogLinear
  with alpha_0), so at t = 0 a token is already masked with probability 1 − α₀.
- NELBO = diffusion part + sequential part, per token:
    diffusion   MDLM's ∫_0^1 E[−α'_t/(1 − α_t) · Σ_masked −log x̂(x_l)] dt under this schedule
                (α₀ = 1: MDLM exactly; α₀ = 0: α' = 0, nothing);
    sequential  z_0 ~ q(·|x, α₀); the tokens still masked in z_0 are generated one at a time, left
                to right, each given the clean tokens of z_0 and the ones generated before it:
                Σ −log p(x_l | ...) (α₀ = 0: every token, left to right: the AR NLL; α₀ = 1: none).
  On i.i.d. tokens from p the unigram prediction gives (1 − α₀ε)·H(p) (tests/test_esolm.py).
- Attention is causal over a per-sequence order, with rotary positions the tokens' own (the
  reference sorts the sequence and gathers the rotary tables by the sort index; attending over the
  unsorted sequence with key rank <= query rank is the same function):
    diffusion   clean tokens first (shuffled), then masked ones (shuffled) — `_sort_indices`
                with diffusion_shuffle, diffusion_attn_mode 'causal';
    sequential  clean tokens first (shuffled), masked ones in left-to-right order, in a two-stream
                pass of 2T inputs [z_0, x] (models/dit.py `_sequential_features`, BD3LM's mask with
                block size 1): query z_l reads itself and the x tokens ranked before it; x tokens
                read x tokens ranked up to their own. Only z's masked positions are scored.
  Causal attention is what lets the sampler keep a KV cache (trainer/sampling/esolm.py).
- Training loss: 'ce' = 2602.15014's low_var (configs/algo/esolm.yaml loss_type: low_var), or
  'elbo'; the sequential part is unweighted cross-entropy in both. Every position counts in the
  normaliser, as for masked.

2602.15014 trains Eso-LM at α₀ = 1 (scripts/esolm/train.sh: algo.alpha_0=1.0, batch_split=1.0):
the diffusion part alone, one T-token pass per sequence, FLOPs exactly the masked family's (the
ordered causal mask changes no matmul; core/flops.py counts attention as dense for every family).
It samples at any α₀ (scripts/esolm/gen_ppl.sh --alpha_0). Training at α₀ < 1 adds the 2T-token
sequential pass per sequence, which the FLOP module does not count, so trainer/plan.py rejects it;
the loss and the NELBO here work at every α₀.

Registry line: trainer/families/registry.py. The interface: trainer/families/base.py.
"""
from __future__ import annotations

import torch
from torch import Tensor

from trainer.families.base import NoisyBatch
from trainer.families.masked import Masked
from trainer.sampling.esolm import EsoLMSampler


class EsoLM(Masked):
    """Eso-LM: MDLM on the schedule α₀·α_t with ordered causal attention, plus the sequential part.
    Like the reference's EsoLM(MDLM) it keeps masked diffusion's corruption, marginal and scored
    positions (the masked ones, in both passes: the x stream never holds a mask), all read through
    its own α_t; its samplers are its own (masked's ignore the ordered attention)."""
    sampler = EsoLMSampler()
    other_samplers = ()

    @property
    def alpha_0(self) -> float:
        return self.cfg.alpha_0

    def alpha(self, t: Tensor) -> Tensor:
        return self.alpha_0 * (1.0 - (1.0 - self.cfg.eps) * t)

    def dalpha(self, t: Tensor) -> Tensor:
        return torch.full_like(t, -self.alpha_0 * (1.0 - self.cfg.eps))

    def prepare(self, window, generator=None, t_power=1.0, training=True):
        batch = super().prepare(window, generator, t_power, training)
        masked = batch.inputs == self.mask_id
        batch.attend = ordered_attention(diffusion_ranks(masked, generator))
        if self.alpha_0 < 1.0:
            batch.seq = self.sequential_batch(batch.targets, generator, batch.loss_mask)
        return batch

    def condition(self, x, keep, t, t_weight=None, generator=None):
        """Masked's clean-context batch with Eso-LM's ordered attention (the kept tokens are clean,
        so they come first in the order) and, for α₀ < 1, the sequential pass over the scored ones."""
        batch = super().condition(x, keep, t, t_weight, generator)
        batch.attend = ordered_attention(diffusion_ranks(batch.inputs == self.mask_id, generator))
        if self.alpha_0 < 1.0:
            batch.seq = self.sequential_batch(x, generator, batch.loss_mask)
        return batch

    def sequential_batch(self, x: Tensor, generator=None, loss_mask: Tensor | None = None
                         ) -> NoisyBatch:
        """The sequential part's two-stream batch: inputs [z_0, x] (B, 2T), z_0 ~ q(·|x, α₀);
        a clean prompt (loss_mask False) stays clean and unscored here too."""
        z0 = self.corrupt(x, torch.zeros(x.shape[0], device=x.device), generator)
        if loss_mask is not None:
            z0 = torch.where(loss_mask, z0, x)
            loss_mask = torch.cat([loss_mask, torch.zeros_like(loss_mask)], 1)
        ranks = sequential_ranks(z0 == self.mask_id, generator)
        T = x.shape[1]
        pos = torch.arange(T, device=x.device).repeat(2).expand(x.shape[0], 2 * T)
        return NoisyBatch(inputs=torch.cat([z0, x], 1), targets=torch.cat([x, x], 1), t=None,
                          loss_mask=loss_mask, attend=two_stream_attention(ranks), pos=pos)

    def elbo_terms(self, log_probs, x, z, t):
        """Diffusion positions (t given): MDLM's weight −α'/(1 − α) on masked ones. Sequential
        positions (t None: the two-stream pass): weight 1 on the masked ones of z_0."""
        nll = -log_probs.gather(-1, x[..., None]).squeeze(-1)
        is_mask = z == self.mask_id
        if t is None:
            return is_mask.to(nll.dtype), nll
        a, da = self.alpha(t), self.dalpha(t)
        w = torch.where(is_mask, -da / (1.0 - a), torch.zeros_like(a))
        return w.expand_as(nll), nll



def diffusion_ranks(masked: Tensor, generator=None) -> Tensor:
    """(B, T) rank of each position in the diffusion order: clean positions first, then masked
    ones, each group in random order (algo.py EsoLM._sort_indices with shuffle)."""
    key = masked.to(torch.float32) + 0.9 * torch.rand(masked.shape, generator=generator,
                                                      device=masked.device)
    return _ranks(key)


def sequential_ranks(masked: Tensor, generator=None) -> Tensor:
    """(B, T) ranks for the sequential part: clean positions first in random order, then masked
    ones left to right (EsoLM._sort_indices with keep_masks_unshuffled)."""
    T = masked.shape[1]
    shuffled = 0.9 * torch.rand(masked.shape, generator=generator, device=masked.device)
    in_order = torch.arange(T, device=masked.device, dtype=torch.float32) / T
    return _ranks(masked.to(torch.float32) + torch.where(masked, in_order, shuffled))


def _ranks(key: Tensor) -> Tensor:
    order = key.argsort(-1)                                    # slot -> position
    return torch.empty_like(order).scatter_(-1, order, torch.arange(
        key.shape[-1], device=key.device).expand_as(order))   # position -> slot


def ordered_attention(ranks: Tensor) -> Tensor:
    """(B, T, T) bool: query i reads key j iff rank_j <= rank_i (causal over the order)."""
    return ranks[:, None, :] <= ranks[:, :, None]


def two_stream_attention(ranks: Tensor) -> Tensor:
    """(B, 2T, 2T) bool over inputs [z, x]: z_i reads itself and x_j with rank_j < rank_i; x_i
    reads x_j with rank_j <= rank_i; nothing reads z_j (j ≠ i)."""
    B, T = ranks.shape
    before = ranks[:, None, :] < ranks[:, :, None]
    eye = torch.eye(T, dtype=torch.bool, device=ranks.device).expand(B, T, T)
    top = torch.cat([eye, before], -1)
    bottom = torch.cat([torch.zeros_like(eye), before | eye], -1)
    return torch.cat([top, bottom], 1)
