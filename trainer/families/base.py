"""The noise-family interface: forward corruption, per-token NELBO and training loss.

One subclass of `NoiseFamily` per family, each in its own file (masked.py, uniform.py,
hybrid.py, autoregressive.py), each registered by one line in registry.py, which holds its
torch-free facts (`FamilySpec`: attention mask, mask token, time-conditioning default, losses,
knob). The class holds the mechanics and declares its sampler (trainer/sampling/samplers.py).

Every diffusion family here is an *interpolating* process (GIDD, von Rütte et al. 2025, eq. 1):

    q_t(z | x) = α_t · onehot(x) + β_t · π_t,      β_t = 1 − α_t,   t ∈ [0, 1]

with the log-linear schedule α_t = 1 − (1 − ε)·t (MDLM, Sahoo et al. 2024), so α_1 = ε. The families
differ only in the prior π_t over the state space (V real tokens, plus one mask state at index V):

    masked         π_t = mask                                   (absorbing state, MDLM)
    uniform        π_t = uniform over the V real tokens         (UDLM / Duo)
    hybrid         π_t = σ_t · uniform + (1 − σ_t) · mask,  σ_t = sigmoid(λ_t + b)

where λ_t = log(α_t / β_t) is the log-SNR and b = `mixing_shift` the log-SNR mixing shift swept in
2512.10858; p_u = sigmoid(b) (`NoiseConfig.uniform_share()`) is the uniform fraction of the noise at
λ = 0. b = −1000 gives masked, b = 1000 gives uniform exactly, and in between uniform noise
dominates at low noise and the prior at t = 1 is (almost) all mask, as in GIDD's hybrid noise.

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
tokens (the mask is never predicted); t is (B,) broadcast over positions, or (B, T) per token
(NoiseConfig.p_independent). All losses are in nats.
"""
from __future__ import annotations

import dataclasses
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from trainer.families.registry import FAMILIES, GIDD_WEIGHT_CLIP, FamilySpec

if TYPE_CHECKING:
    from trainer.families.registry import NoiseConfig
    from trainer.sampling.samplers import Sampler

T_MIN = 1e-6  # t is clamped away from 0: the masked weight 1/t would overflow there


@dataclass
class NoisyBatch:
    """What the model sees and what it is scored against."""
    inputs: Tensor                  # (B, T) model input ids (z_t, or the AR prefix)
    targets: Tensor                 # (B, T) clean ids x
    t: Tensor | None                # (B,) diffusion time, or (B, T) per token; None for autoregressive
    t_weight: Tensor | None = None  # (B,) importance weight dt/du of t (None = 1)
    loss_mask: Tensor | None = None  # (B, T) bool: positions in the training loss (None = all)
    attend: Tensor | None = None    # (B, T, T) bool attention pattern (None = the model's own)
    pos: Tensor | None = None       # (B, T) rotary positions of the inputs (None = 0..T−1)
    seq: "NoisyBatch | None" = None  # a second pass over the same windows, summed into the
    # loss and the NELBO (Eso-LM's sequential part, families/esolm.py); its rows are this batch's

    def select(self, positions: Tensor) -> "NoisyBatch":
        """The positions of a (B, T) bool mask as a flat batch: every field (n,), per-sequence
        values repeated per position (what the model's `positions` logits score). The forward's
        own fields (attend, pos, seq) are not carried."""
        def per_pos(v):
            return None if v is None else self.per_position(v).expand(positions.shape)[positions]
        return NoisyBatch(self.inputs[positions], self.targets[positions], per_pos(self.t),
                          per_pos(self.t_weight), per_pos(self.loss_mask))

    def rows(self, index) -> "NoisyBatch":
        """The sequences `index` (a slice or index tensor) of a (B, ...) batch: a rank's share."""
        def pick(v):
            return None if v is None else v.rows(index) if isinstance(v, NoisyBatch) else v[index]
        return NoisyBatch(*(pick(getattr(self, f.name)) for f in dataclasses.fields(self)))

    def layout(self) -> dict:
        """The model's keyword arguments for this batch's attention pattern and positions."""
        return {k: v for k, v in (("attend", self.attend), ("pos", self.pos)) if v is not None}

    def per_position(self, v: Tensor) -> Tensor:
        """A per-sequence (B,) value broadcastable against targets; flat batches hold it per position."""
        return v if v.dim() == self.targets.dim() else v[:, None]

    def model_t(self) -> Tensor | None:
        """(B,) time for a time-conditioned model: t itself, or the sequence mean of per-token t
        (as scaling-dllms trainer_base.py Diffusion._process_sigma averages σ over positions)."""
        return self.t if self.t is None or self.t.dim() == 1 else self.t.mean(1)


