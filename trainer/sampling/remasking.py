"""ReMDM: a remasking (corrector) sampler for masked diffusion, `MaskedRemdm` ("masked-remdm").

Wang, Schiff, Sahoo & Kuleshov 2025, "Remasking Discrete Diffusion Models with Inference-Time
Scaling" (arXiv 2503.00307; reference code github.com/kuleshov-group/remdm, diffusion.py
`_ddpm_caching_update`). MDLM's ancestral step never touches a token once it is unmasked; ReMDM's
reverse step q_σ(z_s | z_t, x) may mask it again, with probability σ_t, and compensates on the masked
positions so that the marginals q_t(z_t | x) stay MDLM's (the paper's Thm. 3.1; a model trained on
the MDLM NELBO needs no retraining). Per position, with x̂ = the model's prediction at z_t:

    z_t = x (unmasked):  z_s = mask  w.p. σ_t,          z_s = x  w.p. 1 − σ_t
    z_t = mask:          z_s ~ x̂    w.p. (α_s − (1 − σ_t) α_t) / (1 − α_t),   mask otherwise

    0 <= σ_t <= σ_t^max = min(1, (1 − α_s) / α_t)    (so that the unmasking probability is <= 1)

σ ≡ 0 is MDLM ancestral sampling exactly (samplers.MaskedAncestral: the same seed gives the same
tokens, tests/test_remasking.py). At s = 0, α_s = 1 so σ^max = 0 and every mask is filled: no mask
survives. Schedules for σ (the paper's §4.1; `SCHEDULES`):

    cap      σ_t = min(η, σ_t^max)                       (ReMDM-cap; η_cap = 0.008 in the repo's
                                                          OpenWebText script, 1024 steps)
    rescale  σ_t = η · σ_t^max                           (ReMDM-rescale)
    loop     three phases on the grid t_k = 1 − k/K: t >= t_on, MDLM steps from α_1 down to α_on
             (α linear in t); t_off <= s < t <= t_on, α held at α_on and σ = min(η, σ^max) (a
             corrector loop: tokens remasked and re-predicted at a constant mask rate); t <= t_off,
             MDLM steps from α_on up to α_0 = 1 (ReMDM-loop; the repo's scripts use t_on = 0.55,
             t_off = 0.05, α_on = 0.9, η = 0.02-0.04). A step that straddles a phase boundary is an
             MDLM step between the two α of its ends, so the marginals hold exactly everywhere.
             A time-conditioned model is given the t at which the family's α equals the loop's.

Logit caching: an unconditioned model's output depends on z_t only, so the logits are reused while
a step changes nothing; a remasked token changes z_t, so it forces a fresh forward pass as an
unmasked one does (nfe <= steps; with σ > 0 almost every step runs the model).

Randomness: one uniform u per position per step (u < unmasking probability on masked positions,
u < σ on unmasked ones), then x̂ draws for the revealed positions in MaskedAncestral's order, so the
two samplers consume the generator identically.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch

from core.ladder import takes_t
from trainer.sampling.samplers import Chunk, Sampler, _alpha, _call, _draw, start_masked

if TYPE_CHECKING:
    from trainer.families.base import NoiseFamily


@dataclass(frozen=True)
class Step:
    """One reverse step z_t -> z_s of a plan."""
    t: float        # the time the model is given (the family's t with α(t) = a_t)
    a_t: float      # α at the step's start
    a_s: float      # α at its end, a_s >= a_t
    sigma: float    # remasking probability of an unmasked token, 0 <= sigma <= sigma_max(a_t, a_s)


def sigma_max(a_t: float, a_s: float) -> float:
    """min(1, (1 − α_s) / α_t): the largest σ with an unmasking probability <= 1."""
    return 1.0 if a_t <= 0.0 else min(1.0, (1.0 - a_s) / a_t)


def _grid(family: NoiseFamily, steps: int, sigma: Callable[[float, float], float]) -> list[Step]:
    """The family's own α on t_k = 1 − k/K, σ = sigma(α_t, α_s)."""
    plan = []
    for k in range(steps):
        t, s = 1.0 - k / steps, 1.0 - (k + 1) / steps
        a_t, a_s = _alpha(family, t), _alpha(family, s)
        plan.append(Step(t, a_t, a_s, sigma(a_t, a_s)))
    return plan


def _cap(r: MaskedRemdm, family: NoiseFamily, steps: int) -> list[Step]:
    return _grid(family, steps, lambda a_t, a_s: min(r.eta, sigma_max(a_t, a_s)))


def _rescale(r: MaskedRemdm, family: NoiseFamily, steps: int) -> list[Step]:
    return _grid(family, steps, lambda a_t, a_s: r.eta * sigma_max(a_t, a_s))


