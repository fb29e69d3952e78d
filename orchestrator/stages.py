"""What the post-training stages share (orchestrator/sampling.py, orchestrator/evaluation.py): the
study's finished trials, where their weights are (confined to the --out-dir the stage was given),
the command-line options every stage has, and the Ray fan-out of one task per trained run with a
progress line per result. One owner for each: a stage only says what its job is and how it logs.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Callable

from mlflow.tracking import MlflowClient

from core import schema as M
from core.search import search_all


def finished_trials(client: MlflowClient, experiment: str) -> tuple[str, list]:
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise ValueError(f"experiment {experiment!r} does not exist in this MLflow store")
    return exp.experiment_id, search_all(client, exp.experiment_id,
                                         M.role_filter(M.ROLE_TRIAL, M.STATUS_FINISHED))


def weights_dir(run, root: Path) -> Path | None:
    """out_dir/<run_id> of a trial whose weights load: model.pt (tag dlm.weights), or for runs that
    finished before training exported it, the final checkpoint under root/<dlm.run_id>. Both paths
    must resolve inside `root` (ValueError otherwise); the run's io.out_dir param only explains a
    miss (the sweep ran with another --out-dir)."""
    from trainer.sampling.sample import confine, has_weights
    who = f"trial {run.info.run_id} ({run.data.tags.get(M.TAG_FAMILY)} {run.data.tags.get(M.TAG_SIZE)})"
    hint = ""
    out = run.data.params.get(M.PARAM_OUT_DIR)
    if out and Path(out).resolve() != root:
        hint = f"; it was trained with {M.PARAM_OUT_DIR}={out}: pass that as --out-dir if you trust it"
    try:
        w = run.data.tags.get(M.TAG_WEIGHTS)
        if w and confine(w, root, f"{who}: its {M.TAG_WEIGHTS} tag").is_file():
            return confine(Path(w).parent, root, f"{who}: its run dir")
        rid = run.data.tags.get(M.TAG_RUN_ID)
        if rid and has_weights(confine(root / rid, root, f"{who}: its {M.TAG_RUN_ID}")):
            return root / rid
    except ValueError as exc:
        raise ValueError(f"{exc}{hint}") from None
    return None


def add_common_args(ap: argparse.ArgumentParser) -> None:
    """--out-dir, --threads, --tracking-uri, --address, --num-cpus, --verbose."""
    ap.add_argument("--out-dir", default="runs", help="the sweep's checkpoint root (its --out-dir): "
                    "weights are read from inside it only")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (= Ray CPUs) per task")
    ap.add_argument("--tracking-uri", default=None)
    ap.add_argument("--address", default=os.environ.get("RAY_ADDRESS"))
    ap.add_argument("--num-cpus", type=int, default=None)
    ap.add_argument("--verbose", action="store_true")


def fan_out(fn: Callable, jobs: dict, runs: dict, args: argparse.Namespace,
            done: Callable[[object, object, dict], str]) -> int:
    """Run fn(job) in one Ray task per {trained run id: job} (num_cpus = args.threads, one retry),
    on the cluster args.address names or a local one; for each result, in finishing order, call
    done(trained run, job, result) (it logs; its text ends the progress line). A task that fails
    is reported and counted, the others go on. Returns the number that failed; Ray is shut down."""
    from orchestrator import runner
    ray = runner.connect(args.address, args.num_cpus, args.verbose)
    failed = 0
    try:
        task = ray.remote(num_cpus=args.threads, max_retries=1)(fn)
        pending = {task.remote(job): rid for rid, job in jobs.items()}
        t0 = time.perf_counter()
        for i in range(len(pending)):
            ready, _ = ray.wait(list(pending), num_returns=1)
            rid = pending.pop(ready[0])
            src = runs[rid]
            tag = f"{src.data.tags.get(M.TAG_FAMILY, ''):<14} {src.data.tags.get(M.TAG_SIZE, ''):<9}"
            try:
                res = ray.get(ready[0])
            except Exception as exc:                          # noqa: BLE001 - report, go on
                failed += 1
                print(f"[{i + 1}/{len(jobs)}] FAILED {tag}: {type(exc).__name__}: {str(exc)[:300]}",
                      flush=True)
                continue
            text = done(src, jobs[rid], res)
            print(f"[{i + 1}/{len(jobs)}] {tag} {text}  ({time.perf_counter() - t0:.0f} s)", flush=True)
    finally:
        ray.shutdown()
    return failed
