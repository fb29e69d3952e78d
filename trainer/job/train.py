"""One training job = one point of a scaling grid. `train(config)` for the orchestrator, and

    python -m trainer.job.train --config run.json [--set train.lr=1e-3 ...]

Compute drives the run: the FLOP budget fixes the step count (within 1%); evaluation happens at
evenly spaced steps (hence FLOPs) and at the end, on fixed validation windows with fixed noise.
The same script runs as one launcher-less process or under torchrun / the deepspeed launcher.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from core import schema as M
from core.schema import STEP_UNIT
from trainer.config import RunConfig
from trainer.data.loader import load_corpus, validation_windows
from trainer.families.registry import build_family
from trainer.job import checkpoint
from trainer.job.engine import (build_engine, compiled_loss, init_distributed, placement,
                                 torch_clips)
from trainer.job.loop import Loop
from trainer.job.tracking import Tracker
from trainer.model.transformer import Transformer
from trainer.plan import Plan, branch_configs, plan
from trainer.tools.peak import matmul_peak_flops

EXIT_BUSY = 75   # EX_TEMPFAIL: another job is writing this run; nothing was done, try again later
WEIGHTS = "model.pt"  # final fp32 state_dict of a FINISHED run: out_dir/<run_id>/model.pt


@dataclass
class RunResult:
    run_id: str
    status: str                       # FINISHED | FAILED | SKIPPED (already finished) | BUSY
                                      # (another job holds the run's lock: nothing done)
    mlflow_run_id: str | None
    steps: int
    final_val_nelbo: float | None
    resumed_from: int = 0             # optimizer step the run resumed at (0 = fresh)
    reason: str | None = None
    wall_seconds: float = 0.0         # this call's wall time, start to end (bench/)
    loop_seconds: float = 0.0         # of which the training loop (steps + evaluations)
    log_seconds: float = 0.0          # of which talking to MLflow (rank 0)


def _tags(p: Plan) -> dict[str, str]:
    c = p.cfg
    tags = {M.TAG_ROLE: M.ROLE_TRIAL, M.TAG_FAMILY: c.noise.family, M.TAG_SIZE: c.size,
            M.TAG_KNOB: "" if c.noise.knob() is None else str(c.noise.knob()),
            M.TAG_KNOB_LABEL: c.noise.knob_label(),
            M.TAG_BUDGET: repr(c.train.budget_flops), M.TAG_SWEEP: c.sweep,
            M.TAG_RUN_ID: p.run_id, M.TAG_STEP_UNIT: STEP_UNIT}
    if c.io.parent_run_id:
        tags[M.TAG_PARENT] = c.io.parent_run_id
    if c.train.trunk_id or c.train.readoffs or c.train.forks:
        tags[M.TAG_TRAJECTORY] = M.TRAJ_BRANCH if c.train.trunk_id else M.TRAJ_TRUNK
        tags[M.TAG_TRUNK] = c.train.trunk_id or p.run_id
    if c.train.readoff:
        tags[M.TAG_READOFF] = c.train.readoff
    return tags


def _params(p: Plan) -> dict[str, str]:
    tc = p.cfg.train
    return {**p.cfg.flat(), M.PARAM_N_BACKBONE: str(p.n_backbone),
            M.PARAM_N_TIME_COND: str(p.n_time_cond), M.PARAM_TIME_COND: p.model_cfg.time_cond,
            M.PARAM_N_NONEMBED: str(p.n_nonembed), M.PARAM_N_TOTAL: str(p.n_total),
            M.PARAM_FLOPS_PER_TOKEN: repr(p.flops_per_step / (tc.batch_size * tc.seq_len)),
            M.PARAM_TOKENS_PER_STEP: str(tc.batch_size * tc.seq_len), M.PARAM_STEPS: str(p.steps),
            **{M.flops_per_token_param(name): repr(f) for name, f in p.flops_per_token.items()}}


def _bcast(obj, rank: int, world: int):
    if world == 1:
        return obj
    box = [obj if rank == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def export_weights(engine, path: Path, rank: int, partitioned: bool) -> Path:
    """Write the model's plain fp32 state_dict to `path` (rank 0; tmp file + os.replace, so a
    reader never sees half a file) and return its absolute path. Under ZeRO-3 (`partitioned`) each
    rank holds a shard of every parameter: all ranks must call this to take part in the gather."""
    import deepspeed
    params = list(engine.module.parameters())
    gather = (deepspeed.zero.GatheredParameters(params, modifier_rank=None) if partitioned
              else contextlib.nullcontext())
    with gather:
        if rank == 0:
            state = {k: v.detach().float().cpu().clone()
                     for k, v in engine.module.state_dict().items()}
    if rank == 0:
        tmp = path.with_name(path.name + ".tmp")
        torch.save(state, tmp)
        os.replace(tmp, path)
    if dist.is_initialized():
        dist.barrier()
    return path.resolve()


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived while `train` ran: the job was told to stop, like Ctrl-C (run KILLED)."""


