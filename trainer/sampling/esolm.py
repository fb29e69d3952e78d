"""Eso-LM sampling: diffusion steps, then sequential steps, all through one KV cache.

As s-sahoo/scaling-dllms algo.py EsoLM.generate_samples (predictor 'ancestral') and
models/dit.py EsoLMDiT.forward_sample do it:
- How many tokens each step reveals: on the grid t_k = 1 − k/K (K = `steps`), step t → s reveals
  Binomial(masked, (α_s − α_t)/(1 − α_t)) of the still-masked tokens, α_t = α₀(1 − (1 − ε)t)
  (`_tokens_unmasked_per_step`); steps that reveal none are skipped (no model call). Of the
  α₀ = 1 schedule's O(ε) remainder one more step reveals the rest; for α₀ < 1 the tokens still
  masked at t = 0 (a share 1 − α₀) are then revealed one per step, left to right.
- Which tokens: one random order per sequence for the diffusion tokens, then the rest in
  position order (`_get_sampler_config`).
- Every step feeds the previous step's tokens (now clean) and this step's masks in decode order;
  the model attends causally over that order (as it was trained: families/esolm.py), the clean
  tokens' keys/values enter the cache and the masks' are overwritten next step
  (Transformer.decode with `keep`). One model call per step on (revealed + to reveal) inputs, not
  T: the speed 2602.15014 measures. kv_cache=False runs the full ordered forward every step
  instead; the two draw the same tokens for one seed (tests/test_esolm.py).
Draws use the shared `Draw` (temperature, top-p, float64 CDF; greedy_final on the last step).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from core.ladder import takes_t
from trainer.model.kvcache import KVCache
from trainer.sampling.samplers import Chunk, Draw, Sampler, _draw


@dataclass(frozen=True)
class EsoLMSampler(Sampler):
    """Eso-LM's ancestral sampler (module docstring). Its settings (`--sampler-settings`):"""
    name = "esolm-ancestral"

    alpha_0: float = 1.0
    """α₀ of the sampling schedule, in [0, 1]: the share of tokens revealed by diffusion steps;
    the rest go one per step, left to right. 1 = the α₀ the presets train at (gen_ppl.sh takes
    any: scripts/esolm/gen_ppl.sh --alpha_0)."""
    kv_cache: bool = True
    """False: the full ordered forward at every step (the same draws, for checks and benches)."""

    def __post_init__(self):
        if not 0.0 <= self.alpha_0 <= 1.0:
            raise ValueError(f"alpha_0 must be in [0, 1], got {self.alpha_0}")

    def settings(self) -> tuple[str, ...]:
        return ((f"alpha_0={self.alpha_0:g}",) if self.alpha_0 != 1.0 else ()) + (
            () if self.kv_cache else ("no_kv_cache",))

    def sample(self, model, family, *, n, seq_len, steps, draw: Draw, gen, start_id, prefix=None):
        if takes_t(model.cfg):
            raise ValueError("Eso-LM samples without time conditioning (scaling-dllms "
                             "EsoLMDiT.forward_sample runs its adaLN at t = 0); got time_cond="
                             f"{model.cfg.time_cond!r}")
        P = 0 if prefix is None else prefix.shape[1]
        counts, diffused = reveal_counts(self.alpha_0, family.cfg.eps, steps, seq_len - P, gen)
        device = gen.device
        order = P + torch.rand((n, seq_len - P), generator=gen, device=device).argsort(-1)
        order[:, diffused:] = order[:, diffused:].sort(-1).values   # sequential: left to right
        slots = torch.full((n, seq_len), family.mask_id, dtype=torch.long, device=device)
        if P:                          # a prefix: clean, first in the order (slot -> pos)
            order = torch.cat([torch.arange(P, device=device).expand(n, P), order], 1)
            slots[:, :P] = prefix
        cache = (KVCache(model.cfg, n, device, next(model.parameters()).dtype, ordered=True)
                 if self.kv_cache else None)
        causal = torch.ones(seq_len, seq_len, dtype=torch.bool, device=device).tril()
        done = P
        for i, k in enumerate(counts):
            if cache is None:
                logits = model(slots, None, attend=causal.expand(n, -1, -1), pos=order)
                logits = logits[:, done:done + k]
            else:
                lo = cache.length                                  # slots revealed last step
                logits = model.decode(slots[:, lo:done + k], cache, pos=order[:, lo:done + k],
                                      keep=done - lo)[:, done - lo:]
            probs = draw.probs(logits)                             # (n, k, V)
            last = i == len(counts) - 1
            slots[:, done:done + k] = (probs.argmax(-1) if last and draw.greedy_final
                                       else _draw(probs, gen))
            done += k
        tokens = torch.empty_like(slots).scatter_(1, order, slots)  # back to position order
        return Chunk(tokens, steps, len(counts))                   # steps: the grid asked for


def reveal_counts(alpha_0: float, eps: float, steps: int, seq_len: int,
                  gen: torch.Generator) -> tuple[list[int], int]:
    """(tokens revealed per model call, how many of them by diffusion): the non-zero binomial
    diffusion counts, then (α₀ < 1) one per sequential token; the counts sum to seq_len."""
    alpha = lambda t: alpha_0 * (1.0 - (1.0 - eps) * t)          # noqa: E731
    counts, left = [], seq_len
    for k in range(steps):
        t, s = 1.0 - k / steps, 1.0 - (k + 1) / steps
        p = (alpha(s) - alpha(t)) / (1.0 - alpha(t))
        c = int((torch.rand(left, generator=gen, device=gen.device) < p).sum()) if left else 0
        if c:
            counts.append(c)
            left -= c
    if left and alpha_0 == 1.0:
        counts.append(left)                                       # the schedule's ε remainder
        left = 0
    return counts + [1] * left, seq_len - left
