"""The training loop of one job in pieces: one optimizer step, one evaluation, one checkpoint.

`Loop` holds what they share (the running loss since the last evaluation, the clocks); the job
(trainer/job/train.py `_loop`) builds it, drives it step by step, and decides what a divergence or
the end means (the MLflow run's status, the exported weights).
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from core import schema as M
from core.flops import mfu
from core.schema import flop_step
from trainer.config import RunConfig
from trainer.data.loader import sample_batch
from trainer.job import checkpoint, objective
from trainer.job.objective import evaluate
from trainer.job.tracking import Tracker


def _noise_gen(seed: int, step: int, device) -> torch.Generator:
    # one stream per (seed, step): a resumed run draws exactly the noise of an uninterrupted one
    return torch.Generator(device=device).manual_seed(seed * 1_000_003 + step + 1)


@dataclass(eq=False, kw_only=True)
class Loop:
    """A running job's training loop in pieces: `step`, `evaluate` and `save`, and the state they
    share (train._loop drives them). Every rank runs the same pieces; only rank 0 has a tracker."""
    cfg: RunConfig
    p: object
    """The job's train.Plan (steps, flops_per_step, eval_steps, run_id)."""
    engine: object
    family: object
    place: object
    rank: int
    world: int
    tracker: Tracker | None
    root: Path
    mlflow_id: str | None
    progress: bool
    on_eval: Callable[[dict], None] | None
    train_tokens: np.ndarray
    val: np.ndarray
    """Fixed validation windows."""
    peak: float
    """Peak matmul FLOP/s of one rank (MFU's denominator)."""
    wall0: float
    """Training wall time before this job (from the checkpoint), seconds."""
    loss_sum: float
    loss_n: int
    """Training losses since the last evaluation (their mean is logged as train_loss)."""
    t0: float
    """time.perf_counter() when this job's loop started."""
    last_ckpt: float
    """time.monotonic() of the last checkpoint (or the start)."""
    last_eval_t: float
    last_eval_step: int
    """time.perf_counter() and step of the last evaluation (or the start): tokens/s since then."""
    clip: bool = False
    """Clip gradients here, not in DeepSpeed (engine.torch_clips)."""
    compiled: Callable | None = None
    """The compiled training loss (engine.compiled_loss), called with the engine's module; None:
    objective.loss through the engine (EngineConfig.compile)."""

    def step(self, step: int) -> tuple[float, bool, bool]:
        """One optimizer step: (training loss, diverged on any rank, checkpoint due on any rank)."""
        tc, place, engine, family = self.cfg.train, self.place, self.engine, self.family
        b_local = tc.batch_size // self.world
        rows = slice(self.rank * b_local, (self.rank + 1) * b_local)
        window = torch.from_numpy(sample_batch(self.train_tokens, tc.batch_size, tc.seq_len,
                                               seed=tc.seed, step=step,
                                               pool_tokens=tc.data_pool_tokens))
        batch = family.prepare(window.to(place.device), _noise_gen(tc.seed, step, place.device))
        local = batch.rows(rows)
        norm = family.loss_count(batch) / self.world       # global normaliser: see NoiseFamily.loss
        with place.autocast:
            if self.compiled is None:
                loss = objective.loss(engine, family, local, normalizer=norm)
            else:
                loss = self.compiled(engine.module, family, local, normalizer=norm)
        skipped = engine.skipped_steps
        engine.backward(loss)
        if self.clip:
            torch.nn.utils.clip_grad_norm_(engine.module.parameters(), tc.grad_clip, foreach=True)
        engine.step()
        value = loss.item()
        # DeepSpeed skips (rather than applies) a step whose gradients are non-finite: in fp32/bf16
        # there is no loss scale to lower, so that is divergence too, not something to train through.
        bad = not math.isfinite(value) or engine.skipped_steps > skipped
        due = time.monotonic() - self.last_ckpt > self.cfg.io.ckpt_every_min * 60
        flags = torch.tensor([1.0 if bad else 0.0, 1.0 if due else 0.0],   # on the device: NCCL-safe
                             device=place.device)
        if self.world > 1:
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        if flags[0] == 0:
            self.loss_sum, self.loss_n = self.loss_sum + value, self.loss_n + 1
        return value, bool(flags[0] > 0), bool(flags[1] > 0)

    def evaluate(self, step: int) -> float:
        """Validation NELBO at `step` on the fixed windows; logged (rank 0) and reported."""
        tc, p = self.cfg.train, self.p
        # eagerly: a compiled module would otherwise compile a no-grad graph at the eval batch too
        with self.place.autocast, torch.compiler.set_stance("force_eager"):
            nelbo = evaluate(self.engine, self.family, self.val, seed=12345, batch_size=32,
                             t_repeats=tc.eval_t_repeats, device=self.place.device, rank=self.rank,
                             world=self.world)
        now = time.perf_counter()
        tokens = step * tc.batch_size * tc.seq_len
        flops = step * p.flops_per_step
        tok_s = ((step - self.last_eval_step) * tc.batch_size * tc.seq_len
                 / max(now - self.last_eval_t, 1e-9))
        if self.tracker:
            pool = tc.data_pool_tokens or len(self.train_tokens)
            metrics = {M.METRIC_LOSS: nelbo, M.METRIC_TOKENS: tokens, M.METRIC_FLOPS: flops,
                       M.METRIC_WALL_TIME: self.wall0 + now - self.t0, M.METRIC_TOKENS_PER_S: tok_s,
                       M.METRIC_MFU: mfu(tok_s * p.flops_per_step / (tc.batch_size * tc.seq_len),
                                         self.peak * self.world),
                       M.METRIC_EPOCH: tokens / pool, M.METRIC_LR: self.engine.get_lr()[0],
                       **{M.flops_metric(name): tokens * f for name, f in p.flops_per_token.items()}}
            if step in p.readoff_steps:                   # a point of a trajectory study
                metrics[M.METRIC_READOFF] = p.readoff_steps[step]
            if self.loss_n:
                metrics[M.METRIC_TRAIN_LOSS] = self.loss_sum / self.loss_n
            self.tracker.log(flop_step(flops), metrics)
            self.tracker.flush()                          # live curves: one log_batch per evaluation
            if self.progress:
                print(f"[{p.run_id[:8]} {self.cfg.noise.family} {self.cfg.size}] step {step}/{p.steps} "
                      f"{flops:.3g}/{tc.budget_flops:.3g} FLOPs val_nelbo {nelbo:.4f} "
                      f"({nelbo / math.log(2):.3f} bits/token) {tok_s:,.0f} tok/s", flush=True)
        if self.on_eval:
            self.on_eval({"step": step, "steps": p.steps, "flops": flops,
                          "budget_flops": tc.budget_flops, "val_nelbo": nelbo, "tokens_per_s": tok_s})
        self.loss_sum, self.loss_n = 0.0, 0
        self.last_eval_t, self.last_eval_step = time.perf_counter(), step
        return nelbo

    def save(self, step: int, fork: bool = False) -> None:
        """Checkpoint at `step` (after MLflow has everything up to it); `fork`: the trunk's
        checkpoint a decay branch starts from, kept in forks/ (never rotated out)."""
        if self.tracker:
            self.tracker.flush()
        if fork:
            st = {"step": step, "forked_from": self.p.run_id}
            checkpoint.save(self.engine, checkpoint.fork_root(self.cfg.io.out_dir, self.p.run_id),
                            step, st, self.cfg.to_json(), checkpoint.KEEP_ALL, self.rank)
            return
        st = {"step": step, "wall_time_s": self.wall0 + time.perf_counter() - self.t0,
              "mlflow_run_id": self.mlflow_id, "loss_sum": self.loss_sum, "loss_n": self.loss_n}
        checkpoint.save(self.engine, self.root, step, st, self.cfg.to_json(), self.cfg.io.keep_ckpts,
                        self.rank)
        self.last_ckpt = time.monotonic()
