"""Samplers for every noise family behind one entry point, `generate(model, family, ...)`.

Pure torch (no MLflow, no files). One class per way of sampling; each family class declares its
own (`NoiseFamily.sampler`, trainer/families/<name>.py), so callers never branch on the family:

- masked: MDLM ancestral sampling (Sahoo et al. 2024). Time grid t_k = 1 − k/K,
  k = 0..K (K = `steps`). A step t → s keeps every unmasked token; a masked position is unmasked
  with probability (α_s − α_t) / (1 − α_t) to x ~ p_θ(x | z_t); at s = 0 that probability is 1,
  so no mask survives. Caching: an unconditioned model's output depends on z_t only, so when a
  step changes no position the previous logits are reused (nfe <= steps). The masked family also
  offers ReMDM remasking (trainer/sampling/remasking.py, "masked-remdm"), chosen by name
  (`generate(..., sampler=...)`, NoiseFamily.pick_sampler).
- uniform, hybrid: ancestral sampling from the exact reverse posterior marginalised over the
  model's prediction (GIDD, von Rütte et al. 2025; UDLM, Schiff et al.), K model calls.
- autoregressive: temperature sampling, one position at a time through the model's KV cache.

Reverse posterior used for uniform and hybrid noise (all of trainer/families/base.py's diffusion
families share the form q_t(z | x) = α_t δ(z = x) + β_t π_t(z), β = 1 − α). Its transition from
s < t is

    q(z_t | z_s) = α_{t|s} δ(z_t = z_s) + β_{t|s} π_{t|s}(z_t),   α_{t|s} = α_t / α_s,
    β_{t|s} π_{t|s} = β_t π_t − α_{t|s} β_s π_s                      (GIDD)

(uniform: β_{t|s} π_{t|s} = (1 − α_{t|s}) / V; nonnegative for the hybrid prior because
β_t σ_t / α_t and β_t (1 − σ_t) / α_t both decrease in α_t). The reverse step is the model's own,
the one its NELBO (trainer/families/base.py) is the bound of: x̂ = x̂_θ(z_t, t) is plugged into the forward
marginals (the mean parameterisation of GIDD / UDLM),

    p_θ(z_s | z_t) = q(z_t | z_s) · q_s(z_s | x̂) / q_t(z_t | x̂),   q_s(y | x̂) = α_s x̂(y) + β_s π_s(y),

O(V) per position. x̂ is *not* the posterior p(x | z_t) here: on i.i.d. tokens from p the optimal
x̂ is p itself (NELBO = H(p), tests/test_noise.py), and the z_t evidence enters through q(z_t | z_s).
(Averaging the exact posteriors q(z_s | z_t, x) over x̂ instead treats x̂ as p(x | z_t) and
divides that evidence out again: a model trained on this NELBO then samples near-random text.)
At s = 0, q_0(· | x̂) = x̂, so the last step draws real tokens from x̂(y)·q_t(z_t | y): no mask can
remain. β_t π_t is read off the family's own `marginal` (for z ≠ x the marginal *is* β_t π_t(z)),
so a new family with this form needs no sampler code. The chain starts from z_1 ~ π_1 (it ignores
the ε·δ(x) part of q_1, an O(ε) bias).

How a distribution becomes a token is one `Draw` for every family (issue 14): temperature, nucleus
(top-p) truncation of the model's prediction (every scaling-dllms gen_ppl.sh sets p_nucleus), an
optional greedy final denoising step (Duo's noise_removal=greedy), and categorical draws by
inverting the CDF in float64 (Duo samples in float64: a float32 CDF over V = 32768 tokens cannot
reach most tail tokens of a peaked row, and is ~1e-3 off in total variation on a flat V = 131072
one; tests/test_draws.py measures both exactly). The sampler's name with its non-default settings
is what MLflow records (tag dlm.sampler), so speed-quality fronts compare like with like.

Shapes: n sequences, T = seq_len positions, V real tokens, S = V (+1 mask) input states.
Probabilities are float32, their CDFs float64; every draw uses the caller's seeded torch.Generator.
"""
from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.ladder import takes_t
from trainer.model.kvcache import KVCache

