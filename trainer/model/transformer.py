"""Pre-norm transformer shared by every family (autoregressive baseline and diffusion models).

MECHANICS only: the architecture takes a `ModelConfig` (core/ladder.py, with the size ladder) and
nothing else (no trainer, no noise family). Opinionated choices that matter for scaling are fixed here and documented:

- rotary position embeddings on q, k (Su et al. 2021). The prototype in STACK.md showed a
  bidirectional model with learned absolute positions stalls at the unigram level at these sizes.
- untied input embedding / output head: the input has one more row than the output when a family
  needs a mask token, and the mask token is never predicted.
- optional adaLN time conditioning (DiT, Peebles & Xie 2023), one of core.ladder.TIME_CONDS: a
  sinusoid of t (F features) -> time MLP -> a c-wide condition -> Linear(c, 6d) per block and
  Linear(c, 2d) before the head, as 2602.15014's DiT builds it (s-sahoo/scaling-dllms
  models/dit.py). The modulation is zero-initialised, so a fresh time-conditioned model computes
  exactly the same function as an unconditioned one.

Shapes: B batch, T sequence length, d model width, H heads, D = d / H head width, V_out classes.
Imports only torch, the standard library and core.ladder; `python -m trainer.model.transformer`
prints the size ladder with its parameter counts by role (backbone N, time conditioning,
embedding), each size counted by building its model on the meta device.
"""

from __future__ import annotations

import argparse
import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from core.ladder import LADDER, TIME_CONDS, ModelConfig, model_config, time_widths

if TYPE_CHECKING:
    from trainer.model.kvcache import KVCache, LayerCache

# Scale applied to t in [0, 1] before the sinusoidal embedding: spreads one unit of diffusion time
# over the same range as DiT's 1000 integer timesteps, so the fastest frequency resolves ~1e-3 in t.
TIME_SCALE = 1000.0


# ---------------------------------------------------------------------------------------------
# Modules
# ---------------------------------------------------------------------------------------------


def rotary_tables(seq_len: int, head_dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape (seq_len, head_dim / 2): angle[p, i] = p · base^(-2i / head_dim)."""
    inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)  # (D/2,)
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float64), inv_freq)  # (T, D/2)
    return angles.cos().float(), angles.sin().float()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[..., i], x[..., i + D/2]) by the position's angle (half-split layout).

    x: (B, H, T, D); cos, sin: (T, D/2). Tables are cast to x's dtype so q, k stay in the autocast
    dtype (scaled_dot_product_attention needs q, k, v of one dtype).
    """
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    x1, x2 = x.chunk(2, dim=-1)  # (B, H, T, D/2) each
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features of t (B,) -> (B, dim), frequencies 10000^(-i / (dim/2)) as in DiT."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device) / half)  # (dim/2,)
    args = (t.float() * TIME_SCALE)[:, None] * freqs[None, :]  # (B, dim/2)
    return torch.cat((args.cos(), args.sin()), dim=-1)


class Attention(nn.Module):
    """Multi-head self-attention: fused QKV, rotary q/k, SDPA, output projection; no biases.

    `cache` (sampling only): x holds slots [start, start + T) of a causal model; their k, v are
    written to the cache and q attends to every cached slot up to its own. `attend` (B, 1, T, T)
    bool, True where query i may read key j, replaces the config's causal/bidirectional pattern
    (Eso-LM's attention over a per-sequence order, trainer/families/esolm.py).
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_head, self.causal = cfg.n_head, cfg.causal
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
        cache: LayerCache | None = None, start: int = 0, attend: torch.Tensor | None = None,
    ) -> torch.Tensor:
        B, T, d = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_head, d // self.n_head).permute(2, 0, 3, 1, 4)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)  # (B, H, T, D) each
        if attend is not None:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attend)       # (B, H, T, D)
        elif cache is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)  # (B, H, T, D)
        else:
            k, v = cache.extend(k, v, start)  # (B, H, start + T, D) each
            # query i sits at absolute position start + i and sees keys 0..start + i (SDPA's
            # is_causal aligns the mask top-left, wrong once start > 0); one query sees them all
            keys = torch.arange(start + T, device=x.device)
            mask = None if T == 1 else keys[None, :] <= start + keys[:T, None]  # (T, start + T)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(y.transpose(1, 2).reshape(B, T, d))  # (B, T, d)


class GeluMLP(nn.Module):
    """x -> W2 gelu(W1 x); two matrices d x h."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        h = cfg.mlp_hidden()
        self.fc = nn.Linear(cfg.d_model, h, bias=False)
        self.proj = nn.Linear(h, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x)))


