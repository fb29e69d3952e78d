"""DeepSpeed checkpoints of one run: out_dir/<run_id>/ckpt/step00000123/{DeepSpeed files, state.json,
config.json}.

`state.json` (the loop's own state: step, cumulative wall time, the MLflow run id, the running train
loss) is JSON rather than a pickle in the DeepSpeed client_state, so it loads without unpickling;
it is written by rank 0 *after* every rank's shards are on disk, so its presence marks a complete
checkpoint. The resolved config is saved next to every checkpoint.

Unpickling: our state is JSON, so nothing of ours needs `torch.load`. DeepSpeed's own shard loader
(TorchCheckpointEngine.load) calls torch.load(weights_only=False) because its files pickle engine
and optimizer objects; we only ever load shards this job wrote under its own out_dir.

A checkpoint loads whole or not at all. DeepSpeed restores a tag piecewise (module weights, LR
schedule and global_steps from the model-states file, then each rank's optimizer shard), so a shard
that fails to load leaves the engine half-restored: that engine is thrown away and a fresh one is
built (from the seed) before the next, older tag is tried, or before training starts from step 0.

One writer per run: `RunLock` is an flock on out_dir/<run_id>/train.lock, held by rank 0 for the
job's life. The kernel drops it when the holder exits or dies (kill -9 included), so a dead job
never blocks the next one.
"""
from __future__ import annotations

import fcntl
import gc
import json
import os
import shutil
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


import torch.distributed as dist

STATE = "state.json"
LOCK = "train.lock"
BROKEN = ".broken"   # suffix of a checkpoint that failed to load


def ckpt_root(out_dir: str, run_id: str) -> Path:
    return Path(out_dir) / run_id / "ckpt"


KEEP_ALL = 1 << 30   # keep: never rotate out (a trunk's fork checkpoints)


def fork_root(out_dir: str, run_id: str) -> Path:
    """A trajectory trunk's checkpoints that decay branches start from (one per branch)."""
    return Path(out_dir) / run_id / "forks"


def fork_tag(step: int) -> str:
    return _tag(step)


def _tag(step: int) -> str:
    return f"step{step:08d}"


def complete_tags(root: Path) -> list[str]:
    """Tags with a state.json, newest first."""
    if not root.is_dir():
        return []
    return sorted((p.name for p in root.iterdir()
                   if p.name.startswith("step") and "." not in p.name and (p / STATE).is_file()),
                  reverse=True)


def save(engine, root: Path, step: int, state: dict, config_json: str, keep: int, rank: int) -> None:
    tag = _tag(step)
    engine.save_checkpoint(str(root), tag=tag)            # collective: every rank writes its shards
    if dist.is_initialized():
        dist.barrier()
    if rank == 0:
        d = root / tag
        (d / "config.json").write_text(config_json)
        tmp = d / (STATE + ".tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, d / STATE)                        # atomic: the checkpoint is now complete
        for old in complete_tags(root)[keep:]:
            shutil.rmtree(root / old, ignore_errors=True)
    if dist.is_initialized():
        dist.barrier()


@dataclass
class Resume:
    """What `load_latest` did: the engine to train, and the checkpoint it holds (if any)."""
    engine: object
    state: dict | None = None                  # the loaded tag's state.json; None = fresh engine
    tag: str | None = None
    broken: list[str] = field(default_factory=list)    # "tag (error)" of each tag that failed
    fork: str = ""                             # a decay branch: where it started (or why at 0)

    @property
    def note(self) -> str:
        """One line for stderr and the run's dlm.resume tag."""
        bad = f"; {', '.join(self.broken)} did not load" if self.broken else ""
        if self.fork:
            return self.fork + bad
        if self.state is not None:
            return f"resumed at step {self.state.get('step', 0)} from {self.tag}{bad}"
        if self.broken:
            return f"fresh engine from step 0{bad}"
        return "fresh (no checkpoint)"


def _agree(obj, fn=None):
    """Rank 0's value on every rank (`fn` None), or whether any rank's flag is set (`fn` = any)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return obj
    if fn is any:                                      # objects, not a CPU tensor: NCCL-safe
        flags = [None] * dist.get_world_size()
        dist.all_gather_object(flags, bool(obj))
        return any(flags)
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def load_latest(build: Callable[[], object], root: Path, only: str | None = None) -> Resume:
    """Build an engine (`build()`: model + engine from the seed) and load the newest checkpoint that
    loads whole. A tag that fails on any rank is reported and renamed <tag>.broken, its
    half-restored engine discarded and a fresh one built before the previous tag is tried; with none left the fresh engine starts at step
    0. Collective: every rank calls it and all agree on the outcome. `only`: that tag or nothing
    (a branch's fork checkpoint)."""
    engine = build()
    broken: list[str] = []
    tags = [t for t in complete_tags(root) if only in (None, t)]
    for tag in _agree(tags):                            # rank 0's listing: one order on all ranks
        err = None
        try:
            path, _ = engine.load_checkpoint(str(root), tag=tag, load_optimizer_states=True,
                                             load_lr_scheduler_states=True)
            if path is None:
                raise RuntimeError("DeepSpeed found no checkpoint files")
            state = json.loads((root / tag / STATE).read_text())
        except Exception as exc:                           # noqa: BLE001 - any failure: try older
            err = f"{type(exc).__name__}: {str(exc)[:200]}"
        if not _agree(err is not None, any):
            return Resume(engine, state, tag, broken)
        aside = root / f"{tag}{BROKEN}"
        if _rank() == 0:       # kept for a post-mortem, but never retried nor counted by keep_ckpts
            shutil.rmtree(aside, ignore_errors=True)
            os.replace(root / tag, aside)
        print(f"[checkpoint] {root / tag} failed to load ({err or 'on another rank'}); moved to "
              f"{aside.name}, discarding the half-restored engine and trying the previous checkpoint",
              file=sys.stderr, flush=True)
        broken.append(f"{tag} ({err or 'failed on another rank'})")
        engine = None
        gc.collect()                                       # free the old engine before the new one
        engine = build()
    return Resume(engine, None, None, broken)


class RunLock:
    """Exclusive claim on one run's directory for the life of a job (rank 0 only).

    fcntl.flock on an open descriptor: released by the kernel when the process exits or is killed,
    so it is never stale on a local disk. The file is never deleted (unlinking a lock file another
    process has open lets two holders lock two inodes); it holds the holder's pid, host and start
    time for the message a second writer prints. On NFS, Linux emulates flock with POSIX locks
    through the server's lock manager (NLM for v3, the protocol itself for v4): exclusive across
    clients unless mounted with `nolock` / `local_lock=flock|all`; a crashed *client's* locks are
    recovered by the server (v4: after its lease, ~90 s) rather than at once."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK
        self._fd: int | None = None

    def acquire(self) -> str | None:
        """Take the lock without waiting: None if taken, else a description of the holder."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)   # O_CLOEXEC: children don't inherit
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = b""
            for _ in range(20):                              # the winner writes right after locking
                holder = os.pread(fd, 300, 0).strip()
                if holder:
                    break
                time.sleep(0.05)
            os.close(fd)
            return holder.decode(errors="replace") or "a job that has not yet written its pid"
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since "
                      f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}\n".encode(), 0)
        self._fd = fd
        return None

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
