"""KV cache of a causal Transformer (trainer/model/transformer.py), for autoregressive sampling only.

`Transformer.decode(idx, cache)` runs positions [cache.length, cache.length + T) and appends their
keys and values (after rotary) to every layer's buffers; training never builds one.
"""
from __future__ import annotations

import torch

from core.ladder import ModelConfig, takes_t


class LayerCache:
    """One layer's keys and values after rotary, (B, H, seq_len, D) buffers; sampling time only."""

    def __init__(self, shape: tuple[int, ...], device, dtype: torch.dtype) -> None:
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)

    def extend(self, k: torch.Tensor, v: torch.Tensor, start: int) -> tuple[torch.Tensor, ...]:
        """Store k, v (B, H, T, D) at positions [start, start + T); return those of [0, start + T)."""
        end = start + k.shape[2]
        self.k[:, :, start:end], self.v[:, :, start:end] = k, v
        return self.k[:, :, :end], self.v[:, :, :end]


class KVCache:
    """Keys/values of every layer for positions [0, length) of a causal model: incremental decoding
    (`Transformer.decode`) costs one new position per step instead of re-running the prefix."""

    def __init__(self, cfg: ModelConfig, batch: int, device=None, dtype=torch.float32,
                 ordered: bool = False) -> None:
        """ordered: the model attends causally over an order of the caller's (Eso-LM), so a
        non-causal config may decode in that order."""
        if not (cfg.causal or ordered) or takes_t(cfg):
            raise ValueError("a KV cache needs a causal model without time conditioning "
                             f"(causal={cfg.causal}, time_cond={cfg.time_cond})")
        shape = (batch, cfg.n_head, cfg.seq_len, cfg.head_dim())
        self.layers = [LayerCache(shape, device, dtype) for _ in range(cfg.n_layer)]
        self.length = 0  # positions decoded so far (tokens)
