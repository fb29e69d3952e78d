"""GIDD hybrid noise (von Rütte et al. 2025): π_t = σ_t·uniform + (1 − σ_t)·mask.

σ_t = sigmoid(λ_t + b) at log-SNR λ_t, with the knob b = `NoiseConfig.mixing_shift` (2512.10858's
mixing shift; registry line: trainer/families/registry.py). b = ±1000 (registry.MIXING_SHIFT_END)
makes σ_t exactly 1 / 0: uniform / masked noise. The interface and the NELBO: trainer/families/base.py."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from trainer.families.base import NoiseFamily, t_column
from trainer.families.qhat import log_qhat_stats
from trainer.sampling.samplers import PosteriorAncestral


class Hybrid(NoiseFamily):
    """GIDD hybrid noise: π_t = σ_t·uniform + (1 − σ_t)·mask, σ_t = sigmoid(log-SNR + b)."""
    normalizes = True
    sampler = PosteriorAncestral()

    def __init__(self, cfg, vocab_size):
        super().__init__(cfg, vocab_size)
        self.shift = cfg.mixing_shift                 # b; uniform share at log-SNR 0: sigmoid(b)

    def sigma(self, t: Tensor) -> Tensor:
        a = self.alpha(t)
        # exact 0 / 1 at b = ∓1000: λ ∈ [logit(eps), 13.8] (t >= T_MIN), and sigmoid(x) underflows
        # to 0 below x ≈ −104 (float32; −745 float64) and rounds to 1 above x ≈ 17 (float32; 37)
        return torch.sigmoid(torch.log(a) - torch.log1p(-a) + self.shift)

    def corrupt(self, x, t, generator=None):
        beta, s = 1.0 - t_column(self.alpha(t)), t_column(self.sigma(t))
        u = torch.rand(x.shape, generator=generator, device=x.device)
        noise = torch.randint(0, self.V, x.shape, generator=generator, device=x.device)
        # u < β·σ: a uniform token; β·σ <= u < β: the mask; else keep x
        return torch.where(u < beta * s, noise, torch.where(u < beta, torch.full_like(x, self.mask_id), x))

    def marginal(self, x, t):
        a, s = self.alpha(t)[..., None], self.sigma(t)[..., None]
        real = a * F.one_hot(x, self.V) + (1 - a) * s / self.V
        return torch.cat([real, ((1 - a) * (1 - s)).expand(*x.shape, 1)], -1)

    def elbo_terms(self, log_probs, x, z, t):
        V = self.V
        a, da, s = self.alpha(t), self.dalpha(t), self.sigma(t)
        bu = (1.0 - a) * s / V                                       # prior mass of each real token
        bm = (1.0 - a) * (1.0 - s)                                   # prior mass of the mask
        is_mask = z == self.mask_id
        sum_log, lq_x, lq_real = log_qhat_stats(log_probs, a, bu, x, z.clamp_max(V - 1))
        lq_z = torch.where(is_mask, torch.log(bm).expand_as(lq_x), lq_real)
        # Σ_y q(y|x)·log q(y|x̂) = a·log q̂_x + Σ_real bu·log q̂_y + bm·log q̂_mask (q̂_mask = bm exactly)
        cross = a * lq_x + bu * sum_log + torch.special.xlogy(bm, bm)
        q_log_q = (torch.special.xlogy(a + bu, a + bu) + (V - 1) * torch.special.xlogy(bu, bu)
                   + torch.special.xlogy(bm, bm))
        kl = q_log_q - cross
        q_z = torch.where(is_mask, bm.expand_as(lq_x), torch.where(z == x, a + bu, bu))
        log_rho = torch.log(q_z) - lq_z
        d = kl + torch.expm1(log_rho) - log_rho
        rate = -da / a                                               # total jump-in rate −α'/α
        c_z = torch.where(is_mask, rate * (1 - s) * (1 + s), rate * s * s / V)
        w = torch.where(c_z > 0, c_z / q_z, torch.zeros_like(c_z))   # c = 0 where q = 0 at the ends
        return w, d
