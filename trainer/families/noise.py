"""Noise families: forward corruption, per-token NELBO and training loss, one class each.

Every diffusion family here is an *interpolating* process (GIDD, von Rütte et al. 2025, eq. 1):

    q_t(z | x) = α_t · onehot(x) + β_t · π_t,      β_t = 1 − α_t,   t ∈ [0, 1]

with the log-linear schedule α_t = 1 − (1 − ε)·t (MDLM, Sahoo et al. 2024), so α_1 = ε. The families
differ only in the prior π_t over the state space (V real tokens, plus one mask state at index V):

    masked         π_t = mask                                   (absorbing state, MDLM)
    uniform        π_t = uniform over the V real tokens         (UDLM / Duo)
    interpolating  π_t = σ_t · uniform + (1 − σ_t) · mask,  σ_t = sigmoid(λ_t + b),  b = logit(p_u)

where λ_t = log(α_t / β_t) is the log-SNR and b the log-SNR mixing shift swept in 2512.10858;
p_u = `uniform_share` is the uniform fraction of the noise at λ = 0. p_u = 0 gives masked, p_u = 1
gives uniform exactly, and in between uniform noise dominates at low noise and the prior at t = 1 is
(almost) all mask, as in GIDD's hybrid noise.

The continuous-time NELBO (GIDD Thm. 3.6; the CTMC path-KL of Campbell et al. 2022 written out) is

    NELBO(x) = ∫_0^1 E_{z_t ~ q_t(·|x)} [ w_t(z_t, x) · ( KL(q_t(·|x) ‖ q_t(·|x̂)) + ρ − 1 − log ρ ) ] dt

with x̂ = x̂_θ(z_t, t) the model's distribution over real tokens, ρ = q_t(z_t|x) / q_t(z_t|x̂), and
w_t(z, x) = c_t(z) / q_t(z|x), where c_t(z) is the rate at which the forward chain jumps *into* z:
c_t(z) = −(α'_t/α_t)·π_t(z) + β_t·π'_t(z). For the hybrid prior this is c_t(real) = (−α'/α)·σ²/V and
c_t(mask) = (−α'/α)·(1 − σ)(1 + σ) (both ≥ 0, summing to −α'/α). For masked noise everything
collapses to MDLM's −α'_t/(1 − α_t) · (−log x̂_θ(x)) on masked positions (= 1/t for this schedule).

The posterior q(z_s | z_t, x̂) is built from the prediction x̂ (the mean parameterisation), so a
predictor that outputs the data distribution makes the reverse process exact: on i.i.d. tokens from p
the unigram predictor x̂ = p gives NELBO = H(p) (tests/test_noise.py checks this on a t-grid).

Conventions: x, z are LongTensors (B, T) [or any shape]; log_probs (..., V) are log x̂ over the V real
tokens (the mask is never predicted); t is (B,) broadcast over positions. All losses are in nats.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from trainer.families.qhat import log_qhat_stats

T_MIN = 1e-6  # t is clamped away from 0: the masked weight 1/t would overflow there


@dataclass(frozen=True, kw_only=True)
class NoiseConfig:
    family: str = "masked"
    """Registered family name: masked | uniform | interpolating | autoregressive."""
    eps: float = 1e-3
    """Schedule floor: α_1 = eps (log-linear α_t = 1 − (1 − eps)·t). Bias of the NELBO is O(eps)."""
    uniform_share: float = 0.5
    """Interpolating knob p_u ∈ [0, 1]: uniform share of the noise at log-SNR 0 (0 = masked, 1 = uniform)."""
    train_loss: str = "auto"
    """'elbo' (the NELBO itself), 'ce' (plain cross-entropy on corrupted positions; masked only), or
    'auto' = the family's default (masked: 'ce', the cheaper loss of 2602.15014; others: 'elbo')."""
    weight_clip: float | None = None
    """Clip the ELBO weight w_t(z, x) at this value in the *training* loss (GIDD); never in the NELBO."""

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"noise.family: unknown family {self.family!r}; known: {sorted(FAMILIES)}")
        if not 0.0 < self.eps < 0.5:
            raise ValueError(f"noise.eps must be in (0, 0.5), got {self.eps}")
        if not 0.0 <= self.uniform_share <= 1.0:
            raise ValueError(f"noise.uniform_share must be in [0, 1], got {self.uniform_share}")
        allowed = FAMILIES[self.family].train_losses
        if self.train_loss != "auto" and self.train_loss not in allowed:
            raise ValueError(
                f"noise.train_loss={self.train_loss!r} is not supported by family {self.family!r} "
                f"(supported: {allowed}); cross-entropy of x given z_t double-counts z_t under the "
                "uniform/interpolating parameterisation (see STACK.md)")
        if self.weight_clip is not None and self.weight_clip <= 0:
            raise ValueError(f"noise.weight_clip must be > 0 or None, got {self.weight_clip}")

    def resolved_train_loss(self) -> str:
        return FAMILIES[self.family].default_train_loss if self.train_loss == "auto" else self.train_loss


