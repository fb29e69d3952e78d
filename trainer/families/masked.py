"""Masked (absorbing-state) diffusion, MDLM (Sahoo et al. 2024): π_t = the mask state.

Registry line: trainer/families/registry.py. The interface and the NELBO: trainer/families/base.py."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from trainer.families.base import NoiseFamily, t_column
from trainer.sampling.remasking import MaskedRemdm
from trainer.sampling.samplers import MaskedAncestral


class Masked(NoiseFamily):
    """Absorbing-state diffusion (MDLM). Weight −α'/(1 − α) = 1/t on masked positions."""
    sampler = MaskedAncestral()
    other_samplers = (MaskedRemdm(),)                                 # ReMDM remasking

    def corrupt(self, x, t, generator=None):
        beta = 1.0 - t_column(self.alpha(t))                          # (B, 1)
        u = torch.rand(x.shape, generator=generator, device=x.device)
        return torch.where(u < beta, torch.full_like(x, self.mask_id), x)

    def marginal(self, x, t):
        a = self.alpha(t)[..., None]
        return torch.cat([a * F.one_hot(x, self.V), (1 - a).expand(*x.shape, 1)], -1)

    def elbo_terms(self, log_probs, x, z, t):
        a, da = self.alpha(t), self.dalpha(t)
        w = torch.where(z == self.mask_id, -da / (1.0 - a), torch.zeros_like(a))
        nll = -log_probs.gather(-1, x[..., None]).squeeze(-1)
        return w.expand_as(nll), nll

    def scored_positions(self, batch):
        # ELBO weight and cross-entropy are both zero wherever z_t = x (unmasked)
        return batch.inputs == self.mask_id

    # 2602.15014: unweighted cross-entropy on the corrupted (masked) positions only.
    _ce_positions = scored_positions