if TYPE_CHECKING:     # the families import their samplers from here
    from trainer.families.base import NoiseFamily


VERSION = 3
"""Bump when a sampler's output distribution changes: the sampling stage re-samples runs sampled
by an older version (2: uniform / hybrid use the model's mean-parameterised reverse step;
3: float64 CDFs, so the same seed draws other tokens)."""


@dataclass(frozen=True)
class Draw:
    """How every sampler turns a predicted distribution into tokens (the module docstring)."""
    temperature: float = 1.0
    """Logits are divided by it (> 0)."""
    top_p: float = 1.0
    """Nucleus: keep the smallest set of most likely tokens whose mass reaches top_p, renormalised
    (0 < top_p <= 1; 1 = no truncation). Applied to the model's prediction x̂ (AR: the next-token
    distribution), as scaling-dllms applies p_nucleus to its models' output."""
    greedy_final: bool = False
    """Diffusion: the last step (s = 0) takes each position's most likely token instead of a draw."""

    def __post_init__(self):
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    def probs(self, logits: Tensor) -> Tensor:
        """softmax(logits / temperature), nucleus-truncated, float32: (..., V) -> (..., V)."""
        p = F.softmax(logits.float() / self.temperature, dim=-1)
        return p if self.top_p >= 1.0 else nucleus(p, self.top_p)

    def label(self, sampler: str, settings: tuple[str, ...] = ()) -> str:
        """The sampler's name with its own `settings` (Sampler.settings) and the draw's non-default
        ones (MLflow tag dlm.sampler)."""
        parts = list(settings)
        parts += [f"T={self.temperature:g}"] if self.temperature != 1.0 else []
        parts += [f"top_p={self.top_p:g}"] if self.top_p < 1.0 else []
        parts += ["greedy_final"] if self.greedy_final else []
        return f"{sampler}[{','.join(parts)}]" if parts else sampler


def nucleus(probs: Tensor, top_p: float) -> Tensor:
    """Rows of `probs` (..., V) restricted to their nucleus and renormalised: the most likely
    tokens, in order, up to and including the first at which the kept mass reaches top_p (so the
    most likely token is always kept; ties at the boundary are broken by index)."""
    sorted_p, order = probs.sort(dim=-1, descending=True, stable=True)
    before = sorted_p.cumsum(-1) - sorted_p                    # mass strictly ahead of each token
    keep_sorted = before < top_p * sorted_p.sum(-1, keepdim=True)
    keep = torch.zeros_like(keep_sorted).scatter_(-1, order, keep_sorted)
    out = torch.where(keep, probs, torch.zeros_like(probs))
    return out / out.sum(-1, keepdim=True)


@dataclass(frozen=True, kw_only=True)
class SampleResult:
    tokens: Tensor
    """(n, seq_len) LongTensor on the CPU of real-vocabulary ids (never the mask id)."""
    steps: int
    """Denoising steps taken (diffusion) or positions generated (autoregressive: seq_len)."""
    nfe: int
    """Model forward passes actually run, summed over batches (KV-cached AR: one per position)."""
    seconds: float
    """Wall time of sampling alone (s): no model loading or decoding to text."""
    sampler: str = ""
    """The sampler that drew them with its settings and the draw's (Draw.label; tag dlm.sampler)."""

    def tokens_per_s(self) -> float:
        """Generated tokens per second of sampling wall time."""
        return self.tokens.numel() / max(self.seconds, 1e-9)


@dataclass(frozen=True)
class Chunk:
    """What one sampler call returns for one batch."""
    tokens: Tensor  # (b, T) real-vocabulary ids, on the device
    steps: int      # steps / positions taken
    nfe: int        # forward passes run