@contextlib.contextmanager
def _sigterm_raises():
    """For the duration of `train` only, SIGTERM raises `Terminated` so that the run is marked
    KILLED and the lock released. Only where SIGTERM still has its default action and only in the
    main thread: a launcher's or Ray worker's own handler is left alone, and nothing stays
    installed after `train` returns."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL):
        yield
        return

    def handler(signum, frame):
        raise Terminated("SIGTERM")

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


@contextlib.contextmanager
def _marked_on_error(tracker: Tracker | None, tag: str):
    """Any exception once the MLflow run exists marks it FAILED (KILLED for an interrupt) with the
    reason in dlm.failure, then propagates: no run is left RUNNING by a job that has ended."""
    try:
        yield
    except BaseException as exc:
        if tracker is not None and tracker.run_id:
            status = tracker.abort(exc)
            print(f"[{tag}] MLflow run {tracker.run_id} marked {status}: {type(exc).__name__}: "
                  f"{str(exc)[:300]}", file=sys.stderr, flush=True)
        raise


def train(cfg: RunConfig, *, progress: bool = True,
          on_eval: Callable[[dict], None] | None = None) -> RunResult:
    """Run (or resume, or skip if finished) one job. Safe to call again with the same config.

    One writer per run: rank 0 holds out_dir/<run_id>/train.lock for the job's life; a second job
    on the same run returns status BUSY at once (reason: who holds it) and touches nothing.

    `on_eval`, if given, is called on every rank after every evaluation with a dict of step, steps,
    flops, budget_flops, val_nelbo, tokens_per_s (the orchestrator forwards rank 0's as progress;
    every rank calls it because a Ray Train report is a barrier that all ranks must reach). The
    evaluation's metrics are already in MLflow when it is called."""
    started = time.perf_counter()
    corpus = load_corpus(cfg.data)
    p = plan(cfg, corpus.vocab_size)                      # config errors surface before any writes
    tc = cfg.train
    place = placement(cfg.engine)
    rank, world = init_distributed(place)
    if tc.batch_size % world or tc.eval_seqs % world:
        raise ValueError(f"train.batch_size ({tc.batch_size}) and train.eval_seqs ({tc.eval_seqs}) "
                         f"must be divisible by the {world} ranks")
    lock = checkpoint.RunLock(Path(cfg.io.out_dir) / p.run_id) if rank == 0 else None
    holder = _bcast(lock.acquire() if lock else None, rank, world)
    if holder:
        reason = (f"run {p.run_id} is busy: {Path(cfg.io.out_dir) / p.run_id / checkpoint.LOCK} is "
                  f"held by {holder}; not starting a second writer")
        print(f"[{p.run_id[:8]}] {reason}", file=sys.stderr, flush=True)
        return RunResult(p.run_id, "BUSY", None, p.steps, None, reason=reason,
                         wall_seconds=time.perf_counter() - started)
    try:
        with _sigterm_raises():
            return _train(cfg, p, corpus, place, rank, world, progress, on_eval, started)
    finally:
        if lock:
            lock.release()


def train_trajectory(cfg: RunConfig, *, progress: bool = True,
                     on_eval: Callable[[dict], None] | None = None) -> RunResult:
    """`train(cfg)`, then (a trajectory trunk, once it is FINISHED or was) each of its decay
    branches (train.forks) from the trunk's checkpoints, as runs of their own. The result is the
    trunk's, with status the first non-finished one's and the branches' times added."""
    res = train(cfg, progress=progress, on_eval=on_eval)
    if res.status not in ("FINISHED", "SKIPPED"):
        return res
    for branch in branch_configs(cfg):
        b = train(branch, progress=progress, on_eval=on_eval)
        res.wall_seconds += b.wall_seconds
        res.loop_seconds += b.loop_seconds
        res.log_seconds += b.log_seconds
        if b.status not in ("FINISHED", "SKIPPED"):
            res.status, res.reason = b.status, f"branch {b.run_id} at {branch.train.budget_flops:.4g} FLOPs: {b.reason}"
            break
    return res


