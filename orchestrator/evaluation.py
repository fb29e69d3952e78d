"""The evaluation stage: every finished run of a study scored on downstream tasks, on Ray.

    python -m orchestrator.evaluation EXPERIMENT [--out-dir runs] [--tasks hellaswag,piqa,...]
        [--n 100] [--subset-seed 0] [--t-draws 8] [--seed 0] [--steps 32] [--gen-tokens 32]
        [--tracking-uri URI] [--address ADDR] [--num-cpus N] [--threads 1]
    make evaluate SWEEP=smoke [ARGS='--tasks piqa,lambada --n 50']   # then: make downstream SWEEP=smoke

Like the sampling stage (orchestrator/sampling.py; both use orchestrator/stages.py for trial
selection, out-dir confinement and the Ray fan-out), this module only drives: it picks the
FINISHED trials whose weights load, skips those already evaluated with the same settings (the
evaluation key: tasks, their data versions, n, subset seed and the scoring settings), runs the evaluation job (trainer/evaluation/job.py: load,
score every task by trainer/evaluation/score.py's rules) in one Ray task per run, and logs one
MLflow run per trained run under an evaluation parent run, in the layout core/schema.py defines:
a metric per task and measure (eval.<task>.acc, ...), the task's version and n as params, the
seed and estimator settings as params, a few scored examples as an artifact.
Exit codes: 0 ok, 1 some tasks failed, 2 bad input (named) before Ray starts.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
import time
from pathlib import Path

from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from core import schema as M
from core.schema import resolve_uri
from core.search import search_all
from orchestrator.stages import add_common_args, fan_out, finished_trials, weights_dir
from trainer.evaluation.job import DEFAULT_TASKS, EvalJob, Settings, evaluate_job

DEFAULT_N = 100


def task_versions(tasks: tuple[str, ...]) -> dict[str, str]:
    """{task: its data version} from the installed package (ValueError naming a missing one)."""
    from trainer.evaluation.tasks import task_version
    return {name: task_version(name) for name in tasks}


def eval_key(job: EvalJob, versions: dict[str, str]) -> str:
    """Hash of everything that decides the scores (not the threads)."""
    from trainer.evaluation.score import GREEDY_TOP_P
    settings = {"tasks": list(job.tasks), "versions": versions, "n": job.n,
                "subset_seed": job.subset_seed, "settings": dataclasses.asdict(job.settings),
                "greedy_top_p": GREEDY_TOP_P}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def _already(client: MlflowClient, exp_id: str) -> set[tuple[str, str]]:
    done = search_all(client, exp_id, M.role_filter(M.ROLE_EVALUATION, M.STATUS_FINISHED))
    return {(r.data.tags.get(M.TAG_SOURCE_RUN), r.data.tags.get(M.TAG_EVAL_KEY)) for r in done}


def log_result(client, exp_id, parent, src, key, res, job) -> str:
    t = src.data.tags
    copied = (M.TAG_RUN_ID, M.TAG_FAMILY, M.TAG_KNOB, M.TAG_KNOB_LABEL, M.TAG_SIZE, M.TAG_BUDGET)
    run = client.create_run(exp_id, run_name=f"eval-{t.get(M.TAG_FAMILY)}-{t.get(M.TAG_SIZE)}", tags={
        M.TAG_ROLE: M.ROLE_EVALUATION, M.TAG_PARENT: parent, M.TAG_SOURCE_RUN: src.info.run_id,
        **{k: t.get(k, "") for k in copied}, M.TAG_SAMPLER: res["sampler"],
        M.TAG_VAL_NELBO: repr(src.data.metrics.get(M.METRIC_LOSS, float("nan"))),
        M.TAG_EVAL_KEY: key, M.TAG_EVAL_TASKS: ",".join(job.tasks)})
    now = int(time.time() * 1000)
    s = job.settings
    metrics, params = [], [Param(M.PARAM_EVAL_SEED, str(s.seed)),
                           Param(M.PARAM_EVAL_SUBSET_SEED, str(job.subset_seed)),
                           Param(M.PARAM_EVAL_T_DRAWS, str(s.t_draws)),
                           Param(M.PARAM_EVAL_STEPS, str(s.steps)),
                           Param(M.PARAM_EVAL_GEN_TOKENS, str(s.gen_tokens)),
                           Param(M.PARAM_SEQ_LEN, str(res["seq_len"])),
                           Param(M.PARAM_SAMPLER, res["sampler"])]
    examples = []
    for task, r in res["tasks"].items():
        metrics += [Metric(M.eval_metric(task, k), float(v), now, 0) for k, v in r["metrics"].items()]
        metrics.append(Metric(M.eval_metric(task, M.EVAL_SECONDS), float(r["seconds"]), now, 0))
        params += [Param(M.eval_metric(task, M.EVAL_N), str(r["n"])),
                   Param(M.eval_metric(task, M.EVAL_VERSION), r["version"])]
        examples += [f"## {task}"] + r["examples"]
    client.log_batch(run.info.run_id, metrics=metrics, params=params)
    client.log_text(run.info.run_id, "\n".join(examples), "examples.txt")
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def parse(argv):
    ap = argparse.ArgumentParser(prog="python -m orchestrator.evaluation", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("experiment", help="the study's MLflow experiment (= sweep name)")
    ap.add_argument("--tasks", default=",".join(DEFAULT_TASKS), help="comma-separated tasks")
    ap.add_argument("--n", default=str(DEFAULT_N),
                    help="documents per task, the same seeded subset for every run: 100, or "
                         "100,gsm8k=20 (a default and exceptions); 0: all of them")
    ap.add_argument("--subset-seed", type=int, default=0)
    d = Settings()
    ap.add_argument("--t-draws", type=int, default=d.t_draws,
                    help="diffusion: t draws per choice for the continuation's NELBO")
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--steps", type=int, default=d.steps,
                    help="diffusion: sampler steps for LAMBADA and GSM8K")
    ap.add_argument("--gen-tokens", type=int, default=d.gen_tokens, help="GSM8K: tokens generated")
    add_common_args(ap)
    return ap.parse_args(argv)


def _summary(res: dict) -> str:
    parts = []
    for task, r in res["tasks"].items():
        m = r["metrics"]
        parts.append(f"{task} {m[M.EVAL_ACC]:.3f}" + (f"/{m[M.EVAL_ACC_NORM]:.3f}" if M.EVAL_ACC_NORM in m else ""))
    return "  ".join(parts)


def main(argv=None) -> int:
    args = parse(argv)
    try:
        from trainer.evaluation.tasks import parse_counts, parse_tasks
        tasks = parse_tasks(args.tasks)
        counts = parse_counts(args.n, tasks)
        if args.threads < 1:
            raise ValueError("--threads must be >= 1")
        settings = Settings(t_draws=args.t_draws, seed=args.seed, steps=args.steps,
                            gen_tokens=args.gen_tokens)
        versions = task_versions(tasks)
        client = MlflowClient(resolve_uri(args.tracking_uri))
        exp_id, trials = finished_trials(client, args.experiment)
        if not trials:
            raise ValueError(f"experiment {args.experiment!r} has no FINISHED trials: run the sweep first")
        root = Path(args.out_dir).resolve()
        dirs = {r.info.run_id: weights_dir(r, root) for r in trials}
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    usable = [r for r in trials if dirs[r.info.run_id]]
    done = _already(client, exp_id)
    jobs, keys = {}, {}
    for r in usable:
        job = EvalJob(r.info.run_id, str(dirs[r.info.run_id]), tasks, counts,
                      args.subset_seed, settings, args.threads)
        keys[r.info.run_id] = eval_key(job, versions)
        if (r.info.run_id, keys[r.info.run_id]) not in done:
            jobs[r.info.run_id] = job
    sizes = ", ".join(f"{t} {'all' if c is None else c}" for t, c in counts.items())
    print(f"evaluating {args.experiment}: {len(trials)} finished runs, {len(usable) - len(jobs)} "
          f"already evaluated, {len(jobs)} to evaluate (documents: {sizes}; t_draws="
          f"{settings.t_draws}, steps={settings.steps}); {len(trials) - len(usable)} without "
          "weights skipped", flush=True)
    if not jobs:
        return 0
    parent = client.create_run(exp_id, run_name=f"evaluation-{args.experiment}",
                               tags={M.TAG_ROLE: M.ROLE_EVALUATION_PARENT,
                                     M.TAG_EVAL_TASKS: ",".join(tasks)}).info.run_id
    by_id = {r.info.run_id: r for r in usable}

    def logged(src, job, res) -> str:
        log_result(client, exp_id, parent, src, keys[src.info.run_id], res, job)
        return _summary(res)

    failed = None
    try:
        failed = fan_out(evaluate_job, jobs, by_id, args, logged)
    finally:
        client.set_terminated(parent, "FINISHED" if failed == 0 else "FAILED")
    print(f"evaluation {args.experiment}: {len(jobs) - failed} evaluated, {failed} failed. Next: "
          f"python -m analysis.downstream --experiment {args.experiment}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