class Sampler(ABC):
    """Draws one batch of sequences from a model of one noise family."""
    name: str = ""   # logged with every sampling measurement (MLflow tag dlm.sampler)

    def settings(self) -> tuple[str, ...]:
        """What the label names besides the name (Draw.label), e.g. ('cap', 'eta=0.02')."""
        return ()

    @abstractmethod
    def sample(self, model: nn.Module, family: NoiseFamily, *, n: int, seq_len: int, steps: int,
               draw: Draw, gen: torch.Generator, start_id: int | None,
               prefix: Tensor | None = None) -> Chunk:
        """n sequences of seq_len tokens; draws only from `gen` (on the model's device).
        `prefix` (n, P), P < seq_len: the first P tokens of every sequence are given, clean from
        the first step to the last (the context of a downstream task, trainer/evaluation), and
        returned as they are; the sampler draws the other seq_len − P."""


def cdf64(probs: Tensor) -> Tensor:
    """Row CDFs (..., K) of probs, accumulated in float64: a token of probability p keeps a CDF
    step of width ~p however far into the tail it sits (a float32 CDF near 1 moves in steps of
    6e-8, so every token below that is unreachable)."""
    return probs.double().cumsum(-1)


def _draw(probs: Tensor, gen: torch.Generator) -> Tensor:
    """One categorical draw per row of probs (..., K) -> (...) ids, by inverting the row's CDF,
    accumulated in float64, at one float64 uniform number: one random draw per row
    (torch.multinomial draws K exponentials per row, ~40% of a uniform-diffusion sampling step at
    K = 513 here). Rows need not be normalised."""
    flat = probs.reshape(-1, probs.shape[-1])
    cdf = cdf64(flat)                                                      # (rows, K)
    u = torch.rand((flat.shape[0], 1), generator=gen, device=flat.device, dtype=cdf.dtype) * cdf[:, -1:]
    # first index with cdf > u: zero-probability categories (flat cdf) are never chosen
    idx = torch.searchsorted(cdf, u, right=True).clamp_max_(flat.shape[-1] - 1)
    return idx.view(probs.shape[:-1])


def _time(t: float, n: int, device) -> Tensor:
    return torch.full((n,), t, dtype=torch.float32, device=device)


def _alpha(family: NoiseFamily, t: float) -> float:
    return float(family.alpha(torch.tensor(t, dtype=torch.float64)))


def _call(model: nn.Module, z: Tensor, t: float) -> Tensor:
    """Logits (n, T, V) of z (n, T) at time t; t is passed only to a time-conditioned model."""
    return model(z, _time(t, z.shape[0], z.device) if takes_t(model.cfg) else None)


class MaskedAncestral(Sampler):
    """MDLM ancestral sampling with logit caching (module docstring)."""
    name = "masked-ancestral-cached"

    def sample(self, model, family, *, n, seq_len, steps, draw, gen, start_id, prefix=None):
        device = gen.device
        z = start_masked(family, n, seq_len, device, prefix)     # a prefix is never masked
        probs, nfe = None, 0
        for k in range(steps):
            t, s = 1.0 - k / steps, 1.0 - (k + 1) / steps
            if probs is None or takes_t(model.cfg):           # z changed, or the output depends on t
                probs, nfe = draw.probs(_call(model, z, t)), nfe + 1             # (n, T, V)
            a_t, a_s = _alpha(family, t), _alpha(family, s)
            last = k == steps - 1
            p_unmask = 1.0 if last else (a_s - a_t) / (1.0 - a_t)
            u = torch.rand(z.shape, generator=gen, device=device)
            reveal = (z == family.mask_id) & (u < p_unmask)   # (n, T)
            if reveal.any():
                picked = (probs[reveal].argmax(-1) if last and draw.greedy_final
                          else _draw(probs[reveal], gen))
                z = z.masked_scatter(reveal, picked)
                probs = None                                  # stale: recompute next step
        return Chunk(z, steps, nfe)


def start_masked(family: NoiseFamily, n: int, seq_len: int, device, prefix: Tensor | None) -> Tensor:
    """z_1 of masked diffusion: every position masked but a given prefix (Sampler.sample)."""
    z = torch.full((n, seq_len), family.mask_id, dtype=torch.long, device=device)
    if prefix is not None:
        z[:, :prefix.shape[1]] = prefix
    return z