def stratified_t(n: int, generator: torch.Generator | None = None, device=None,
                 power: float = 1.0, t_min: float = 0.0) -> tuple[Tensor, Tensor]:
    """Low-discrepancy t with optional importance sampling: u_i = (i + u)/n with one uniform offset u
    (MDLM's antithetic sampling: unbiased for ∫_0^1 dt, far lower variance than i.i.d. t), then
    t = u^power with weight dt/du = power·u^(power−1), so E[w(t)·f(t)] = ∫_0^1 f(t) dt for any power.
    t_min > 0 maps u to t_min + (1 − t_min)·u first: a training floor (NoiseConfig.t_min), whose
    estimate is of ∫_{t_min}^1 f dt / (1 − t_min), not of the NELBO.

    Why power > 1 for validation: near t = 0 the NELBO integrand is a rare event (a corrupted
    position, probability ~t) with a large value (weight ~1/t), so its second moment ∫ f²/p dt diverges
    logarithmically under uniform t and finite samples under-estimate the NELBO (STACK.md saw −3%
    for uniform noise). t = u² has density ∝ t^(−1/2), which makes that second moment finite."""
    u = torch.rand((), generator=generator, device=device)
    u = (torch.arange(n, device=device, dtype=torch.float32) + u) / n
    if t_min > 0:
        u = t_min + (1.0 - t_min) * u
    u = u.clamp_min(T_MIN)
    return u.pow(power), power * u.pow(power - 1.0)


def t_column(v: Tensor) -> Tensor:
    """A (B,) per-sequence value as a (B, 1) column; a (B, T) per-token one as it is."""
    return v[:, None] if v.dim() == 1 else v