def _train(cfg: RunConfig, p: Plan, corpus, place, rank: int, world: int, progress: bool,
           on_eval: Callable[[dict], None] | None, started: float) -> RunResult:
    tc = cfg.train
    tracker = Tracker(cfg.io.tracking_uri, cfg.io.experiment) if rank == 0 else None
    existing = tracker.existing(p.run_id) if tracker else None
    done = _bcast(existing is not None and existing.info.status == "FINISHED", rank, world)
    if done:
        final = existing.data.metrics.get(M.METRIC_LOSS) if existing else None
        return RunResult(p.run_id, "SKIPPED", existing.info.run_id if existing else None, p.steps, final)

    def build():
        torch.manual_seed(tc.seed)                        # identical init on every rank and build
        model = Transformer(p.model_cfg).to(place.device)
        return build_engine(model, tc, cfg.engine, place, world, p.steps)

    family = build_family(cfg.noise, corpus.vocab_size, corpus.eot_id)
    root = checkpoint.ckpt_root(cfg.io.out_dir, p.run_id)
    resume = checkpoint.load_latest(build, root)          # whole checkpoint, or a fresh engine
    if resume.state is None and p.fork_step is not None:  # a decay branch: from its trunk's fork
        resume = _fork(resume, build, cfg, p)
    engine, state = resume.engine, resume.state or {}
    start = state.get("step", 0)
    if (resume.broken or resume.fork) and rank == 0:
        print(f"[{p.run_id[:8]}] {resume.note}", file=sys.stderr, flush=True)
    mlflow_id = state.get("mlflow_run_id") or (existing.info.run_id if existing else None)
    # Checkpoints existed but none loaded: the old MLflow run's points past the last good state
    # belong to a trajectory this job abandons, so the restart gets its own run (the old one is
    # marked FAILED, superseded) rather than a history that mixes the two.
    superseded = mlflow_id if resume.broken and resume.state is None else None
    if superseded:
        mlflow_id = None
    with _marked_on_error(tracker, p.run_id[:8]):
        if tracker:
            tracker.start({**_tags(p), M.TAG_WORLD_SIZE: str(world)}, _params(p), mlflow_id,
                          run_name=f"{cfg.noise.family}-{cfg.size}-{p.run_id[:6]}")
            mlflow_id = tracker.run_id
        mlflow_id = _bcast(mlflow_id, rank, world)
        if tracker:
            notes = [resume.note, *tracker.notes]
            if superseded:
                tracker.supersede(superseded, f"its checkpoints did not load ({'; '.join(resume.broken)}); "
                                              f"the job restarted from step 0 on a fresh engine")
                notes.append(f"previous MLflow run {superseded} superseded")
            tracker.set_tags({M.TAG_RESUME: "; ".join(notes)})
        if rank == 0:
            root.mkdir(parents=True, exist_ok=True)
            (root.parent / "config.json").write_text(cfg.to_json())
        return _loop(cfg, p, engine, family, corpus, place, rank, world, tracker, root, state,
                     start, mlflow_id, progress, on_eval, started)


def _fork(resume: checkpoint.Resume, build, cfg: RunConfig, p: Plan) -> checkpoint.Resume:
    """A fresh decay branch starts from its trunk's checkpoint at its fork step (the same weights,
    optimizer and step as its own run would have there); without one it trains from step 0."""
    root = checkpoint.fork_root(cfg.io.out_dir, cfg.train.trunk_id)
    tag = checkpoint.fork_tag(p.fork_step)
    if tag not in checkpoint._agree(checkpoint.complete_tags(root)):
        resume.fork = f"fresh: trunk {cfg.train.trunk_id} has no fork {root / tag}, trained from step 0"
        return resume
    resume.engine = None
    forked = checkpoint.load_latest(build, root, only=tag)
    own, forked.broken = forked.broken, resume.broken     # this run's broken tags, not the trunk's
    if forked.state is None:
        forked.fork = f"fresh: fork {root / tag} did not load ({'; '.join(own)}), trained from step 0"
        return forked
    # The LR of the next step was set by the trunk's schedule (constant); this run's decays from here.
    sched = forked.engine.lr_scheduler
    for group, base, lam in zip(sched.optimizer.param_groups, sched.base_lrs, sched.lr_lambdas):
        group["lr"] = base * lam(sched.last_epoch)
    sched._last_lr = [g["lr"] for g in sched.optimizer.param_groups]
    # the trunk's own wall time, MLflow run and running loss are not this run's
    forked.state = {"step": forked.state["step"], "forked_from": cfg.train.trunk_id}
    forked.fork = f"forked from trunk {cfg.train.trunk_id} at step {p.fork_step} ({root / tag})"
    return forked