def _prior_mass(family: NoiseFamily, t: float, device) -> Tensor:
    """β_t π_t over the S input states, (S,) float32, read off `family.marginal`: for z ≠ x,
    q_t(z | x) = β_t π_t(z). References x = 0 and x = 1 cover every state with no cancellation."""
    m = family.marginal(torch.tensor([0, 1], device=device),
                        torch.full((2,), t, dtype=torch.float64, device=device))  # (2, S)
    mass = m[0].clone()
    mass[0] = m[1, 0]
    return mass.float()


class PosteriorAncestral(Sampler):
    """Ancestral sampling from p_θ(z_s | z_t) ∝ q(z_t | z_s) q_s(z_s | x̂) (module docstring)."""
    name = "mean-param-ancestral"

    def sample(self, model, family, *, n, seq_len, steps, draw, gen, start_id, prefix=None):
        prior = _prior_mass(family, 1.0, gen.device)                          # (S,)
        z = _draw((prior / prior.sum()).expand(n, seq_len, -1), gen)          # z_1 ~ π_1
        P = 0 if prefix is None else prefix.shape[1]
        for k in range(steps):                                                # the last step: s = 0
            t, s = 1.0 - k / steps, 1.0 - (k + 1) / steps
            if P:
                z[:, :P] = prefix                                             # the prefix stays clean
            x_hat = draw.probs(_call(model, z, t))                            # (n, T, V)
            post = self.unnormalised(family, x_hat, z, t, s)                  # (n, T, S)
            # s = 0 puts no mass on the mask: the argmax is a real token
            z = post.argmax(-1) if k == steps - 1 and draw.greedy_final else _draw(post, gen)
        if P:
            z[:, :P] = prefix
        return Chunk(z, steps, steps)                                         # real tokens only

    @staticmethod
    def posterior(family: NoiseFamily, x_hat: Tensor, z: Tensor, t: float, s: float) -> Tensor:
        """p_θ(z_s | z_t) (n, T, S), float32, from x̂ (n, T, V) and z_t (n, T), for 0 <= s < t."""
        post = PosteriorAncestral.unnormalised(family, x_hat, z, t, s)
        return post / post.sum(-1, keepdim=True)

    @staticmethod
    def unnormalised(family: NoiseFamily, x_hat: Tensor, z: Tensor, t: float, s: float) -> Tensor:
        """q(z_t | z_s = y) · q_s(y | x̂) over y, (n, T, S): p_θ(z_s | z_t) up to a per-position
        constant, in ~3 passes over (n, T, S). q(z_t | z_s = y) = jump(z_t) + α_{t|s} δ(y = z_t)."""
        V = family.V
        a_t, a_s = _alpha(family, t), _alpha(family, s)
        pi_t, pi_s = _prior_mass(family, t, z.device), _prior_mass(family, s, z.device)  # β·π (S,)
        a_ts = a_t / a_s
        jump = (pi_t - a_ts * pi_s).clamp_min(0.0)[z]                # β_{t|s} π_{t|s}(z_t) (n, T)
        q_s = pi_s.expand(*z.shape, -1).clone()                       # q_s(y | x̂): π̃_s(y) ...
        q_s[..., :V].add_(x_hat, alpha=a_s)                           # ... + α_s x̂(y) on real y
        z_q = q_s.gather(-1, z[..., None])                            # q_s(z_t | x̂)
        post = q_s.mul_(jump[..., None])
        return post.scatter_add_(-1, z[..., None], a_ts * z_q)


class Autoregressive(Sampler):
    """Left-to-right temperature sampling through the KV cache, one position per forward.

    The AR model is trained to read [EOT, x_0 .. x_{T−2}] and predict x_0 .. x_{T−1}
    (families.autoregressive.Autoregressive.prepare, start token EOT_ID): the sampler starts from
    `start_id` (callers pass the corpus's end-of-text id, = EOT_ID), which is not part of the
    output, so the first sampled token is drawn exactly as training scored it. `steps` is ignored:
    seq_len positions are generated, and reported; so is `draw.greedy_final` (no denoising)."""

    name = "ar-kvcache"

    def sample(self, model, family, *, n, seq_len, steps, draw, gen, start_id, prefix=None):
        if start_id is None:
            raise ValueError("autoregressive sampling needs start_id (e.g. the corpus's eot id)")
        device = gen.device
        cache = KVCache(model.cfg, n, device, next(model.parameters()).dtype)
        out = torch.empty((n, seq_len), dtype=torch.long, device=device)
        prev = torch.full((n, 1), start_id, dtype=torch.long, device=device)
        P = 0
        if prefix is not None:                          # read [start, prefix] in one forward
            P = prefix.shape[1]
            out[:, :P] = prefix
            prev = torch.cat([prev, prefix], 1)
        for i in range(P, seq_len):
            logits = model.decode(prev, cache)[:, -1]                          # (n, V)
            out[:, i] = _draw(draw.probs(logits), gen)
            prev = out[:, i : i + 1]
        return Chunk(out, seq_len, seq_len - P)


