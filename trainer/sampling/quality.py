"""Quality of generated text: generative perplexity under a judge model, and unigram entropy.

- gen-PPL (Sahoo et al. 2024, 2602.15014): exp of the judge's mean next-token NLL on the samples.
  The judge here is an autoregressive model *of the same study* (same tokenizer and corpus),
  chosen by the sampling stage as the one with the lowest validation NELBO: offline and
  reproducible, unlike GPT-2-large on a download. Each sample is scored as the continuation of
  the end-of-text token, the context every document starts from in the training stream.
- unigram entropy per sequence (nats), averaged over sequences: repetitive, degenerate text games
  gen-PPL ("the the the" is very probable) but has low entropy, so the two are read together.

Pure torch; shapes: tokens (n, T) LongTensor of real-vocabulary ids.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


@torch.no_grad()
def judge_nll(judge: nn.Module, tokens: torch.Tensor, start_id: int, batch_size: int = 64) -> float:
    """Mean NLL per token (nats) of `tokens` (n, T) under a causal `judge`, each row conditioned on
    start_id: the judge reads [start_id, x_0 .. x_{T-2}] and predicts x_0 .. x_{T-1}."""
    if not judge.cfg.causal:
        raise ValueError("the judge must be an autoregressive (causal) model")
    n, T = tokens.shape
    if T > judge.cfg.seq_len:
        raise ValueError(f"samples of {T} tokens exceed the judge's seq_len {judge.cfg.seq_len}")
    judge.eval()
    device = next(judge.parameters()).device
    total = 0.0
    for i in range(0, n, batch_size):
        x = tokens[i:i + batch_size].to(device)
        inputs = torch.cat([torch.full_like(x[:, :1], start_id), x[:, :-1]], dim=1)
        logits = judge(inputs).float()
        total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x.reshape(-1),
                                 reduction="sum").item()
    return total / tokens.numel()


def gen_ppl(judge: nn.Module, tokens: torch.Tensor, start_id: int, batch_size: int = 64) -> float:
    """Generative perplexity exp(mean NLL/token) of `tokens` under `judge` (see judge_nll)."""
    return math.exp(judge_nll(judge, tokens, start_id, batch_size))


def unigram_entropy(tokens: torch.Tensor | np.ndarray) -> float:
    """Mean over rows of the entropy (nats) of each row's token frequencies. (n, T) -> float."""
    rows = np.asarray(tokens)
    if rows.ndim != 2 or rows.shape[1] == 0:
        raise ValueError(f"tokens must be (n, T) with T > 0, got shape {rows.shape}")
    out = []
    for row in rows:
        p = np.unique(row, return_counts=True)[1] / row.size
        out.append(float(-(p * np.log(p)).sum()))
    return float(np.mean(out))
