"""FLOP and parameter arithmetic for `trainer.model.transformer.Transformer` (MECHANICS; pure functions).

A *convention* names which operations count; each gives training FLOPs per token (forward +
backward, the backward pass costing 2 × forward: gradients w.r.t. activations and w.r.t. weights).
d = d_model, L = n_layer, T = seq_len, H = n_head, h = MLP hidden width, m = MLP matrices (GELU 2,
SwiGLU 3), V = output classes. Exponents fitted under one convention cannot be compared with
another's: their ratio changes with size (the unembedding dominates small models, STACK.md).
Every convention is in `CONVENTIONS`; `flops_by_convention` gives all of them for a run's tokens.

"matmul" (the project's default; run ids hash the name). Forward FLOPs per token count every
matrix multiply at 2 FLOPs per multiply-accumulate:

    per layer   QKV projections               2 · 3 · d²
                attention scores  Q Kᵀ         2 · T · d
                weighted sum over values      2 · T · d
                output projection             2 · d²
                MLP                           2 · m · d · h
    once        unembedding (output head)     2 · d · V
    time_cond   with sinusoid width F and condition width c (core.ladder.TIME_CONDS: "adaln"
                F = 256, c = cond_dim; "adaln_full" F = c = d): time MLP 2 · (F·c + c²),
                adaLN 2 · 6 · c · d per layer, final adaLN 2 · 2 · c · d; these run once per
                *sequence*, so they are amortised per token (divided by T).

The attention terms are Chinchilla's (Hoffmann et al. 2022, Appendix F: "logits" and "softmax @
query reductions", 2·T·d each, so 4·L·T·d per token); Kaplan et al. 2020 (Table 1) count attention
over the context once, as 2·n_layer·n_ctx·d_attn ("Attention: Mask"), so C_forward = 2N + 2·L·T·d
there. Attention is counted over the full context for causal models too (no halving for the
masked half): the count is a property of the architecture, not of a kernel's skipping; so Eso-LM's
attention, causal over a per-sequence order (trainer/families/esolm.py), counts as masked
diffusion's under every convention (tests/test_esolm.py checks the logged counts). Not counted:
the embedding lookup (a gather; Chinchilla App. F counts it as a matmul), norms, softmax (App. F:
3·H·T), rotary, activations, biases and other elementwise ops. So "matmul" is Chinchilla App. F
without its embedding and softmax terms. Training = 3 × forward. It is the one to plan budgets
with here: it counts the unembedding and attention that dominate small models.

The papers' conventions (each function below cites the file it reproduces):
  "sahoo2026"         2602.15014: calflops on their DiT, × 3 — every linear layer incl. the head
                      at every position, no QKᵀ / AV matmuls; plus calflops' elementwise rules.
  "vonruette2025"     2512.10858 "method 1": M = 72·L·d² + 12·L·d·T (already training FLOPs).
  "vonruette2025-6n"  2512.10858 "method 2": 6 · N (N: non-embedding backbone parameters).
  "6n"                Kaplan et al. 2020, C ≈ 6N, with the same N.
  "6N"                an alias of "6n" (registered under its old name because run ids hash the
                      name). Before issue 13 it was 6 × (backbone + time-conditioning parameters),
                      charging layers that run once per sequence as if they ran per token.
N (`backbone_params`) is the same for every family at one ladder size: the per-token,
non-embedding backbone, never the time-conditioning layers (`time_cond_params`, reported apart;
issue 13, item 1). It is the N the laws are fitted on (analysis/load.py `n_backbone`).

No torch at runtime: `ModelConfig` is imported for typing only and cfg is read by attribute
(n_layer, d_model, n_head, vocab_size, out_vocab_size, seq_len, mlp, mlp_hidden(), time_cond,
cond_dim).
`python -m core.flops --help` prints one shape's counts (core/flops_cli.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from core.ladder import time_widths

if TYPE_CHECKING:
    from core.ladder import ModelConfig

# d×h matrices in the MLP of each kind (GELU: in, out; SwiGLU: gate, up, out).
MLP_MATRICES = {"gelu": 2, "swiglu": 3}

# Training FLOPs / forward FLOPs in every convention here (forward + 2 × forward for backward).
TRAIN_OVER_FORWARD = 3.0

# Rounding a step count may miss the budget by at most this fraction of the budget.
BUDGET_TOLERANCE = 0.01


# ---------------------------------------------------------------------------------------------
# Parameter counts
# ---------------------------------------------------------------------------------------------


def backbone_params(cfg: ModelConfig) -> int:
    """Non-embedding parameters that run at every token: blocks (2 norms, qkv, proj, MLP) and the
    final norm. Excludes the token embedding, the head and every time-conditioning layer (those
    run once per sequence). This is the N of the "6n" and "vonruette2025-6n" conventions."""
    d, L, h = cfg.d_model, cfg.n_layer, cfg.mlp_hidden()
    per_block = 2 * d + 4 * d * d + MLP_MATRICES[cfg.mlp] * d * h  # 2 norms, qkv + proj, MLP
    return L * per_block + d  # + final norm


def time_cond_params(cfg: ModelConfig) -> int:
    """Parameters of the time-conditioning layers (0 without them), F sinusoid features and c
    condition width (core.ladder.time_widths): the time MLP Linear(F, c) + Linear(c, c) with
    biases, per block adaLN Linear(c, 6d) with bias, the final adaLN Linear(c, 2d) with bias."""
    widths = time_widths(cfg)
    if widths is None:
        return 0
    F, c = widths
    d, L = cfg.d_model, cfg.n_layer
    return (F * c + c) + (c * c + c) + L * (6 * d * c + 6 * d) + (2 * d * c + 2 * d)


def embedding_params(cfg: ModelConfig) -> int:
    """The token embedding (vocab_size × d) and the untied head (d × out_vocab_size)."""
    return cfg.vocab_size * cfg.d_model + cfg.d_model * cfg.out_vocab_size


@dataclass(frozen=True)
class ParamCounts:
    """Parameters of Transformer(cfg) by role; `backbone` is the N that laws are fitted on."""

    backbone: int  # per-token, non-embedding: blocks and final norm (`backbone_params`)
    time_cond: int  # time conditioning, run once per sequence (`time_cond_params`)
    embedding: int  # token embedding + head (`embedding_params`)

    @property
    def nonembed(self) -> int:
        """Everything but the embedding and head (backbone + time conditioning): the
        pre-issue-13 "non-embedding" count, logged as n_params_nonembed."""
        return self.backbone + self.time_cond

    @property
    def total(self) -> int:
        return self.backbone + self.time_cond + self.embedding


def param_counts(cfg: ModelConfig) -> ParamCounts:
    """Parameter counts of Transformer(cfg) by role, computed analytically (tested against the
    built model's `sum(p.numel())`)."""
    return ParamCounts(backbone_params(cfg), time_cond_params(cfg), embedding_params(cfg))


# ---------------------------------------------------------------------------------------------
# Forward counts
# ---------------------------------------------------------------------------------------------


def _time_cond_flops_per_sequence(cfg: ModelConfig) -> float:
    """Forward FLOPs of the time-conditioning linears, run once per sequence (0 without them)."""
    widths = time_widths(cfg)
    if widths is None:
        return 0.0
    F, c = widths
    d, L = cfg.d_model, cfg.n_layer
    return float(2 * (F * c + c * c) + L * 2 * 6 * c * d + 2 * 2 * c * d)  # time MLP, adaLN, final


def forward_flops_per_token(cfg: ModelConfig) -> float:
    """Forward-pass FLOPs per token under the matmul convention (see the module docstring)."""
    d, L, T, h = cfg.d_model, cfg.n_layer, cfg.seq_len, cfg.mlp_hidden()
    per_layer = (
        2 * 3 * d * d  # QKV projections
        + 2 * T * d  # scores Q Kᵀ: each query against T keys of width d (summed over heads)
        + 2 * T * d  # weighted sum of T values of width d
        + 2 * d * d  # output projection
        + 2 * MLP_MATRICES[cfg.mlp] * d * h  # MLP
    )
    flops = L * per_layer + 2 * d * cfg.out_vocab_size  # + unembedding
    return float(flops) + _time_cond_flops_per_sequence(cfg) / T


def sahoo2026_forward_flops_per_token(cfg: ModelConfig) -> float:
    """Forward FLOPs per token as calflops counts them on 2602.15014's DiT (s-sahoo/scaling-dllms).

    Source: `main.py:_compute_flops` runs `calflops.calculate_flops` on one sequence of
    `model.length` tokens with eager flex attention and writes `configs/flops/<size>.json`;
    `utils.flops_to_max_steps` sets steps = C / (json flops × batch × 3), so C = 3 × forward.
    calflops (MrYxJ/calculate-flops.pytorch, `pytorch_ops.py`) patches torch functions:
      - F.linear: 2 × MACs (bias free) — qkv, proj, MLP, the head at every position, and the
        adaLN / time-MLP linears (batch 1: once per sequence);
      - the attention matmuls QKᵀ and AV are not counted: each file's MACs are exactly its
        linears' (flex attention runs outside the patched torch.matmul);
      - F.layer_norm without affine: 4 FLOPs per element (2 per block + final);
      - F.gelu / F.silu: 1 per element of the MLP hidden activation;
      - softmax (calflops: 1 per element): 1 per attention score, H·T per token per layer — what
        is left of every file's FLOPs once the rules above are applied;
      - the embedding (an index into a Parameter): 0.
    This reproduces all 28 files in configs/flops to their printed precision (< 3e-5; 113M:
    449.41e9 per 2048-token sequence, 2 × 224.287 GMACs + 0.837e9 elementwise), counting their
    adaLN with cond_dim 128 and the rotary table's einsum. The elementwise rules are their DiT's
    (LayerNorm, GELU, softmax) applied to this shape; the linear part alone is 0.05-0.27% below
    the files. Time conditioning: this model's own layers once per sequence, as calflops sees
    them; with time_cond "adaln" (cond_dim 128) those are exactly the files' adaLN linears.
    """
    d, L, T, h = cfg.d_model, cfg.n_layer, cfg.seq_len, cfg.mlp_hidden()
    linear = 2 * (L * (4 * d * d + MLP_MATRICES[cfg.mlp] * d * h) + d * cfg.out_vocab_size)
    elementwise = L * (2 * 4 * d + h + cfg.n_head * T) + 4 * d  # norms, activation, softmax
    return float(linear + elementwise) + _time_cond_flops_per_sequence(cfg) / T


def vonruette2025_flops_per_token(cfg: ModelConfig) -> float:
    """Training FLOPs per token M of 2512.10858's "method 1" (dvruette/gidd-easydel).

    Source: notebooks/scaling_laws_run_bootstrap.ipynb plans runs with
    `M = 72 * l * d**2 + 12 * l * d * seq_len` and `flops = steps * batch * seq_len * M`, so M is
    already training FLOPs (notebooks/utils.py:flops_per_token: 3 × forward). It is DeepSeek LLM's
    (Bi et al. 2024) non-embedding M: 3 × L · (24·d² + 4·T·d) — the matmul convention without the
    head, and without time conditioning (their model has none). utils.py also adds softmax
    3·H·T per layer; the notebook's M (its "FLOPs/tok" printout) does not. Written for the
    actual MLP, 3 · L · (2·(4d² + m·d·h) + 4·T·d), which is exactly 72·L·d² + 12·L·d·T for
    their GELU MLP of width 4d and ~equal for SwiGLU."""
    d, L, T, h = cfg.d_model, cfg.n_layer, cfg.seq_len, cfg.mlp_hidden()
    per_layer = 2 * (4 * d * d + MLP_MATRICES[cfg.mlp] * d * h) + 4 * T * d
    return TRAIN_OVER_FORWARD * L * per_layer


def six_n_flops_per_token(cfg: ModelConfig) -> float:
    """6 × backbone_params: Kaplan et al. 2020 (C ≈ 6N, N non-embedding) and 2512.10858's
    "method 2" (Chinchilla-style; gidd-easydel notebooks/utils.py:params_from_config with
    include_embed_params=False counts every block weight, norm and bias, not the untied head).
    Both sets are the same parameters on this architecture. The isoflops.csv columns that method 2
    fits on (approx_flops_per_tok) are not in the repository; the formula is the issue's reading."""
    return 6.0 * backbone_params(cfg)


# ---------------------------------------------------------------------------------------------
# Conventions
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Convention:
    """A named count of training FLOPs per token; calling it with a cfg returns that count."""

    name: str
    per_token: Callable[[ModelConfig], float]  # training (forward + backward) FLOPs per token
    source: str  # where the count comes from (paper, file, equation)

    def __call__(self, cfg: ModelConfig) -> float:
        return self.per_token(cfg)


def _registry(*conventions: Convention) -> dict[str, Convention]:
    return {c.name: c for c in conventions}


CONVENTIONS: dict[str, Convention] = _registry(
    Convention(
        "matmul", lambda cfg: 3.0 * forward_flops_per_token(cfg),  # forward + backward (2x)
        "3 x every matmul incl. QK^T, AV and the head (Chinchilla, Hoffmann et al. 2022, App. F, "
        "without its embedding and softmax terms); time conditioning once per sequence"),
    Convention(
        "6N", six_n_flops_per_token,
        "alias of 6n (the pre-issue-13 name; it then also counted time conditioning)"),
    Convention(
        "sahoo2026", lambda cfg: TRAIN_OVER_FORWARD * sahoo2026_forward_flops_per_token(cfg),
        "arXiv 2602.15014: s-sahoo/scaling-dllms configs/flops/*.json (calflops forward of "
        "their DiT) x 3 (utils.flops_to_max_steps): linears incl. head, no QK^T/AV"),
    Convention(
        "vonruette2025", vonruette2025_flops_per_token,
        "arXiv 2512.10858 method 1: M = 72 L d^2 + 12 L d T, training FLOPs, no head "
        "(dvruette/gidd-easydel notebooks/scaling_laws_run_bootstrap.ipynb; DeepSeek LLM M)"),
    Convention(
        "vonruette2025-6n", six_n_flops_per_token,
        "arXiv 2512.10858 method 2: 6 x non-embedding backbone params, no time conditioning "
        "(dvruette/gidd-easydel notebooks/utils.py params_from_config)"),
    Convention(
        "6n", six_n_flops_per_token,
        "Kaplan et al. 2020 C ~ 6N, N = non-embedding backbone params, no time conditioning"),
)


def train_flops_per_token(cfg: ModelConfig, convention: str = "matmul") -> float:
    """Training (forward + backward) FLOPs per token under a named convention."""
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown FLOP convention {convention!r}; known: {sorted(CONVENTIONS)}")
    return CONVENTIONS[convention](cfg)


def flops_per_token_by_convention(cfg: ModelConfig) -> dict[str, float]:
    """Training FLOPs per token under every convention (name -> FLOPs/token)."""
    return {name: convention(cfg) for name, convention in CONVENTIONS.items()}


def flops_by_convention(cfg: ModelConfig, tokens: float) -> dict[str, float]:
    """Cumulative training FLOPs of `tokens` training tokens under every convention (name ->
    FLOPs): what a run logs so that analysis can refit under any convention without retraining."""
    if tokens < 0:
        raise ValueError(f"tokens must be >= 0, got {tokens!r}")
    per_token = flops_per_token_by_convention(cfg)
    return {name: flops_per_token * tokens for name, flops_per_token in per_token.items()}


def _step_flops(cfg: ModelConfig, tokens_per_step: int, convention: str) -> float:
    if not tokens_per_step > 0:
        raise ValueError(f"tokens_per_step must be positive, got {tokens_per_step!r}")
    return train_flops_per_token(cfg, convention) * tokens_per_step


def flops_for_steps(
    steps: int, cfg: ModelConfig, tokens_per_step: int, convention: str = "matmul"
) -> float:
    """Training FLOPs of `steps` optimizer steps of `tokens_per_step` tokens each."""
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    return steps * _step_flops(cfg, tokens_per_step, convention)


def steps_for_budget(
    budget_flops: float, cfg: ModelConfig, tokens_per_step: int, convention: str = "matmul"
) -> int:
    """Step count whose training FLOPs are nearest `budget_flops` (inverse of flops_for_steps).

    Raises ValueError if the budget is below one step, or if the nearest step count misses the
    budget by more than 1% (too few steps: e.g. 1.5 steps' worth can only be hit within 33%).
    """
    step = _step_flops(cfg, tokens_per_step, convention)
    if budget_flops < step:
        raise ValueError(
            f"budget {budget_flops:.4g} FLOPs is smaller than one step ({step:.4g} FLOPs = "
            f"{tokens_per_step} tokens x {step / tokens_per_step:.4g} FLOPs/token)"
        )
    steps = round(budget_flops / step)
    miss = abs(steps * step - budget_flops) / budget_flops
    if miss > BUDGET_TOLERANCE:
        raise ValueError(
            f"budget {budget_flops:.4g} FLOPs cannot be hit within {BUDGET_TOLERANCE:.0%} with "
            f"steps of {step:.4g} FLOPs: {steps} steps give {steps * step:.4g} ({miss:.1%} off)"
        )
    return steps


def tokens_for_budget(budget_flops: float, cfg: ModelConfig, convention: str = "matmul") -> float:
    """Training tokens D that spend `budget_flops` on this model: D = C / (FLOPs per token)."""
    if not budget_flops > 0:
        raise ValueError(f"budget_flops must be positive, got {budget_flops!r}")
    return budget_flops / train_flops_per_token(cfg, convention)


def compute_optimal_flops_per_token(budget_flops: float, tokens_per_param: float = 20.0) -> float:
    """Training FLOPs per token f* of the compute-optimal model for a budget, Chinchilla-style.

    Chinchilla (Hoffmann et al. 2022) finds D ≈ 20 N at the optimum. Applied to *all* training
    FLOPs (this module's count, not 6 x non-embedding params), write the model as its equivalent
    parameter count N = f / 6 so that C = f · D = 6 N · D. With D = r N:

        C = 6 r N²  ->  N* = √(C / 6r),   f* = 6 N* = √(6 C / r),   D* = C / f* = r f* / 6

    For r = 20, f* = 6 √(C / 120) ≈ 0.548 √C (1e12 FLOPs -> 5.5e5 FLOPs/token, 1.8M tokens).
    Small models are dominated by the unembedding (STACK.md), so centring a grid on non-embedding
    parameters instead lands 3-10x too big. `tokens_per_param` is the recipe's choice; this is the
    arithmetic."""
    if not budget_flops > 0:
        raise ValueError(f"budget_flops must be positive, got {budget_flops!r}")
    if not tokens_per_param > 0:
        raise ValueError(f"tokens_per_param must be positive, got {tokens_per_param!r}")
    return (6.0 * budget_flops / tokens_per_param) ** 0.5


def mfu(achieved_flops_per_s: float, peak_flops_per_s: float) -> float:
    """Model FLOPs utilisation: achieved / peak (both FLOP/s; achieved from this module's count)."""
    if not peak_flops_per_s > 0:
        raise ValueError(f"peak_flops_per_s must be positive, got {peak_flops_per_s!r}")
    if achieved_flops_per_s < 0:
        raise ValueError(f"achieved_flops_per_s must be >= 0, got {achieved_flops_per_s!r}")
    return achieved_flops_per_s / peak_flops_per_s


if __name__ == "__main__":  # python -m core.flops: one shape's counts (core/flops_cli.py)
    from core.flops_cli import main

    main()