@torch.no_grad()
def generate(model: nn.Module, family: NoiseFamily, *, n: int, seq_len: int, steps: int, seed: int,
             temperature: float = 1.0, device: str | torch.device = "cpu",
             batch_size: int | None = None, start_id: int | None = None, top_p: float = 1.0,
             greedy_final: bool = False, sampler: str | None = None,
             sampler_settings: Mapping[str, object] | None = None,
             prefix: Tensor | None = None) -> SampleResult:
    """Sample n sequences of seq_len tokens from `model` (a trainer.model.transformer.Transformer of `family`).

    steps: denoising steps on the uniform grid t_k = 1 − k/steps (ignored by the AR family, which
    takes seq_len positions). seed: same seed, device and batch_size -> identical tokens.
    temperature, top_p, greedy_final: a `Draw` (ValueError naming a bad one). batch_size: sequences
    per batch (default n).
    start_id: the token the AR model is conditioned on before its first output (required there,
    ignored by diffusion). The model is put in eval mode and moved to `device`.
    sampler, sampler_settings: one of the family's samplers by name (default: its first,
    NoiseFamily.sampler) with settings that replace its defaults (NoiseFamily.pick_sampler;
    ValueError naming an unknown one and the known ones).
    prefix: (P,) or (n, P) token ids every sequence starts with, kept clean throughout and
    returned in `tokens` (Sampler.sample; P < seq_len): conditional generation for downstream
    tasks (trainer/evaluation)."""
    if not isinstance(getattr(family, "sampler", None), Sampler):
        raise ValueError(f"family {family.name!r} declares no sampler (NoiseFamily.sampler)")
    try:
        chosen = family.pick_sampler(sampler, sampler_settings)
    except ValueError as exc:
        raise ValueError(f"family {family.name!r}: {exc}") from None
    for name, value in (("n", n), ("seq_len", seq_len), ("steps", steps)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    draw = Draw(temperature=temperature, top_p=top_p, greedy_final=greedy_final)
    if seq_len > model.cfg.seq_len:
        raise ValueError(f"seq_len {seq_len} exceeds the model's seq_len {model.cfg.seq_len}")
    batch = batch_size or n
    device = torch.device(device)
    if prefix is not None:
        prefix = torch.as_tensor(prefix, dtype=torch.long, device=device)
        prefix = prefix.expand(n, -1) if prefix.dim() == 1 else prefix
        if prefix.shape[0] != n or not 0 < prefix.shape[1] < seq_len:
            raise ValueError(f"prefix must be (P,) or (n={n}, P) with 0 < P < seq_len={seq_len}, "
                             f"got shape {tuple(prefix.shape)}")
    model = model.to(device).eval()
    gen = torch.Generator(device=device).manual_seed(seed)
    _sync(device)
    t0 = time.perf_counter()
    chunks = [chosen.sample(model, family, n=min(batch, n - i), seq_len=seq_len, steps=steps,
                             draw=draw, gen=gen, start_id=start_id,
                             **({} if prefix is None else {"prefix": prefix[i:i + batch]}))
              for i in range(0, n, batch)]
    _sync(device)
    seconds = time.perf_counter() - t0
    tokens = torch.cat([c.tokens for c in chunks]).cpu()
    return SampleResult(tokens=tokens, steps=chunks[0].steps, nfe=sum(c.nfe for c in chunks),
                        seconds=seconds, sampler=draw.label(chosen.name, chosen.settings()))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
