"""Measured training throughput of one run's model: a few of the trainer's own steps on random tokens.

`tokens_per_s(cfg)` is trainer work (it builds the run's DeepSpeed engine and family as
trainer/job/train.py does, and steps a `Loop` as the job does: data sampling, noise, loss,
backward, clip, optimizer, the per-step sync; compiled when the run would compile,
EngineConfig.compiles), called by the orchestrator's dry run and ETA (orchestrator/estimate.py) only when
a probe is wanted, so the driver imports torch then and only then. `probe_worker` is what the
orchestrator runs in each of its `slots` probe processes, so that probes run under the sweep's
own concurrency (two one-thread trials share caches and memory bandwidth). Wall time on a CPU does
not follow FLOPs at tiny widths (STACK.md), hence a measurement, not a FLOP/s figure.
"""
from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from trainer.config import RunConfig
from trainer.families.registry import build_family
from trainer.job.engine import build_engine, compiled_loss, init_distributed, placement, torch_clips
from trainer.job.loop import Loop
from trainer.model.transformer import Transformer
from trainer.plan import plan

WARMUP_STEPS = 2      # the first steps warm up allocators (and compile) and are not timed
MIN_TIMED_S = 1.0     # and at least this long: a median over a second of steps, not over 6 ms
RANDOM_TOKENS = 1 << 18


def bare_loop(cfg: RunConfig, place, tokens: np.ndarray, compiled: bool, root: Path) -> Loop:
    """A job's Loop without a tracker, evaluation or checkpoints: `loop.step(i)` is the job's step."""
    tc, p = cfg.train, plan(cfg, cfg.data.vocab_size)
    torch.manual_seed(tc.seed)
    engine = build_engine(Transformer(p.model_cfg).to(place.device), tc, cfg.engine, place, 1, p.steps)
    engine.train()
    now = time.perf_counter()
    return Loop(cfg=cfg, p=p, engine=engine, family=build_family(cfg.noise, cfg.data.vocab_size),
                place=place, rank=0, world=1, tracker=None, root=root, mlflow_id=None, progress=False,
                on_eval=None, train_tokens=tokens, val=np.zeros((0, tc.seq_len + 1), np.int64),
                peak=1.0, wall0=0.0, loss_sum=0.0, loss_n=0, t0=now, last_ckpt=time.monotonic(),
                last_eval_t=now, last_eval_step=0, clip=torch_clips(cfg.engine, place),
                compiled=compiled_loss(cfg.engine.threads) if compiled else None)


def measure(cfg: RunConfig, steps: int = 6, barrier=None) -> tuple[float, float]:
    """(median training tokens/s over at least `steps` timed steps and MIN_TIMED_S, seconds the
    warm-up took beyond steady steps: the compile, when the run compiles) of this run's job step,
    one rank, on cfg.engine.threads CPU threads. `barrier` (a multiprocessing.Barrier shared by
    the concurrent probes): waited on after the warm-up and after the timing, so that every
    probe times its steps while the others time theirs (steady training, as concurrent trials
    run), not while another one compiles."""
    p = plan(cfg, cfg.data.vocab_size)
    place = placement(cfg.engine)
    init_distributed(place)
    compiled = cfg.engine.compiles(p.steps)
    tokens = np.random.default_rng(0).integers(0, cfg.data.vocab_size, RANDOM_TOKENS, dtype=np.int64)
    loop = bare_loop(cfg, place, tokens, compiled, Path("/nonexistent-probe"))
    warm = WARMUP_STEPS + (3 if compiled else 0)        # masked's scored positions recompile once
    t0 = time.perf_counter()
    for i in range(warm):
        loop.step(i)
    warm_s = time.perf_counter() - t0
    if barrier is not None:
        barrier.wait()
    times: list[float] = []
    i = warm
    while len(times) < steps or sum(times) < MIN_TIMED_S:
        t0 = time.perf_counter()
        loop.step(i)
        times.append(time.perf_counter() - t0)
        i += 1
    if barrier is not None:
        barrier.wait()
    loop.engine.destroy()
    step_s = statistics.median(times)
    return cfg.train.batch_size * cfg.train.seq_len / step_s, max(0.0, warm_s - warm * step_s)


def tokens_per_s(cfg: RunConfig, steps: int = 6) -> float:
    return measure(cfg, steps)[0]


_BARRIER = None


def init_worker(barrier) -> None:
    """Pool initializer of a probe process (orchestrator/estimate.py)."""
    global _BARRIER
    import os
    _BARRIER = barrier
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from trainer.job.engine import quiet_logs
    quiet_logs()


def probe_worker(cfg_json: str) -> tuple[float, float]:
    """One probe in a probe process: the config travels as JSON."""
    return measure(RunConfig.from_dict(json.loads(cfg_json)), barrier=_BARRIER)
