"""Uniform-state diffusion, UDLM / Duo: π_t = uniform over the V real tokens, no mask state.

Registry line: trainer/families/registry.py. The interface and the NELBO: trainer/families/base.py."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from trainer.families.base import NoiseFamily, t_column
from trainer.families.qhat import log_qhat_stats
from trainer.sampling.samplers import PosteriorAncestral


class Uniform(NoiseFamily):
    """Uniform-state diffusion (UDLM / Duo): π = uniform over the V real tokens, no mask state."""
    normalizes = True
    sampler = PosteriorAncestral()

    def corrupt(self, x, t, generator=None):
        beta = 1.0 - t_column(self.alpha(t))
        u = torch.rand(x.shape, generator=generator, device=x.device)
        noise = torch.randint(0, self.V, x.shape, generator=generator, device=x.device)
        return torch.where(u < beta, noise, x)

    def marginal(self, x, t):
        a = self.alpha(t)[..., None]
        return a * F.one_hot(x, self.V) + (1 - a) / self.V

    def elbo_terms(self, log_probs, x, z, t):
        V = self.V
        a, da = self.alpha(t), self.dalpha(t)
        b = (1.0 - a) / V                                            # β/V, mass of each token in the prior part
        # log q̂ = log(a·x̂ + b) reduced three ways, fused with a closed-form backward (trainer/families/qhat.py)
        sum_log, lq_x, lq_z = log_qhat_stats(log_probs, a, b, x, z)
        # KL(q(·|x) ‖ q(·|x̂)) with q(·|x) = a·onehot(x) + b: closed form in three reductions.
        q_log_q = torch.special.xlogy(a + b, a + b) + (V - 1) * torch.special.xlogy(b, b)
        kl = q_log_q - a * lq_x - b * sum_log
        q_z = torch.where(z == x, a + b, b)
        log_rho = torch.log(q_z) - lq_z
        d = kl + torch.expm1(log_rho) - log_rho                      # KL + (ρ − 1 − log ρ)
        w = (-da / a) / V / q_z                                      # c_t(z) / q_t(z|x)
        return w, d
