"""The autoregressive baseline as a family: a causal mask and next-token NLL, its exact NELBO.

Scored on the same T tokens as diffusion (window[:, :T], trainer/families/base.py prepare) with no
context from the data: the model reads [EOT, x_0 .. x_{T−2}] and predicts x_0 .. x_{T−1}, so the
first token is predicted after `<|endoftext|>` alone, the context every document starts from in the
training stream. Scoring window[:, 1:] after window[0] instead would give AR one free token of
context per window: ≈ (H_unigram − H̄)/T nats/token in its favour (~0.015 at T = 128). T inputs,
T positions: the model, its seq_len and every FLOP count are those of a diffusion model on the same
windows. The sampler (trainer/sampling/samplers.py Autoregressive, start_id) and the gen-PPL judge
(trainer/sampling/quality.py judge_nll) condition on the same start token.

Registry line: trainer/families/registry.py. The interface: trainer/families/base.py."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from trainer.data.corpus import EOT_ID
from trainer.families.base import NoiseFamily, NoisyBatch
from trainer.sampling.samplers import Autoregressive as ARSampler


class Autoregressive(NoiseFamily):
    """The baseline: same backbone with a causal mask, next-token NLL (which *is* its exact NELBO)."""
    sampler = ARSampler()
    start_id = EOT_ID
    """The token every window is read after: the corpus's end-of-text id (build_family sets it from
    corpus.eot_id; callers of the sampler and judge pass the same id)."""

    def prepare(self, window, generator=None, t_power=1.0, training=True):
        x = window[:, :-1]                                           # diffusion's T tokens
        start = torch.full_like(x[:, :1], self.start_id)
        return NoisyBatch(inputs=torch.cat([start, x[:, :-1]], 1), targets=x, t=None)

    def condition(self, x, keep, t=None, t_weight=None, generator=None):
        """Exact: every position is read after the ones before it ([start, x_0 .. x_{L−2}]), so the
        scored positions' NLL is −log p(x_scored | x_kept) when the kept ones come first."""
        start = torch.full_like(x[:, :1], self.start_id)
        return NoisyBatch(inputs=torch.cat([start, x[:, :-1]], 1), targets=x, t=None,
                          loss_mask=~keep)

    def corrupt(self, x, t, generator=None):
        return x

    def marginal(self, x, t):
        return F.one_hot(x, self.V).float()

    def elbo_terms(self, log_probs, x, z, t):
        nll = -log_probs.gather(-1, x[..., None]).squeeze(-1)
        return torch.ones_like(nll), nll

    def _ce_positions(self, batch):
        return torch.ones_like(batch.targets, dtype=torch.bool)    # next-token NLL: every position
