"""Run a list of RunConfigs as Ray Tune trials: embedded local Ray by default, `RAY_ADDRESS` for a
real cluster. One trial = one `trainer.job.train.train(config)` call in a Ray worker; the trainer never
imports Ray (two-level orchestration, STYLE.md 8). A retried trial simply calls `train` again,
which resumes from the run's latest checkpoint into the same MLflow run.

With `engine.workers` = N > 1 the trial is a Ray Train `TorchTrainer` of N workers (each one
DeepSpeed rank running `train` on the process group Ray Train set up; gloo on CPU, nccl on GPU)
driven from a Tune function that itself holds almost nothing (TRAIN_DRIVER). Every rank reports
each evaluation and its final result with `ray.train.report`; Tune's `TuneReportCallback` forwards
rank 0's reports into the trial's result stream, so progress lines and the final "done" result look
the same as for a one-process trial. Concurrency is then capped by `slots()`, which counts the
workers' resources, since Tune cannot see them.
"""
from __future__ import annotations

import dataclasses
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.cluster import (Interrupted, LOOPBACK, connect, hold_signals,  # noqa: F401 (re-exported)
                                  interruptible, signal_name)
from trainer.config import RunConfig

# The Tune trial of a multi-worker run only drives a TorchTrainer; its request must not be empty
# (STACK.md: Tune over Ray Train), and it must not hold a CPU a training worker needs.
TRAIN_DRIVER = {"CPU": 0, "memory": 100 * 2**20}


def uses_gpu(cfg: RunConfig) -> bool:
    """Whether each of the job's processes gets a GPU: engine.device 'cuda', or 'auto' on a cluster
    that has GPUs (asked of the cluster, not of the machine that asks: a CPU-only head node still
    schedules GPU trials, and a trial without a GPU reservation must not train on one Ray did not
    hide from it)."""
    if cfg.engine.device != "auto":
        return cfg.engine.device == "cuda"
    import ray
    return ray.is_initialized() and ray.cluster_resources().get("GPU", 0) > 0


def worker_resources(cfg: RunConfig) -> dict[str, float]:
    """One training process: CPU threads on CPU; one GPU (and a CPU to feed it) on CUDA."""
    if uses_gpu(cfg):
        return {"CPU": 1, "GPU": 1}
    return {"CPU": cfg.engine.threads}


def trial_resources(cfg: RunConfig) -> dict[str, float]:
    """What the Tune trial itself requests: the training process, or for a multi-worker run only
    the TorchTrainer driver (its workers reserve their own resources: see `footprint`)."""
    return worker_resources(cfg) if cfg.engine.workers == 1 else dict(TRAIN_DRIVER)


def footprint(cfg: RunConfig) -> dict[str, float]:
    """Everything one trial occupies while it trains: the trial plus its Ray Train workers."""
    if cfg.engine.workers == 1:
        return trial_resources(cfg)
    total = dict(TRAIN_DRIVER)
    for key, value in worker_resources(cfg).items():
        total[key] = total.get(key, 0) + value * cfg.engine.workers
    return total


def run_trial(config: dict) -> None:
    """The Tune trainable (runs in a Ray worker process)."""
    from ray import tune

    from trainer.job.train import train_trajectory

    cfg = RunConfig.from_dict(config["run"])
    if cfg.engine.workers > 1:
        return _run_workers(cfg)
    t0 = time.perf_counter()
    node = os.environ.get("RAY_NODE_ID") or _node_id()
    pid_file = Path(cfg.io.out_dir) / cfg.run_id() / "worker.pid"      # for the fault test/ops
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    pid_file.write_text(f"{os.getpid()}\n")

    def report(point: dict) -> None:
        tune.report({"event": "eval", **point})

    res = train_trajectory(cfg, progress=False, on_eval=report)    # a trunk: then its branches
    if res.mlflow_run_id and res.status != "SKIPPED":
        _tag_node(cfg, res.mlflow_run_id, node)
    tune.report(_done(res, time.perf_counter() - t0))