def _loop(cfg: RunConfig, p: Plan, engine, family, corpus, place, rank: int, world: int,
          tracker: Tracker | None, root: Path, state: dict, start: int, mlflow_id: str | None,
          progress: bool, on_eval, started: float) -> RunResult:
    tc = cfg.train
    peak = matmul_peak_flops(place.device, place.dtype, cfg.engine.threads) if rank == 0 else 1.0
    job = Loop(cfg=cfg, p=p, engine=engine, family=family, place=place, rank=rank, world=world,
               tracker=tracker, root=root, mlflow_id=mlflow_id, progress=progress, on_eval=on_eval,
               train_tokens=corpus.train, val=validation_windows(corpus.val, tc.eval_seqs, tc.seq_len),
               peak=peak, wall0=state.get("wall_time_s", 0.0), t0=time.perf_counter(),
               loss_sum=state.get("loss_sum", 0.0), loss_n=state.get("loss_n", 0),
               last_ckpt=time.monotonic(), last_eval_t=time.perf_counter(), last_eval_step=start,
               clip=torch_clips(cfg.engine, place),
               compiled=compiled_loss(cfg.engine.threads) if cfg.engine.compiles(p.steps - start) else None)
    eval_set = set(p.eval_steps)
    engine.train()
    nelbo = None
    loop_t0 = time.perf_counter()
    for step in range(start, p.steps):
        if step in eval_set:
            nelbo = job.evaluate(step)
            engine.train()
        value, diverged, ckpt_due = job.step(step)
        if diverged:
            why = f"training loss {value}" if not math.isfinite(value) else "non-finite gradients"
            reason = f"diverged at step {step + 1}: {why}"
            if tracker:
                tracker.finish("FAILED", reason)
            print(f"[{p.run_id[:8]}] {reason}; last good checkpoint kept in {root}", file=sys.stderr)
            return RunResult(p.run_id, "FAILED", mlflow_id, p.steps, nelbo, start, reason,
                             time.perf_counter() - started, time.perf_counter() - loop_t0,
                             tracker.log_seconds if tracker else 0.0)
        if step + 1 in p.fork_steps:
            job.save(step + 1, fork=True)
        if ckpt_due and step + 1 < p.steps:
            job.save(step + 1)
    nelbo = job.evaluate(p.steps)
    job.save(p.steps)
    weights = export_weights(engine, root.parent / WEIGHTS, rank, cfg.engine.zero_stage == 3)
    if tracker:
        tracker.finish("FINISHED", extra_tags={M.TAG_FINAL_VAL_NELBO: repr(nelbo),
                                               M.TAG_WEIGHTS: str(weights)})
    loop_seconds = time.perf_counter() - loop_t0
    return RunResult(p.run_id, "FINISHED", mlflow_id, p.steps, nelbo, start, None,
                     time.perf_counter() - started, loop_seconds, tracker.log_seconds if tracker else 0.0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help="RunConfig JSON file (defaults for missing fields)")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="override a field, e.g. --set train.lr=1e-3 --set noise.family=uniform")
    ap.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    args = ap.parse_args(argv)
    try:
        base = RunConfig.from_dict(json.loads(Path(args.config).read_text())) if args.config else RunConfig()
        cfg = base.with_overrides(args.set)
    except (ValueError, TypeError, OSError, json.JSONDecodeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.print_config:
        print(cfg.to_json())
        return 0
    try:
        res = train_trajectory(cfg)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:                  # Ctrl-C or SIGTERM: the run is marked KILLED
        print(f"interrupted ({type(exc).__name__}); run the same command again to resume",
              file=sys.stderr)
        return 143 if isinstance(exc, Terminated) else 130
    print(json.dumps(res.__dict__))
    if res.status == "BUSY":
        print(f"error: {res.reason}", file=sys.stderr)
        return EXIT_BUSY
    return 0 if res.status in ("FINISHED", "SKIPPED") else 1


if __name__ == "__main__":
    sys.exit(main())
