"""The autoregressive baseline as a family: a causal mask and next-token NLL, its exact NELBO.

Registry line: trainer/families/registry.py. The interface: trainer/families/base.py."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from trainer.families.base import NoiseFamily, NoisyBatch
from trainer.sampling.samplers import Autoregressive as ARSampler


class Autoregressive(NoiseFamily):
    """The baseline: same backbone with a causal mask, next-token NLL (which *is* its exact NELBO)."""
    sampler = ARSampler()

    def prepare(self, window, generator=None, t_power=1.0):
        return NoisyBatch(inputs=window[:, :-1], targets=window[:, 1:], t=None)

    def corrupt(self, x, t, generator=None):
        return x

    def marginal(self, x, t):
        return F.one_hot(x, self.V).float()

    def elbo_terms(self, log_probs, x, z, t):
        nll = -log_probs.gather(-1, x[..., None]).squeeze(-1)
        return torch.ones_like(nll), nll

    def _ce_positions(self, batch):
        return torch.ones_like(batch.targets, dtype=torch.bool)    # next-token NLL: every position