def _done(res, trial_seconds: float) -> dict:
    """The final result of a trial, as the Progress callback and Outcome read it."""
    final = res.final_val_nelbo if res.final_val_nelbo is not None else float("nan")
    return {"event": "done", "status": res.status, "final_val_nelbo": final, "val_nelbo": final,
            "resumed_from": res.resumed_from, "steps": res.steps, "reason": res.reason or "",
            "trial_seconds": trial_seconds, "loop_seconds": res.loop_seconds}


def _run_workers(cfg: RunConfig) -> None:
    """A multi-worker trial: a TorchTrainer whose N workers are the job's DeepSpeed ranks. A worker
    that dies fails the TorchTrainer (no retries inside it); the exception fails this Tune trial,
    which Tune retries like a one-process trial (the ranks resume from the run's checkpoint)."""
    from ray.train import FailureConfig, RunConfig as TrainRunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    gpu = uses_gpu(cfg)
    # the ranks must agree with the process group Ray Train builds, so 'auto' is settled here
    engine = dataclasses.replace(cfg.engine, device="cuda" if gpu else "cpu")
    run = dataclasses.replace(cfg, engine=engine)
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={"run": run.to_dict(), "t0": time.time()},
        scaling_config=ScalingConfig(num_workers=cfg.engine.workers, use_gpu=gpu,
                                     resources_per_worker=worker_resources(cfg)),
        torch_config=TorchConfig(backend="nccl" if gpu else "gloo"),
        run_config=TrainRunConfig(
            name=cfg.run_id(),                       # from the config hash: a retry reuses the folder
            storage_path=str(Path(cfg.io.out_dir) / "ray_results" / f"{cfg.sweep}-train"),
            failure_config=FailureConfig(max_failures=0),
            callbacks=[TuneReportCallback()]))
    trainer.fit()


def _worker_loop(config: dict) -> None:
    """One Ray Train worker = one DeepSpeed rank. Every rank reports every evaluation and the end
    (ray.train.report is a barrier all ranks reach equally often); Tune sees rank 0's reports."""
    import ray.train

    from trainer.job.train import train_trajectory

    cfg = RunConfig.from_dict(config["run"])
    rank = ray.train.get_context().get_world_rank()
    if rank == 0:
        pid_file = Path(cfg.io.out_dir) / cfg.run_id() / "worker.pid"
        pid_file.parent.mkdir(parents=True, exist_ok=True)
        pid_file.write_text(f"{os.getpid()}\n")

    def report(point: dict) -> None:
        ray.train.report({"event": "eval", **point})

    res = train_trajectory(cfg, progress=False, on_eval=report)
    if rank == 0 and res.mlflow_run_id and res.status != "SKIPPED":
        _tag_node(cfg, res.mlflow_run_id, _node_id())
    ray.train.report(_done(res, time.time() - config["t0"]))


def _node_id() -> str:
    import ray
    return ray.get_runtime_context().get_node_id()


def _tag_node(cfg: RunConfig, mlflow_run_id: str, node: str) -> None:
    from mlflow.tracking import MlflowClient

    from core.schema import TAG_RAY_NODE, resolve_uri
    MlflowClient(resolve_uri(cfg.io.tracking_uri)).set_tag(mlflow_run_id, TAG_RAY_NODE, node)