class SwiGLUMLP(nn.Module):
    """x -> W2 (silu(W1 x) * W3 x); three matrices d x h (Shazeer 2020)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        h = cfg.mlp_hidden()
        self.fc = nn.Linear(cfg.d_model, 2 * h, bias=False)  # W1 and W3 fused: (d -> 2h)
        self.proj = nn.Linear(h, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.fc(x).chunk(2, dim=-1)
        return self.proj(F.silu(gate) * up)


MLPS: dict[str, type[nn.Module]] = {"gelu": GeluMLP, "swiglu": SwiGLUMLP}


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: x (B, T, d) * (1 + scale) + shift, with shift, scale (B, 1, d)."""
    return x * (1 + scale) + shift


class Block(nn.Module):
    """Pre-norm block: x + attn(norm(x)), then x + mlp(norm(x)), optionally adaLN-modulated.

    Time modulation uses gates (1 + g) rather than DiT's g: with the modulation zero-initialised,
    a fresh time-conditioned block equals the unconditioned one (and keeps the GPT-2 residual
    init), so time_cond starts as an exact no-op instead of an identity block.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.norm1 = nn.RMSNorm(cfg.d_model, eps=1e-6)
        self.attn = Attention(cfg)
        self.norm2 = nn.RMSNorm(cfg.d_model, eps=1e-6)
        self.mlp = MLPS[cfg.mlp](cfg)
        # silu(c) (B, c) -> (shift, scale, gate) for attention and for MLP: (B, 6d)
        widths = time_widths(cfg)
        self.ada = None if widths is None else nn.Linear(widths[1], 6 * cfg.d_model)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, c: torch.Tensor | None,
        cache: LayerCache | None = None, start: int = 0, attend: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if self.ada is None:
            x = x + self.attn(self.norm1(x), cos, sin, cache, start, attend)
            return x + self.mlp(self.norm2(x))
        mods = self.ada(c)[:, None, :].chunk(6, dim=-1)  # six (B, 1, d)
        shift1, scale1, gate1, shift2, scale2, gate2 = mods
        h = modulate(self.norm1(x), shift1, scale1)
        x = x + (1 + gate1) * self.attn(h, cos, sin, cache, start, attend)
        return x + (1 + gate2) * self.mlp(modulate(self.norm2(x), shift2, scale2))


class Transformer(nn.Module):
    """Token embedding -> n_layer blocks -> final RMSNorm -> untied head. Logits (B, T, V_out)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.embed = nn.Embedding(cfg.vocab_size, d)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm_f = nn.RMSNorm(d, eps=1e-6)
        self.head = nn.Linear(d, cfg.out_vocab_size, bias=False)
        self.time_widths = time_widths(cfg)  # (F, c), or None: no time input
        if self.time_widths is not None:
            F_, c = self.time_widths
            # sinusoid(t) (B, F) -> condition (B, c); computed once per sequence, shared by all
            # blocks (scaling-dllms TimestepEmbedder: Linear(256, c), SiLU, Linear(c, c))
            self.time_mlp = nn.Sequential(nn.Linear(F_, c), nn.SiLU(), nn.Linear(c, c))
            self.ada_f = nn.Linear(c, 2 * d)  # silu(c) -> (shift, scale) of the final norm
        cos, sin = rotary_tables(cfg.seq_len, cfg.head_dim(), cfg.rope_base)
        self.register_buffer("rope_cos", cos, persistent=False)  # (seq_len, D/2)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """normal(0, std) weights; residual projections std / sqrt(2 n_layer) (GPT-2, Radford et
        al. 2019: each block adds two branches to the residual stream); adaLN zero; time MLP
        fan-in scaled."""
        std = self.cfg.init_std
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=std)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
            if isinstance(module, nn.RMSNorm):
                nn.init.ones_(module.weight)
        for block in self.blocks:
            for proj in (block.attn.proj, block.mlp.proj):
                nn.init.normal_(proj.weight, mean=0.0, std=std / math.sqrt(2 * self.cfg.n_layer))
            if block.ada is not None:
                nn.init.zeros_(block.ada.weight)
                nn.init.zeros_(block.ada.bias)
        if self.time_widths is not None:
            # Fan-in init (std 1/sqrt(d)) keeps c = time_mlp(sinusoid(t)) at O(1) scale. With
            # init_std 0.02 two layers shrink c to ~1e-3 at d=32, so both the t signal and the
            # gradient reaching the zero-initialised adaLN weights (proportional to c) vanish.
            for layer in (self.time_mlp[0], self.time_mlp[2]):
                nn.init.normal_(layer.weight, mean=0.0, std=1.0 / math.sqrt(layer.in_features))
            nn.init.zeros_(self.ada_f.weight)
            nn.init.zeros_(self.ada_f.bias)

    def forward(self, idx: torch.Tensor, t: torch.Tensor | None = None,
                positions: torch.Tensor | None = None, *, attend: torch.Tensor | None = None,
                pos: torch.Tensor | None = None) -> torch.Tensor:
        """idx (B, T) token ids < vocab_size; t (B,) diffusion time in [0, 1] iff conditioned.
        Logits (B, T, V_out); with `positions` (a (B, T) bool mask) only those rows, (n, V_out) in
        row-major order: the output head, the widest matmul of a small model, runs only where the
        loss can be non-zero (masked diffusion scores its masked positions only).
        `attend` (B, T, T) bool: query i reads key j where True, instead of cfg.causal's pattern;
        `pos` (B, T) long: each input's rotary position (default 0..T−1). Eso-LM passes both
        (trainer/families/esolm.py); with `pos`, T may exceed seq_len (its two-stream pass is 2T
        long), but no position may."""
        B, T = idx.shape
        if pos is None and T > self.cfg.seq_len:
            raise ValueError(f"sequence length {T} exceeds seq_len {self.cfg.seq_len}")
        if (self.time_widths is not None) != (t is not None):
            raise ValueError(
                f"t must be given iff time_cond is not 'none' (time_cond={self.cfg.time_cond!r}, "
                f"t given: {t is not None})"
            )
        c = None
        if t is not None:
            if t.shape != (B,):
                raise ValueError(f"t must have shape ({B},), got {tuple(t.shape)}")
            emb = timestep_embedding(t, self.time_widths[0]).to(self.embed.weight.dtype)  # (B, F)
            c = F.silu(self.time_mlp(emb))  # (B, c); every adaLN linear reads silu(c), as in DiT
        cos, sin = self._rotary(T, pos)
        if attend is not None:
            attend = attend[:, None]                                 # (B, 1, T, T): every head
        x = self.embed(idx)  # (B, T, d)
        for block in self.blocks:
            x = block(x, cos, sin, c, attend=attend)
        x = self.norm_f(x)
        if c is not None:
            shift, scale = self.ada_f(c)[:, None, :].chunk(2, dim=-1)  # (B, 1, d) each
            x = modulate(x, shift, scale)
        if positions is not None:
            if positions.shape != (B, T):
                raise ValueError(f"positions must have shape ({B}, {T}), got {tuple(positions.shape)}")
            x = x[positions]  # (n, d)
        return self.head(x)  # (B, T, V_out), or (n, V_out)

    def _rotary(self, T: int, pos: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin for T inputs: (T, D/2) at positions 0..T−1, or (B, 1, T, D/2) at `pos` (B, T)."""
        if pos is None:
            return self.rope_cos[:T], self.rope_sin[:T]
        if int(pos.max()) >= self.cfg.seq_len or int(pos.min()) < 0:
            raise ValueError(f"positions must be in [0, {self.cfg.seq_len}), got "
                             f"[{int(pos.min())}, {int(pos.max())}]")
        return self.rope_cos[pos][:, None], self.rope_sin[pos][:, None]

    def decode(self, idx: torch.Tensor, cache: KVCache, pos: torch.Tensor | None = None,
               keep: int | None = None) -> torch.Tensor:
        """Incremental causal forward (sampling only): idx (B, T) are the tokens of cache slots
        [cache.length, cache.length + T); each attends to every slot up to its own. Returns their
        logits (B, T, V_out), equal to the full causal forward's at those slots, and writes their
        keys/values to `cache`, of which the first `keep` (default all) count as decoded.
        Slots are positions (the AR baseline) unless `pos` (B, T) gives each token's rotary
        position: Eso-LM decodes in a per-sequence order and keeps only its clean tokens' entries
        (trainer/sampling/esolm.py)."""
        B, T = idx.shape
        start = cache.length
        if start + T > self.cfg.seq_len:
            raise ValueError(f"decoding to position {start + T} exceeds seq_len {self.cfg.seq_len}")
        if pos is None:
            cos, sin = self.rope_cos[start : start + T], self.rope_sin[start : start + T]  # (T, D/2)
        else:
            cos, sin = self._rotary(T, pos)
        x = self.embed(idx)  # (B, T, d)
        for block, layer in zip(self.blocks, cache.layers):
            x = block(x, cos, sin, None, layer, start)
        cache.length = start + (T if keep is None else keep)
        return self.head(self.norm_f(x))  # (B, T, V_out)

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count; non-embedding excludes the token embedding and the output head only
        (norms and time-conditioning layers count as non-embedding). The N of the scaling laws
        is `param_groups()["backbone"]`, which leaves out the time conditioning too."""
        total = sum(p.numel() for p in self.parameters())
        if non_embedding:
            total -= self.embed.weight.numel() + self.head.weight.numel()
        return total

    def param_groups(self) -> dict[str, int]:
        """Parameters by role, counted on the module tree: "embedding" (token embedding + head),
        "time_cond" (time MLP, every adaLN linear: run once per sequence) and "backbone" (the
        rest: blocks and final norm, run at every token). core.flops.param_counts computes the
        same three analytically."""
        embedding = self.embed.weight.numel() + self.head.weight.numel()
        time_layers = [getattr(self, "time_mlp", None), getattr(self, "ada_f", None),
                       *(block.ada for block in self.blocks)]
        time_cond = sum(p.numel() for m in time_layers if m is not None for p in m.parameters())
        total = sum(p.numel() for p in self.parameters())
        return {"backbone": total - embedding - time_cond, "time_cond": time_cond,
                "embedding": embedding}


# ---------------------------------------------------------------------------------------------
# CLI: print the ladder
# ---------------------------------------------------------------------------------------------


def ladder_rows(vocab: int, seq_len: int, time_cond: str = "none", cond_dim: int | None = None
                ) -> list[tuple[str, int, int, int, int, int, int, int]]:
    """(name, layers, width, heads, backbone N, time-conditioning params, embedding params, total)
    per ladder size, counted by building each model on the meta device (no memory, no init cost)."""
    extra = {} if cond_dim is None else {"cond_dim": cond_dim}
    rows = []
    for name, s in LADDER.items():
        cfg = model_config(name, vocab_size=vocab, out_vocab_size=vocab, seq_len=seq_len,
                           time_cond=time_cond, **extra)
        with torch.device("meta"):
            model = Transformer(cfg)
        g = model.param_groups()
        rows.append((name, s.n_layer, s.d_model, s.n_head, g["backbone"], g["time_cond"],
                     g["embedding"], sum(g.values())))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Print the model size ladder.")
    parser.add_argument("--vocab", type=int, default=512, help="input = output vocabulary size")
    parser.add_argument("--seq-len", type=int, default=128, help="maximum sequence length")
    parser.add_argument("--time-cond", choices=sorted(TIME_CONDS), default="adaln",
                        help="time conditioning counted in the t-cond column (default %(default)s)")
    parser.add_argument("--cond-dim", type=int, default=None, help="adaln condition width")
    args = parser.parse_args(argv)
    print(f"ladder (gelu, ratio 4), vocab {args.vocab}, seq_len {args.seq_len}, "
          f"time_cond {args.time_cond}: {TIME_CONDS[args.time_cond].summary}")
    print("N = backbone: per-token non-embedding parameters, the same for every family; the "
          "laws are fitted on it")
    print(f"{'name':<10} {'layers':>6} {'width':>6} {'heads':>6} {'N (backbone)':>14} "
          f"{'t-cond':>10} {'embedding':>12} {'total':>14}")
    for name, n_layer, d, h, backbone, tc, emb, total in ladder_rows(
            args.vocab, args.seq_len, args.time_cond, args.cond_dim):
        print(f"{name:<10} {n_layer:>6} {d:>6} {h:>6} {backbone:>14,} {tc:>10,} {emb:>12,} "
              f"{total:>14,}")


if __name__ == "__main__":
    main()