class NoiseFamily(ABC):
    """One noise family. Subclasses implement the abstract methods, may set `normalizes`, and
    declare their `sampler` (and any `other_samplers`); the family's facts (name, causal, mask token, ...) are its registry
    line's (`spec`), chosen by `cfg.family` (registry.build_family)."""
    normalizes: ClassVar[bool] = False   # elbo_terms accepts raw logits (softmax inside, qhat.py)
    sampler: ClassVar[Sampler]           # how to draw sequences from a model of this family
    other_samplers: ClassVar[tuple[Sampler, ...]] = ()   # more ways, chosen by name

    def __init__(self, cfg: NoiseConfig, vocab_size: int):
        if vocab_size < 2:
            raise ValueError(f"vocab_size must be >= 2, got {vocab_size}")
        self.spec: FamilySpec = FAMILIES[cfg.family]
        if type(self) is not self.spec.load():
            raise ValueError(f"noise.family {cfg.family!r} is implemented by {self.spec.impl}, "
                             f"not {type(self).__module__}:{type(self).__qualname__}")
        self.cfg = cfg
        self.V = vocab_size            # real tokens; the model predicts these only
        self.mask_id = vocab_size      # only meaningful if uses_mask_token

    # --- the registry line's facts ------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def causal(self) -> bool:
        return self.spec.causal

    @property
    def uses_mask_token(self) -> bool:
        return self.spec.uses_mask_token

    @property
    def time_cond_default(self) -> str:
        return self.spec.time_cond_default

    @property
    def input_vocab_size(self) -> int:
        return self.spec.input_vocab_size(self.V)

    # --- schedule (log-linear; shared) -------------------------------------------------------------
    def alpha(self, t: Tensor) -> Tensor:
        return 1.0 - (1.0 - self.cfg.eps) * t

    def dalpha(self, t: Tensor) -> Tensor:
        return torch.full_like(t, -(1.0 - self.cfg.eps))

    # --- samplers ----------------------------------------------------------------------------------
    @classmethod
    def samplers(cls) -> dict[str, Sampler]:
        """Every sampler of the family by name, the default (`sampler`) first."""
        return {s.name: s for s in (cls.sampler, *cls.other_samplers)}

    @classmethod
    def pick_sampler(cls, name: str | None = None,
                     settings: Mapping[str, object] | None = None) -> Sampler:
        """The sampler called `name` (None: the default) with `settings` replacing its defaults
        (a sampler's settings are its dataclass fields; a string value is converted to the field's
        type, so CLI text passes as it is). ValueError naming an unknown sampler or setting and
        the known ones, or a bad value."""
        known = cls.samplers()
        chosen = cls.sampler if name is None else known.get(name)
        if chosen is None:
            raise ValueError(f"no sampler {name!r}; this family's samplers: {', '.join(known)}")
        if not settings:
            return chosen
        fields = ([f.name for f in dataclasses.fields(chosen)]
                  if dataclasses.is_dataclass(chosen) else [])
        typed = {}
        for key, value in settings.items():
            if key not in fields:
                raise ValueError(f"sampler {chosen.name!r} has no setting {key!r}; its settings: "
                                 f"{', '.join(fields) or 'none'}")
            kind = type(getattr(chosen, key))
            try:
                typed[key] = (_text_bool(value) if kind is bool and isinstance(value, str)
                              else kind(value) if isinstance(value, str) else value)
            except ValueError:
                raise ValueError(f"sampler {chosen.name!r} setting {key}={value!r} is not a "
                                 f"{kind.__name__}") from None
        return dataclasses.replace(chosen, **typed)

    # --- interface ---------------------------------------------------------------------------------
    def prepare(self, window: Tensor, generator=None, t_power: float = 1.0,
                training: bool = True) -> NoisyBatch:
        """window: (B, T + 1) clean tokens; diffusion uses the first T. One stratified t per
        sequence; t_power > 1 importance-samples small t (see `stratified_t`; used for validation).
        training=True applies the config's training options (t_min, p_independent, p_prompt);
        validation passes False: the exact NELBO over all of t ∈ [0, 1], every position scored."""
        x = window[:, :-1]
        cfg = self.cfg
        t_min = cfg.t_min if training else 0.0
        t, t_weight = stratified_t(x.shape[0], generator, x.device, t_power, t_min)
        if training and cfg.p_independent > 0:
            t = _independent_t(t, x.shape, cfg.p_independent, t_min, generator)
        z = self.corrupt(x, t, generator)
        loss_mask = None
        if training and cfg.p_prompt > 0:
            loss_mask = _prompt_free(x.shape, cfg.p_prompt, generator, x.device)
            z = torch.where(loss_mask, z, x)                         # the prompt stays clean
        return NoisyBatch(inputs=z, targets=x, t=t, t_weight=None if t_power == 1.0 else t_weight,
                          loss_mask=loss_mask)

    def condition(self, x: Tensor, keep: Tensor, t: Tensor, t_weight: Tensor | None = None,
                  generator=None) -> NoisyBatch:
        """A batch that scores the positions of x (B, L) outside `keep` (B, L) bool given those in
        it, held clean (a downstream task's context, trainer/evaluation/score.py): z_t ~ q_t(·|x)
        at time t (B,) on the scored positions, x on the kept ones, loss_mask = ~keep. The NELBO
        summed over the scored positions bounds −log p(x_scored | x_kept): the forward process
        factorises over positions, so the kept ones are a clean condition (gidd-easydel's clean
        prompt, `_prompt_free`, is the same construction with a random prompt)."""
        z = torch.where(keep, x, self.corrupt(x, t, generator))
        return NoisyBatch(inputs=z, targets=x, t=t, t_weight=t_weight, loss_mask=~keep)

    @abstractmethod
    def corrupt(self, x: Tensor, t: Tensor, generator=None) -> Tensor:
        """Sample z_t ~ q_t(·|x) independently per position. x (B, T), t (B,) or (B, T) -> z (B, T)."""

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
        this batch's positions divided by `normalizer` (default: `loss_count`, its loss positions:
        all of them, less a clean prompt's). Data-parallel ranks pass the *global* batch's count /
        world size, so that the average DeepSpeed takes over ranks is exactly the single-process
        loss of the global batch. With `positions` (a superset of the positions where the loss can
        be non-zero, e.g. `scored_positions`), logits are their (n, V) rows.

        'ce' divides by all loss positions, not by the corrupted ones it sums over: 2602.15014's
        low_var (scaling-dllms trainer_base.py TrainerBase._loss: `nlls.sum() / valid_tokens.sum()`
        with MDLM's per-token loss 0 on unmasked positions), ~ the masked share (mean 1/2) of the
        masked-count mean, and so of the gradient that meets the clip."""
        kind = kind or self.cfg.resolved_train_loss()
        count = self.loss_count(batch) if normalizer is None else normalizer   # full batch
        batch = batch if positions is None else batch.select(positions)
        scores = F.log_softmax(logits.float(), -1) if kind == "ce" else self.scores(logits)
        return self._loss_sum(scores, batch, kind) / count

    def loss_count(self, batch: NoisyBatch, kind: str | None = None) -> int:
        """Number of positions the loss averages over: all of them, less a clean prompt's
        (gidd-easydel _fn.py compute_loss: `loss.sum() / noise_mask.sum()`). The same for every
        kind (`kind` is accepted for callers that name it)."""
        if batch.loss_mask is None:
            return batch.targets.numel()
        return max(1, int(batch.loss_mask.sum()))

    def _loss_sum(self, log_probs: Tensor, batch: NoisyBatch, kind: str) -> Tensor:
        if kind == "ce":
            nll = -log_probs.gather(-1, batch.targets[..., None]).squeeze(-1)
            per_pos = nll * self._ce_positions(batch)
        else:
            t = self._t(batch)
            w, d = self.elbo_terms(log_probs, batch.targets, batch.inputs, t)
            if kind == "gidd":
                w = w * self.gidd_factor(t)
            clip = self.cfg.weight_clip
            if clip is None and kind == "gidd":
                clip = GIDD_WEIGHT_CLIP
            if clip is not None:
                w = w.clamp_max(clip)
            if batch.t_weight is not None:
                w = w * batch.per_position(batch.t_weight)
            per_pos = w * d
        if batch.loss_mask is not None:
            per_pos = per_pos * batch.loss_mask
        return per_pos.sum()

    def gidd_factor(self, t: Tensor) -> Tensor:
        """α_t(1 − α_t)/|α'_t| = |dt/dλ|, λ = log(α/(1 − α)) the log-SNR: the ELBO weight per unit t
        times this is gidd-easydel's per-unit-log-SNR `loss_weights` (schedule.py:
        `elbo_weights = loss_weights / p_log_snr`, p_log_snr = σ(λ)(1 − σ(λ)) = α(1 − α) with
        their α = 1 − t, |α'| = 1). For uniform noise the weight is (1/V)/(1/V + e^λ·[z = x]) <= 1,
        for hybrid <= 1 + σ, for masked α (against MDLM's 1/t): bounded where the ELBO's ~1/t is
        not."""
        a = self.alpha(t)
        return a * (1.0 - a) / self.dalpha(t).abs()

    @staticmethod
    def _t(batch: NoisyBatch) -> Tensor | None:
        return None if batch.t is None else batch.per_position(batch.t)

    def _ce_positions(self, batch: NoisyBatch) -> Tensor:
        raise ValueError(f"family {self.name!r} has no cross-entropy training loss")


def _text_bool(text: str) -> bool:
    """A sampler setting's bool from CLI text (bool("false") would be True)."""
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError(text)


def _independent_t(t: Tensor, shape: torch.Size, share: float, t_min: float, generator) -> Tensor:
    """(B, T) t: each sequence's own t, except a `share` of sequences drawn i.i.d. per token
    (uniform on [t_min, 1]; gidd-easydel DiffusionTrainer._sample_log_snr)."""
    B, T = shape
    per_token = torch.rand(shape, generator=generator, device=t.device)
    per_token = (t_min + (1.0 - t_min) * per_token).clamp_min(T_MIN)
    chosen = torch.rand(B, generator=generator, device=t.device) < share
    return torch.where(chosen[:, None], per_token, t[:, None].expand(B, T))


def _prompt_free(shape: torch.Size, share: float, generator, device) -> Tensor:
    """(B, T) bool, False on a clean prompt: a `share` of sequences keep positions
    i <= f·(T − 1) clean, f = arccos(1 − 2r)/π, r ~ U(0, 1) (gidd-easydel
    DiffusionTrainer._sample_noise_mask with noise_mask_max_cond_frac = 1)."""
    B, T = shape
    has = torch.rand(B, generator=generator, device=device) < share
    frac = torch.arccos(1 - 2 * torch.rand(B, generator=generator, device=device)) / math.pi
    prompt = torch.arange(T, device=device)[None, :] <= frac[:, None] * (T - 1)
    return ~(has[:, None] & prompt)