@dataclass
class NoisyBatch:
    """What the model sees and what it is scored against."""
    inputs: Tensor                  # (B, T) model input ids (z_t, or the AR prefix)
    targets: Tensor                 # (B, T) clean ids x
    t: Tensor | None                # (B,) diffusion time, None for autoregressive
    t_weight: Tensor | None = None  # (B,) importance weight dt/du of t (None = 1)

    def select(self, positions: Tensor) -> "NoisyBatch":
        """The positions of a (B, T) bool mask as a flat batch: inputs, targets, t and t_weight all
        (n,), t and t_weight repeated per position (what the model's `positions` logits score)."""
        per_pos = lambda v: None if v is None else v[:, None].expand(positions.shape)[positions]  # noqa: E731
        return NoisyBatch(self.inputs[positions], self.targets[positions], per_pos(self.t),
                          per_pos(self.t_weight))

    def per_position(self, v: Tensor) -> Tensor:
        """A per-sequence (B,) value broadcastable against targets; flat batches hold it per position."""
        return v if v.dim() == self.targets.dim() else v[:, None]


def stratified_t(n: int, generator: torch.Generator | None = None, device=None,
                 power: float = 1.0) -> tuple[Tensor, Tensor]:
    """Low-discrepancy t with optional importance sampling: u_i = (i + u)/n with one uniform offset u
    (MDLM's antithetic sampling: unbiased for ∫_0^1 dt, far lower variance than i.i.d. t), then
    t = u^power with weight dt/du = power·u^(power−1), so E[w(t)·f(t)] = ∫_0^1 f(t) dt for any power.

    Why power > 1 for validation: near t = 0 the NELBO integrand is a rare event (a corrupted
    position, probability ~t) with a large value (weight ~1/t), so its second moment ∫ f²/p dt diverges
    logarithmically under uniform t and finite samples under-estimate the NELBO (STACK.md saw −3%
    for uniform noise). t = u² has density ∝ t^(−1/2), which makes that second moment finite."""
    u = torch.rand((), generator=generator, device=device)
    u = ((torch.arange(n, device=device, dtype=torch.float32) + u) / n).clamp_min(T_MIN)
    return u.pow(power), power * u.pow(power - 1.0)


