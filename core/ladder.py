"""The model's shape vocabulary, torch-free: `ModelConfig`, the MLP kinds and the size ladder.

Everything that must agree on a model's shape reads it from here: the model
(trainer/model/transformer.py builds a `Transformer` from a `ModelConfig`), the FLOP module
(core/flops.py counts it), the configs (trainer/config.py validates `size` and `mlp`), the run plan
(trainer/plan.py) and the sweeps (sweeps/grid.py ranks the ladder by FLOPs/token). No torch, so that
sweeps, configs and the orchestrator's driver never import it. `python -m trainer.model.transformer`
prints the ladder (counted by building each model on the meta device).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# Hidden width of each MLP kind as a function of (d_model, mlp_ratio). SwiGLU keeps the parameter
# count of a ratio-r GELU MLP by using 2/3 of its hidden width over three matrices (Shazeer 2020),
# rounded up to a multiple of 8 for matmul-friendly shapes.
MLP_HIDDEN = {
    "gelu": lambda d, r: int(round(r * d)),
    "swiglu": lambda d, r: (int(round(r * 2 * d / 3)) + 7) // 8 * 8,
}

# ---------------------------------------------------------------------------------------------
# Time conditioning: how (and whether) the model reads the diffusion time t. A per-run choice
# (RunConfig.time_cond; each family's default is FamilySpec.time_cond_default). The layers run once
# per *sequence*, so their parameters are never part of the backbone N (core/flops.py).
# Structure of a conditioned model (DiT, Peebles & Xie 2023, as 2602.15014's DiT builds it:
# s-sahoo/scaling-dllms models/dit.py TimestepEmbedder + DDiTBlock.adaLN_modulation +
# DDiTFinalLayer.adaLN_modulation):
#     sinusoid(t) (B, F)  ->  Linear(F, c), SiLU, Linear(c, c)  ->  silu  ->  c-wide condition
#     per block  Linear(c, 6d) with bias: shift, scale, gate for attention and for the MLP
#     final      Linear(c, 2d) with bias: shift, scale of the final norm
# ---------------------------------------------------------------------------------------------

FREQ_DIM = 256  # sinusoid features of t: scaling-dllms' TimestepEmbedder frequency_embedding_size
COND_DIM = 128  # default condition width c of "adaln": scaling-dllms configs/model/*.yaml cond_dim


@dataclass(frozen=True, kw_only=True)
class TimeCond:
    """One named way of conditioning on t; `widths` gives (F sinusoid features, c condition
    width) of a config, or None when the model takes no t at all."""
    name: str
    takes_t: bool  # the model's forward needs t
    widths: Callable[[Any], tuple[int, int] | None]
    summary: str  # what it is and where it comes from (`python -m trainer.model.transformer`)


def _registry(*options: TimeCond) -> dict[str, TimeCond]:
    return {o.name: o for o in options}


TIME_CONDS: dict[str, TimeCond] = _registry(
    TimeCond(name="none", takes_t=False, widths=lambda cfg: None,
             summary="no t input (2512.10858's GIDD model: EasyDeL GiddModel takes log_snr and "
                     "never uses it; MDLM / AR in 2602.15014, whose adaLN only ever sees t = 0)"),
    TimeCond(name="adaln", takes_t=True, widths=lambda cfg: (FREQ_DIM, cfg.cond_dim),
             summary="adaLN from a cond_dim-wide time embedding, sinusoid 256 -> cond_dim -> "
                     "cond_dim (2602.15014's Duo: scaling-dllms models/dit.py, cond_dim 128)"),
    TimeCond(name="adaln_full", takes_t=True, widths=lambda cfg: (cfg.d_model, cfg.d_model),
             summary="adaLN at full width, sinusoid d -> d -> d (the project's layout before "
                     "issue 13; kept to reproduce those runs)"),
)


def time_widths(cfg: Any) -> tuple[int, int] | None:
    """(F, c) of cfg's time conditioning, None without one; cfg read by attribute (time_cond,
    cond_dim, d_model), so any ModelConfig-like shape works (core/flops_cli.Shape)."""
    return TIME_CONDS[cfg.time_cond].widths(cfg)


def takes_t(cfg: Any) -> bool:
    """Whether the model built from cfg needs the diffusion time t in its forward (reads only
    cfg.time_cond, so a stand-in model's namespace needs nothing else)."""
    return TIME_CONDS[cfg.time_cond].takes_t


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    vocab_size: int  # rows of the input embedding (tokens; real vocab + 1 mask token where needed)
    out_vocab_size: int  # output classes (tokens; real vocab only, never the mask); <= vocab_size
    n_layer: int  # transformer blocks (count)
    d_model: int  # residual stream width (features)
    n_head: int  # attention heads (count); d_model % n_head == 0, head_dim even for rotary
    seq_len: int  # maximum sequence length (tokens); sizes the rotary tables
    mlp: str = "gelu"  # MLP kind, a key of MLP_HIDDEN: "gelu" or "swiglu" (gated)
    mlp_ratio: float = 4.0  # MLP hidden width / d_model for gelu (swiglu uses 2/3 of it), unitless
    causal: bool = False  # True: causal attention (AR baseline); False: bidirectional (diffusion)
    time_cond: str = "none"  # a key of TIME_CONDS ("none", "adaln", "adaln_full"); else t is needed
    cond_dim: int = COND_DIM  # condition width c of "adaln" (features); unused by the other options
    rope_base: float = 10000.0  # rotary base (wavelength scale, in positions)
    init_std: float = 0.02  # std of the normal init of embeddings and linear weights (unitless)

    def __post_init__(self) -> None:
        for name in ("vocab_size", "out_vocab_size", "n_layer", "d_model", "n_head", "seq_len",
                     "cond_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.out_vocab_size > self.vocab_size:
            raise ValueError(
                f"out_vocab_size ({self.out_vocab_size}) must be <= vocab_size ({self.vocab_size})"
            )
        if self.d_model % self.n_head:
            raise ValueError(f"n_head ({self.n_head}) must divide d_model ({self.d_model})")
        if self.head_dim() % 2:
            raise ValueError(
                f"n_head ({self.n_head}) gives an odd head_dim {self.head_dim()} for "
                f"d_model {self.d_model}; rotary embeddings need it even"
            )
        if self.mlp not in MLP_HIDDEN:
            raise ValueError(f"mlp must be one of {sorted(MLP_HIDDEN)}, got {self.mlp!r}")
        for name in ("mlp_ratio", "rope_base", "init_std"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        if not isinstance(self.causal, bool):
            raise ValueError(f"causal must be a bool, got {self.causal!r}")
        if self.time_cond not in TIME_CONDS:  # (a bool, the pre-issue-13 field, is rejected too)
            raise ValueError(
                f"time_cond must be one of {sorted(TIME_CONDS)}, got {self.time_cond!r}")

    def head_dim(self) -> int:
        """Width of one attention head (features)."""
        return self.d_model // self.n_head

    def mlp_hidden(self) -> int:
        """Hidden width of the MLP (features)."""
        return MLP_HIDDEN[self.mlp](self.d_model, self.mlp_ratio)


# ---------------------------------------------------------------------------------------------
# Size ladder. Non-embedding parameters for GELU ratio 4 are ~12·d²·L (4d² attention + 8d² MLP
# per block); neighbouring rows are ~1.7-3x apart. head_dim is 8 at the laptop widths (d <= 32),
# 16 up to d80, 32 up to d192, 64 above.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Size:
    n_layer: int  # transformer blocks (count)
    d_model: int  # residual width (features)
    n_head: int  # attention heads (count)


LADDER: dict[str, Size] = {
    # Laptop rows below L2-d24: at 8e11-2.7e12 FLOPs with BPE 512 the diffusion families' isoFLOP
    # minimum sits at ~6e4-2e5 training FLOPs/token (measured, sweeps/recipe.py), below L2-d24.
    "L1-d8": Size(n_layer=1, d_model=8, n_head=1),  # ~0.8k non-embedding (embeddings: 8k)
    "L1-d12": Size(n_layer=1, d_model=12, n_head=1),  # ~1.8k
    "L1-d16": Size(n_layer=1, d_model=16, n_head=2),  # ~3k non-embedding
    "L2-d16": Size(n_layer=2, d_model=16, n_head=2),  # ~6k
    "L2-d24": Size(n_layer=2, d_model=24, n_head=3),  # ~14k non-embedding
    "L2-d32": Size(n_layer=2, d_model=32, n_head=4),  # ~25k
    "L2-d48": Size(n_layer=2, d_model=48, n_head=3),  # ~55k
    "L2-d64": Size(n_layer=2, d_model=64, n_head=4),  # ~99k
    "L3-d80": Size(n_layer=3, d_model=80, n_head=5),  # ~231k
    "L3-d96": Size(n_layer=3, d_model=96, n_head=3),  # ~332k
    "L4-d128": Size(n_layer=4, d_model=128, n_head=4),  # ~787k
    "L5-d160": Size(n_layer=5, d_model=160, n_head=5),  # ~1.5M
    "L6-d192": Size(n_layer=6, d_model=192, n_head=6),  # ~2.7M
    "L6-d256": Size(n_layer=6, d_model=256, n_head=4),  # ~4.7M
    "L8-d320": Size(n_layer=8, d_model=320, n_head=5),  # ~9.8M
    "L12-d384": Size(n_layer=12, d_model=384, n_head=6),  # ~21M
    # GPU-cluster rows (sweeps/recipe.py CLUSTER): budgets of 1e17-1e20 FLOPs have compute-optimal
    # models of ~30M-1B parameters, and an isoFLOP grid needs sizes on both sides of them.
    "L12-d512": Size(n_layer=12, d_model=512, n_head=8),  # ~38M
    "L16-d640": Size(n_layer=16, d_model=640, n_head=10),  # ~79M
    "L18-d768": Size(n_layer=18, d_model=768, n_head=12),  # ~127M
    "L20-d1024": Size(n_layer=20, d_model=1024, n_head=16),  # ~252M
    "L24-d1280": Size(n_layer=24, d_model=1280, n_head=20),  # ~472M
    "L28-d1536": Size(n_layer=28, d_model=1536, n_head=24),  # ~793M
    "L32-d2048": Size(n_layer=32, d_model=2048, n_head=32),  # ~1.6B
    "L36-d2560": Size(n_layer=36, d_model=2560, n_head=40),  # ~2.8B
}


def model_config(
    size: str,
    *,
    vocab_size: int,
    out_vocab_size: int,
    seq_len: int,
    causal: bool = False,
    time_cond: str = "none",
    **overrides: object,
) -> ModelConfig:
    """ModelConfig for a named ladder size; `overrides` replace any other field (mlp, ...)."""
    if size not in LADDER:
        raise ValueError(f"unknown size {size!r}; known sizes: {', '.join(LADDER)}")
    s = LADDER[size]
    fields = dict(
        n_layer=s.n_layer,
        d_model=s.d_model,
        n_head=s.n_head,
        vocab_size=vocab_size,
        out_vocab_size=out_vocab_size,
        seq_len=seq_len,
        causal=causal,
        time_cond=time_cond,
    )
    fields.update(overrides)
    return ModelConfig(**fields)
