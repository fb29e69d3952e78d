"""Measured training throughput of one run's model: a few plain-PyTorch steps on random tokens.

`tokens_per_s(cfg)` is trainer work (it builds the model, its family and an optimizer), called by
the orchestrator's dry run and ETA (orchestrator/estimate.py) only when a probe is wanted, so the
driver imports torch then and only then. Wall time on a CPU does not follow FLOPs at tiny widths
(the softmax over the vocabulary is memory-bound, STACK.md), hence a measurement, not a FLOP/s figure.
"""
from __future__ import annotations

import time

import torch

from trainer.config import RunConfig
from trainer.families.registry import build_family
from trainer.job.objective import batch_loss
from trainer.model.transformer import Transformer
from trainer.plan import plan

WARMUP_STEPS = 2   # the first steps warm up allocators and are not timed


def tokens_per_s(cfg: RunConfig, steps: int = 6) -> float:
    """Median training tokens/s over `steps` timed steps of this run's model, on
    cfg.engine.threads CPU threads (the process's torch thread count is set to that)."""
    p = plan(cfg, cfg.data.vocab_size)
    torch.set_num_threads(cfg.engine.threads)
    fam = build_family(cfg.noise, p.model_cfg.out_vocab_size)
    model = Transformer(p.model_cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    b, t = cfg.train.batch_size, cfg.train.seq_len
    times = []
    for i in range(steps + WARMUP_STEPS):
        window = torch.randint(0, p.model_cfg.out_vocab_size, (b, t + 1), generator=gen)
        t0 = time.perf_counter()
        loss = batch_loss(model, fam, window, gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i >= WARMUP_STEPS:
            times.append(time.perf_counter() - t0)
    times.sort()
    return b * t / times[len(times) // 2]