class NoiseFamily(ABC):
    """One noise family. Subclasses set the class attributes and implement the abstract methods."""
    name: ClassVar[str]
    causal: ClassVar[bool] = False               # model attention mask
    uses_mask_token: ClassVar[bool] = False      # input vocabulary = V + 1 (mask id = V)
    time_cond_default: ClassVar[bool] = False    # adaLN conditioning on t unless overridden
    normalizes: ClassVar[bool] = False   # elbo_terms accepts raw logits (softmax inside, qhat.py)
    train_losses: ClassVar[tuple[str, ...]] = ("elbo",)
    default_train_loss: ClassVar[str] = "elbo"

    def __init__(self, cfg: NoiseConfig, vocab_size: int):
        if vocab_size < 2:
            raise ValueError(f"vocab_size must be >= 2, got {vocab_size}")
        self.cfg = cfg
        self.V = vocab_size            # real tokens; the model predicts these only
        self.mask_id = vocab_size      # only meaningful if uses_mask_token

    @property
    def input_vocab_size(self) -> int:
        return self.V + 1 if self.uses_mask_token else self.V

    # --- schedule (log-linear; shared) -------------------------------------------------------------
    def alpha(self, t: Tensor) -> Tensor:
        return 1.0 - (1.0 - self.cfg.eps) * t

    def dalpha(self, t: Tensor) -> Tensor:
        return torch.full_like(t, -(1.0 - self.cfg.eps))

    # --- interface ---------------------------------------------------------------------------------
    def prepare(self, window: Tensor, generator=None, t_power: float = 1.0) -> NoisyBatch:
        """window: (B, T + 1) clean tokens; diffusion uses the first T. One stratified t per
        sequence; t_power > 1 importance-samples small t (see `stratified_t`; used for validation)."""
        x = window[:, :-1]
        t, t_weight = stratified_t(x.shape[0], generator, x.device, t_power)
        return NoisyBatch(inputs=self.corrupt(x, t, generator), targets=x, t=t,
                          t_weight=None if t_power == 1.0 else t_weight)

    @abstractmethod
    def corrupt(self, x: Tensor, t: Tensor, generator=None) -> Tensor:
        """Sample z_t ~ q_t(·|x) independently per position. x (B, T), t (B,) -> z (B, T)."""

    @abstractmethod
    def marginal(self, x: Tensor, t: Tensor) -> Tensor:
        """q_t(·|x) over the input states: x (...), t broadcastable to x -> (..., input_vocab_size).
        Dense; for tests and samplers, not for the training hot path."""

    @abstractmethod
    def elbo_terms(self, log_probs: Tensor, x: Tensor, z: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """(w, d) with NELBO integrand = w · d per position: w the ELBO weight, d the divergence."""

    def nelbo_from_logprobs(self, log_probs: Tensor, x: Tensor, z: Tensor, t: Tensor) -> Tensor:
        """Per-position NELBO integrand (nats); its mean over t ~ U(0,1), z_t ~ q_t is the NELBO/token."""
        w, d = self.elbo_terms(log_probs, x, z, t)
        return w * d

    def scores(self, logits: Tensor) -> Tensor:
        """What elbo_terms reads: log-probabilities, or the logits themselves for families whose
        terms normalise internally (`normalizes`: their softmax treats both alike)."""
        return logits.float() if self.normalizes else F.log_softmax(logits.float(), -1)

    def scored_positions(self, batch: NoisyBatch) -> Tensor | None:
        """(B, T) bool mask of the positions whose NELBO integrand and training loss can be
        non-zero, or None for all of them. The model computes logits only there (the output head
        dominates small models); every loss and NELBO is unchanged, and FLOP accounting still
        counts the head at every position (core/flops.py, the papers' convention)."""
        return None

    def nelbo(self, logits: Tensor, batch: NoisyBatch, positions: Tensor | None = None) -> Tensor:
        """(B, T) per-token NELBO estimates for one draw of (t, z_t); their mean is unbiased. With
        `positions`, logits are the (n, V) rows of those positions and the result is their (n,)
        values: the other positions contribute exactly 0 (see `scored_positions`)."""
        batch = batch if positions is None else batch.select(positions)
        out = self.nelbo_from_logprobs(self.scores(logits), batch.targets, batch.inputs,
                                       self._t(batch))
        return out if batch.t_weight is None else out * batch.per_position(batch.t_weight)

    def loss(self, logits: Tensor, batch: NoisyBatch, kind: str | None = None,
             normalizer: float | None = None, positions: Tensor | None = None) -> Tensor:
        """Scalar training loss of the given kind (default: the config's resolved kind): a sum over
        this batch's loss positions divided by `normalizer` (default: their count here). Data-
        parallel ranks pass the *global* batch's count / world size, so that the average DeepSpeed
        takes over ranks is exactly the single-process loss of the global batch. With `positions`
        (a superset of the loss positions, e.g. `scored_positions`), logits are their (n, V) rows."""
        kind = kind or self.cfg.resolved_train_loss()
        count = self.loss_count(batch, kind) if normalizer is None else normalizer   # full batch
        batch = batch if positions is None else batch.select(positions)
        scores = F.log_softmax(logits.float(), -1) if kind == "ce" else self.scores(logits)
        return self._loss_sum(scores, batch, kind) / count

    def loss_count(self, batch: NoisyBatch, kind: str | None = None) -> int:
        """Number of positions the loss averages over: all of them, or the corrupted ones for 'ce'."""
        kind = kind or self.cfg.resolved_train_loss()
        if kind == "ce":
            return max(1, int(self._ce_positions(batch).sum()))
        return batch.targets.numel()

    def _loss_sum(self, log_probs: Tensor, batch: NoisyBatch, kind: str) -> Tensor:
        if kind == "ce":
            nll = -log_probs.gather(-1, batch.targets[..., None]).squeeze(-1)
            return (nll * self._ce_positions(batch)).sum()
        w, d = self.elbo_terms(log_probs, batch.targets, batch.inputs, self._t(batch))
        if self.cfg.weight_clip is not None:
            w = w.clamp_max(self.cfg.weight_clip)
        if batch.t_weight is not None:
            w = w * batch.per_position(batch.t_weight)
        return (w * d).sum()

    @staticmethod
    def _t(batch: NoisyBatch) -> Tensor | None:
        return None if batch.t is None else batch.per_position(batch.t)

    def _ce_positions(self, batch: NoisyBatch) -> Tensor:
        raise ValueError(f"family {self.name!r} has no cross-entropy training loss")


class Masked(NoiseFamily):
    """Absorbing-state diffusion (MDLM). Weight −α'/(1 − α) = 1/t on masked positions."""
    name = "masked"
    uses_mask_token = True
    time_cond_default = False       # MDLM: time conditioning unnecessary for masked diffusion
    train_losses = ("elbo", "ce")
    default_train_loss = "ce"

    def corrupt(self, x, t, generator=None):
        beta = 1.0 - self.alpha(t)[:, None]                          # (B, 1)
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


class Uniform(NoiseFamily):
    """Uniform-state diffusion (UDLM / Duo): π = uniform over the V real tokens, no mask state."""
    name = "uniform"
    time_cond_default = True
    normalizes = True

    def corrupt(self, x, t, generator=None):
        beta = 1.0 - self.alpha(t)[:, None]
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


class Interpolating(NoiseFamily):
    """GIDD hybrid noise: π_t = σ_t·uniform + (1 − σ_t)·mask, σ_t = sigmoid(log-SNR + logit(p_u))."""
    name = "interpolating"
    uses_mask_token = True
    time_cond_default = True
    normalizes = True

    def __init__(self, cfg, vocab_size):
        super().__init__(cfg, vocab_size)
        p = cfg.uniform_share
        self.shift = -math.inf if p == 0 else math.inf if p == 1 else math.log(p / (1 - p))

    def sigma(self, t: Tensor) -> Tensor:
        a = self.alpha(t)
        return torch.sigmoid(torch.log(a) - torch.log1p(-a) + self.shift)   # exact 0 / 1 at the ends

    def corrupt(self, x, t, generator=None):
        beta, s = 1.0 - self.alpha(t)[:, None], self.sigma(t)[:, None]
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


class Autoregressive(NoiseFamily):
    """The baseline: same backbone with a causal mask, next-token NLL (which *is* its exact NELBO)."""
    name = "autoregressive"
    causal = True
    train_losses = ("elbo", "ce")

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


FAMILIES: dict[str, type[NoiseFamily]] = {
    cls.name: cls for cls in (Masked, Uniform, Interpolating, Autoregressive)
}


def build_family(cfg: NoiseConfig, vocab_size: int) -> NoiseFamily:
    return FAMILIES[cfg.family](cfg, vocab_size)