def _loop(r: MaskedRemdm, family: NoiseFamily, steps: int) -> list[Step]:
    a_1, a_0 = _alpha(family, 1.0), _alpha(family, 0.0)

    def alpha(t: float) -> float:                      # piecewise linear in t, continuous
        if t >= r.t_on:
            return r.alpha_on + (a_1 - r.alpha_on) * (t - r.t_on) / (1.0 - r.t_on)
        if t <= r.t_off:
            return a_0 + (r.alpha_on - a_0) * t / r.t_off
        return r.alpha_on

    grid = [(1.0 - k / steps, 1.0 - (k + 1) / steps) for k in range(steps)]
    a = [(alpha(t), alpha(s)) for t, s in grid]
    times = _family_times(family, [a_t for a_t, _ in a])
    on = [s >= r.t_off and t <= r.t_on for t, s in grid]    # inside the constant-α phase
    return [Step(tm, a_t, a_s, min(r.eta, sigma_max(a_t, a_s)) if o else 0.0)
            for tm, (a_t, a_s), o in zip(times, a, on)]


def _family_times(family: NoiseFamily, alphas: list[float], iters: int = 60) -> list[float]:
    """The t in [0, 1] with family.alpha(t) = a for each a (α decreasing in t), by bisection on
    all of them at once: the loop's α is not the family's at the same t, and a time-conditioned
    model must see the t whose noise level it is trained on."""
    a = torch.tensor(alphas, dtype=torch.float64)
    lo, hi = torch.zeros_like(a), torch.ones_like(a)
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        above = family.alpha(mid) > a                       # α(mid) too large: t is further on
        lo, hi = torch.where(above, mid, lo), torch.where(above, hi, mid)
    return (0.5 * (lo + hi)).tolist()


SCHEDULES: dict[str, Callable[[MaskedRemdm, NoiseFamily, int], list[Step]]] = {
    "cap": _cap, "rescale": _rescale, "loop": _loop}
"""σ schedules by name (MaskedRemdm.schedule): (sampler, family, steps) -> the steps' plan."""


@dataclass(frozen=True)
class MaskedRemdm(Sampler):
    """ReMDM remasking sampler for the masked family (module docstring)."""
    name = "masked-remdm"

    schedule: str = "cap"
    """A key of SCHEDULES: 'cap', 'rescale' or 'loop'."""
    eta: float = 0.008
    """η in [0, 1]: cap and loop, the largest σ; rescale, the share of σ^max (0 = MDLM)."""
    t_on: float = 0.55
    """loop: the time (0, 1) at which the constant-α corrector phase starts."""
    t_off: float = 0.05
    """loop: the time (0, t_on) at which it ends."""
    alpha_on: float = 0.9
    """loop: α (the unmasked share) held during that phase, in (0, 1)."""

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {sorted(SCHEDULES)}, got {self.schedule!r}")
        if not 0.0 <= self.eta <= 1.0:
            raise ValueError(f"eta must be in [0, 1], got {self.eta}")
        if self.schedule == "loop" and not 0.0 < self.t_off < self.t_on < 1.0:
            raise ValueError(f"loop needs 0 < t_off < t_on < 1, got t_off={self.t_off}, "
                             f"t_on={self.t_on}")
        if self.schedule == "loop" and not 0.0 < self.alpha_on < 1.0:
            raise ValueError(f"alpha_on must be in (0, 1), got {self.alpha_on}")

    def settings(self) -> tuple[str, ...]:
        parts = (self.schedule, f"eta={self.eta:g}")
        if self.schedule == "loop":
            parts += (f"t_on={self.t_on:g}", f"t_off={self.t_off:g}", f"alpha_on={self.alpha_on:g}")
        return parts

    def plan(self, family: NoiseFamily, steps: int) -> list[Step]:
        """The K = steps reverse steps, the last ending at α = 1 (σ = 0 there)."""
        return SCHEDULES[self.schedule](self, family, steps)

    def sample(self, model, family, *, n, seq_len, steps, draw, gen, start_id, prefix=None):
        device = gen.device
        timed = takes_t(model.cfg)
        z = start_masked(family, n, seq_len, device, prefix)
        given = torch.zeros_like(z, dtype=torch.bool)
        given[:, :0 if prefix is None else prefix.shape[1]] = True           # never remasked
        probs, nfe = None, 0
        plan = self.plan(family, steps)
        for k, st in enumerate(plan):
            if probs is None or timed:                        # z changed, or the output depends on t
                probs, nfe = draw.probs(_call(model, z, st.t)), nfe + 1             # (n, T, V)
            last = k == steps - 1
            sigma = 0.0 if last else st.sigma
            p_unmask = 1.0 if last else (st.a_s - (1.0 - sigma) * st.a_t) / (1.0 - st.a_t)
            u = torch.rand(z.shape, generator=gen, device=device)                   # (n, T)
            masked = z == family.mask_id
            reveal = masked & (u < p_unmask)
            remask = ~masked & ~given & (u < sigma)
            if reveal.any():
                picked = (probs[reveal].argmax(-1) if last and draw.greedy_final
                          else _draw(probs[reveal], gen))
                z = z.masked_scatter(reveal, picked)
                probs = None                                  # stale: recompute next step
            if remask.any():
                z = z.masked_fill(remask, family.mask_id)
                probs = None
        return Chunk(z, steps, nfe)