@dataclass
class Outcome:
    finished: int = 0          # trained to the end in this invocation
    resumed: int = 0           # of which resumed from a checkpoint
    skipped: int = 0           # already FINISHED before this invocation
    failed: int = 0
    not_finished: int = 0      # ended with any other status (e.g. another writer holds the run)
    not_run: int = 0           # never reported an end: interrupted, or never started
    interrupted: str = ""      # the signal that stopped the sweep ('SIGINT', 'SIGTERM'), if any
    failures: list[str] = field(default_factory=list)
    unfinished: list[str] = field(default_factory=list)
    trial_seconds: list[float] = field(default_factory=list)
    loop_seconds: list[float] = field(default_factory=list)
    started: set[str] = field(default_factory=set)     # run ids whose trial started here
    ended: set[str] = field(default_factory=set)       # run ids that reported an end (any status)
    wall_seconds: float = 0.0
    slots: int = 1

    def summary(self) -> dict[str, int]:
        return {"finished": self.finished, "resumed": self.resumed, "skipped": self.skipped,
                "failed": self.failed, "not_finished": self.not_finished, "not_run": self.not_run}

    def ends(self) -> int:
        """Trials that reported an end, whatever it was."""
        return self.finished + self.skipped + self.failed + self.not_finished

    def complete(self) -> bool:
        return not (self.failed or self.not_finished or self.not_run or self.interrupted)

    def count_late(self, finished: set[str]) -> None:
        """After an interrupt: runs that this invocation started and MLflow holds FINISHED but whose
        end never reached Tune (the signal came between the trial's last write and its report)
        count as finished, not as not run (what a resume then skips)."""
        late = (finished & self.started) - self.ended
        self.finished += len(late)
        self.ended |= late
        self.not_run = max(0, self.not_run - len(late))


def progress_callback(total: int, done_before: int, out: Outcome, resolve=None, eta=None):
    """`resolve(trial.config) -> RunConfig` (default: the trial's 'run' entry); `eta`: a
    SweepClock whose progress text is added to each per-run line."""
    from ray.tune import Callback

    resolve = resolve or (lambda config: RunConfig.from_dict(config["run"]))

    class Progress(Callback):
        """One compact line per evaluation and per finished trial, instead of Tune's tables."""
        def __init__(self):
            self.count = done_before

        def on_trial_start(self, iteration, trials, trial, **info):
            rid = resolve(trial.config).run_id()
            out.started.add(rid)
            if eta is not None:
                eta.started(rid)

        def on_trial_result(self, iteration, trials, trial, result, **info):
            run = resolve(trial.config)
            tag = f"{run.noise.family:<14} {run.size:<9} C={run.train.budget_flops:.1e}"
            if result.get("event") == "eval":
                pct = 100 * result["flops"] / result["budget_flops"]
                print(f"  {tag} {pct:5.1f}%  val_nelbo {result['val_nelbo']:.4f}  "
                      f"{result['tokens_per_s']:,.0f} tok/s", flush=True)
                return
            self.count += 1
            out.ended.add(run.run_id())
            status = result["status"]
            if status == "FAILED":
                out.failed += 1
                out.failures.append(f"{run.run_id()} {tag}: {result['reason']}")
            elif status == "FINISHED":
                out.finished += 1
                out.resumed += int(result["resumed_from"] > 0)
                out.trial_seconds.append(result["trial_seconds"])
                out.loop_seconds.append(result["loop_seconds"])
            elif status == "SKIPPED":
                out.skipped += 1
            else:                                 # any other end (e.g. the run is busy elsewhere)
                out.not_finished += 1
                out.unfinished.append(f"{run.run_id()} {tag}: {status} {result['reason']}".rstrip())
            if eta is not None:                   # only runs trained from scratch calibrate the ETA
                fresh = status == "FINISHED" and not result["resumed_from"]
                eta.ended(run.run_id(), result["trial_seconds"] if fresh else None)
            extra = f" (resumed at step {result['resumed_from']})" if result["resumed_from"] else ""
            clock = f"  | {eta.line()}" if eta is not None else ""
            print(f"[{self.count}/{total}] {status:<8} {tag}  val_nelbo "
                  f"{result['final_val_nelbo']:.4f}  {result['trial_seconds']:.0f} s{extra}{clock}",
                  flush=True)

        def on_trial_error(self, iteration, trials, trial, **info):
            run = resolve(trial.config)
            out.failed += 1
            out.ended.add(run.run_id())
            out.failures.append(f"{run.run_id()} {run.noise.family} {run.size}: worker error "
                                f"(retries exhausted), see {trial.local_path}")
            self.count += 1
            if eta is not None:
                eta.ended(run.run_id(), None)
            print(f"[{self.count}/{total}] ERROR    {run.noise.family} {run.size}", flush=True)

        def on_trial_recover(self, iteration, trials, trial, **info):
            run = resolve(trial.config)
            print(f"  retrying {run.noise.family} {run.size} (worker failed; resumes from its "
                  f"checkpoint)", flush=True)

    return Progress()


