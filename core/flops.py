"""FLOP and parameter arithmetic for `trainer.model.transformer.Transformer` (MECHANICS; pure functions).

Convention ("matmul", the default). FLOPs per token of the forward pass count every matrix
multiply at 2 FLOPs per multiply-accumulate, as in Kaplan et al. 2020 (Table 1) and Chinchilla
(Hoffmann et al. 2022, Appendix F). With d = d_model, L = n_layer, T = seq_len, h = MLP hidden
width, V_out = output classes, per token:

    per layer   QKV projections               2 · 3 · d²
                attention scores  Q Kᵀ         2 · T · d
                weighted sum over values      2 · T · d
                output projection             2 · d²
                MLP                           2 · 2 · d · h   (GELU: two d×h matrices)
                                              2 · 3 · d · h   (SwiGLU: three d×h matrices)
    once        unembedding (output head)     2 · d · V_out
    time_cond   time MLP 2 · 2 · d², adaLN 2 · 6 · d² per layer, final adaLN 2 · 2 · d²;
                these run once per *sequence*, so they are amortised per token (divided by T).

Attention is counted over the full context T for causal models too, as Chinchilla does (it does
not halve the QKᵀ and value terms for the masked half); the count is a property of the
architecture, not of a kernel's skipping. Not counted: the embedding lookup (a gather), norms,
softmax, rotary, activations, biases and other elementwise ops.

Training = 3 × forward (the backward pass costs 2 × forward: gradients w.r.t. activations and
weights). The alternative "6N" convention (Kaplan et al. 2020, C ≈ 6N per token) uses 6 × the
non-embedding parameter count N and ignores attention-over-context and unembedding FLOPs; with
time_cond it counts the per-sequence time layers as if they ran per token. Small models here are
dominated by the unembedding (STACK.md), so "matmul" is the one to plan budgets with.

No torch at runtime: `ModelConfig` is imported for typing only and cfg is read by attribute.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from core.ladder import ModelConfig

# d×h matrices in the MLP of each kind (GELU: in, out; SwiGLU: gate, up, out).
MLP_MATRICES = {"gelu": 2, "swiglu": 3}

# Rounding a step count may miss the budget by at most this fraction of the budget.
BUDGET_TOLERANCE = 0.01


def param_counts(cfg: ModelConfig) -> tuple[int, int]:
    """(non_embedding, total) parameter counts of Transformer(cfg), computed analytically.

    Non-embedding excludes only the token embedding (vocab_size · d) and the head (d · V_out).
    """
    d, L, h = cfg.d_model, cfg.n_layer, cfg.mlp_hidden()
    per_block = 2 * d + 4 * d * d + MLP_MATRICES[cfg.mlp] * d * h  # 2 norms, qkv + proj, MLP
    if cfg.time_cond:
        per_block += 6 * d * d + 6 * d  # adaLN linear d -> 6d with bias
    non_embedding = L * per_block + d  # + final norm
    if cfg.time_cond:
        non_embedding += 2 * (d * d + d) + (2 * d * d + 2 * d)  # time MLP (2 linears) + final adaLN
    total = non_embedding + cfg.vocab_size * d + d * cfg.out_vocab_size
    return non_embedding, total


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
    if cfg.time_cond:
        per_sequence = 2 * 2 * d * d + L * 2 * 6 * d * d + 2 * 2 * d * d  # time MLP, adaLN, final
        flops += per_sequence / T
    return float(flops)


CONVENTIONS: dict[str, Callable[[ModelConfig], float]] = {
    "matmul": lambda cfg: 3.0 * forward_flops_per_token(cfg),  # forward + backward (2x forward)
    "6N": lambda cfg: 6.0 * param_counts(cfg)[0],  # Kaplan et al. 2020: 6 x non-embedding params
}


def train_flops_per_token(cfg: ModelConfig, convention: str = "matmul") -> float:
    """Training (forward + backward) FLOPs per token under a named convention."""
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown FLOP convention {convention!r}; known: {sorted(CONVENTIONS)}")
    return CONVENTIONS[convention](cfg)


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