_FIELDS = {"CPU": "engine.threads", "GPU": "engine.device"}     # which knob asks for a resource


def check_fits(configs: list[RunConfig]) -> None:
    """Every trial fits the connected cluster, or ValueError naming the field and the resources:
    Tune would otherwise keep an unplaceable trial PENDING forever (engine.threads=4 on 2 CPUs) or
    hand a CUDA job to a CPU-only cluster. One training process must fit on one node; a
    multi-worker trial's processes together must fit the cluster."""
    import ray
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    total = ray.cluster_resources()
    have = ", ".join(f"{k}={v:g}" for k, v in sorted(total.items()) if k in ("CPU", "GPU"))
    for cfg in {c.engine: c for c in configs}.values():
        e = cfg.engine
        per = worker_resources(cfg)
        setting = f"engine.device={e.device!r}, engine.threads={e.threads}, engine.workers={e.workers}"
        if not any(all(node.get(k, 0) >= v for k, v in per.items()) for node in nodes):
            short = sorted(k for k, v in per.items() if max(n.get(k, 0) for n in nodes) < v)
            raise ValueError(f"{'/'.join(_FIELDS.get(k, k) for k in short)}: one training process "
                             f"needs {per} ({setting}), but no node of the cluster has that "
                             f"(cluster: {have or 'no CPU or GPU'})")
        need = footprint(cfg)
        if any(total.get(k, 0) < v for k, v in need.items()):
            raise ValueError(f"engine.workers: a trial needs {need} ({setting}); the cluster has {have}")


def alive_nodes(ray) -> int:
    return sum(1 for n in ray.nodes() if n.get("Alive"))


def slots(cfg: RunConfig) -> int:
    """How many trials like `cfg` the connected cluster runs at once (a multi-worker trial counts
    its workers' resources, which Tune does not see)."""
    import ray
    resources = ray.cluster_resources()
    per = footprint(cfg)
    return max(1, int(min(resources.get(k, 0) // v for k, v in per.items() if v)))


def run_trials(configs: list[RunConfig], *, sweep: str, storage: Path, max_retries: int,
               done_before: int, total: int, verbose: bool, eta=None) -> Outcome:
    """Run `configs` as one Tune experiment. An `Interrupted` signal ends it early: the Outcome
    then counts every config that never reported an end as not run (Ray is shut down by the
    caller, which ends the trials still training)."""
    from ray import tune

    out = Outcome(slots=slots(configs[0]))
    trainable = tune.with_resources(run_trial, lambda spec: tune.PlacementGroupFactory(
        [trial_resources(RunConfig.from_dict(spec["run"]))]))
    tuner = tune.Tuner(
        trainable,
        param_space={"run": tune.grid_search([c.to_dict() for c in configs])},
        # reused worker processes: a trial skips the ~3 s process start and torch/DeepSpeed imports
        # (train() is re-entrant in one process; a killed worker is replaced and the trial retried)
        # multi-worker trials request only TRAIN_DRIVER from Tune: cap them at what the workers fit
        tune_config=tune.TuneConfig(num_samples=1, reuse_actors=True, max_concurrent_trials=(
            out.slots if configs[0].engine.workers > 1 else None)),
        run_config=tune.RunConfig(
            name=sweep, storage_path=str(storage.resolve()), verbose=0,
            failure_config=tune.FailureConfig(max_failures=max_retries),
            callbacks=[progress_callback(total, done_before, out, eta=eta)]),
    )
    t0 = time.perf_counter()
    try:
        tuner.fit()
    except KeyboardInterrupt as exc:
        out.interrupted = signal_name(exc)
    out.wall_seconds = time.perf_counter() - t0
    # runs Tune never ended (interrupted, or never started): not finished, whatever the reason
    out.not_run = len({c.run_id() for c in configs} - out.ended)
    sys.stdout.flush()
    return out
