"""The sampling stage: every finished run of a study sampled at several step counts, on Ray.

    python -m orchestrator.sampling EXPERIMENT [--out-dir runs] [--steps 8,16,32,64,128] [--n 32]
        [--seed 0] [--judge RUN] [--tracking-uri URI] [--address ADDR] [--num-cpus N] [--threads 1]
        [--top-p P] [--greedy-final] [--sampler NAME [--sampler-settings K=V,...]]
    make sample SWEEP=smoke            # then: make speed-quality SWEEP=smoke

This module only drives: it picks the FINISHED trials of the experiment whose weights load (out_dir/
<run_id>/model.pt, MLflow tag dlm.weights) and the judge (the autoregressive run of the same study
with the lowest final validation NELBO, or --judge), skips trained runs already sampled with the same
settings and judge, runs the sampling job (trainer/sampling/job.py: load, sample n sequences at every
step count, time, score gen-PPL with the judge) in one Ray task per run, and logs one MLflow run per
trained run under a sampling parent run, in the layout core/schema.py defines. Timings from tasks that share a machine are
comparable with each other, not with an idle machine (bench/bench_sampling.py has the clean ratios).
Exit codes: 0 ok, 1 some tasks failed, 2 bad input (named) before Ray starts.

What MLflow says is data, not a path to trust: whoever can write to the store can set any tag. Every
file read is confined to --out-dir (the sweep's --out-dir, default runs/ like the sweep's): a trial
whose dlm.weights tag or dlm.run_id points outside it stops the stage (exit 2, naming the run and
the path), and weights and checkpoints load weights-only (trainer/sampling/sample.py).

--sampler picks one of a family's samplers by name (e.g. masked-remdm, with --sampler-settings
schedule=cap,eta=0.02): only the runs of families that offer it are sampled; its name and settings
are the tag dlm.sampler and params sampler, sampler.<setting>, and they enter the sampling key
unless the choice is the family's default sampler unchanged (so earlier keys stand).
"""
from __future__ import annotations

import argparse
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
from trainer.families.registry import FAMILIES
from trainer.sampling.job import Job, parse_settings, ref_entropy, sample_job, sampler_fields

DEFAULT_STEPS = (8, 16, 32, 64, 128)


def _causal(family: str | None) -> bool:
    """A judge scores text left to right: a causal (autoregressive) family of the registry."""
    return family in FAMILIES and FAMILIES[family].causal


def pick_judge(runs: list, judge: str | None, dirs: dict[str, Path | None]):
    """The autoregressive trial with the lowest final val_nelbo (or the one named by `judge`:
    an MLflow run id or a dlm.run_id prefix) among runs whose weights load (`dirs`)."""
    ar = [r for r in runs if _causal(r.data.tags.get(M.TAG_FAMILY)) and dirs[r.info.run_id]]
    if judge:
        ar = [r for r in ar if r.info.run_id == judge or r.data.tags.get(M.TAG_RUN_ID, "").startswith(judge)]
        if len(ar) != 1:
            raise ValueError(f"--judge {judge!r} matches {len(ar)} finished autoregressive runs with weights")
    if not ar:
        raise ValueError("no finished autoregressive run with exported weights (model.pt) to judge "
                         "gen-PPL with: add the autoregressive family to the sweep")
    return min(ar, key=lambda r: r.data.metrics.get(M.METRIC_LOSS, float("inf")))


def sampler_choice(name: str | None, settings: dict) -> dict[str, tuple[str | None, dict]] | None:
    """{family: (Job.sampler, Job.sampler_settings)} for every registered family offering the
    sampler `name` with `settings` (None, {} where that is the family's default unchanged); None
    for no --sampler (every family, its default). ValueError naming an unknown sampler and the
    known ones, or a bad setting (NoiseFamily.pick_sampler), before any work is done."""
    if name is None:
        if settings:
            raise ValueError("--sampler-settings needs --sampler")
        return None
    offer, known = {}, []
    for family, spec in FAMILIES.items():
        cls = spec.load()
        known += [s for s in cls.samplers() if s not in known]
        if name in cls.samplers():
            chosen = cls.pick_sampler(name, settings)
            offer[family] = (None, {}) if chosen == cls.sampler else (name, sampler_fields(chosen))
    if not offer:
        raise ValueError(f"--sampler {name!r} is no family's sampler; known: {', '.join(known)}")
    return offer


def settings_key(job: Job, judge_run: str) -> str:
    from trainer.sampling.samplers import VERSION
    settings = {"steps": job.steps, "n": job.n, "seed": job.seed, "t": job.temperature,
                "judge": judge_run, "sampler_version": VERSION}
    if job.top_p < 1.0 or job.greedy_final:        # the defaults keep earlier keys
        settings.update(top_p=job.top_p, greedy_final=job.greedy_final)
    if job.sampler is not None:                    # the family's default sampler keeps earlier keys
        settings.update(sampler=job.sampler, sampler_settings=job.sampler_settings)
    blob = json.dumps(settings, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _already(client: MlflowClient, exp_id: str) -> set[tuple[str, str]]:
    done = search_all(client, exp_id, M.role_filter(M.ROLE_SAMPLING, M.STATUS_FINISHED))
    return {(r.data.tags.get(M.TAG_SOURCE_RUN), r.data.tags.get(M.TAG_SAMPLING_KEY)) for r in done}


def log_result(client, exp_id, parent, src, judge, judge_text, key, res, job, ref_h) -> str:
    t = src.data.tags
    copied = (M.TAG_RUN_ID, M.TAG_FAMILY, M.TAG_KNOB, M.TAG_KNOB_LABEL, M.TAG_SIZE,
              M.TAG_BUDGET)                                                  # the trained run's
    run = client.create_run(exp_id, run_name=f"sample-{t.get(M.TAG_FAMILY)}-{t.get(M.TAG_SIZE)}", tags={
        M.TAG_ROLE: M.ROLE_SAMPLING, M.TAG_PARENT: parent, M.TAG_SOURCE_RUN: src.info.run_id,
        **{k: t.get(k, "") for k in copied}, M.TAG_SAMPLER: res["sampler"],
        M.TAG_JUDGE_RUN_ID: judge.info.run_id, M.TAG_JUDGE: judge_text,
        M.TAG_VAL_NELBO: repr(src.data.metrics.get(M.METRIC_LOSS, float("nan"))),
        M.TAG_REF_ENTROPY: repr(ref_h), M.TAG_SAMPLING_KEY: key})
    now = int(time.time() * 1000)
    metrics = [Metric(k, float(p[k]), now, int(p["steps"]))
               for p in res["points"] for k in M.SAMPLING_METRICS]
    params = [Param(M.PARAM_SEED, str(job.seed)), Param(M.PARAM_N_SAMPLES, str(job.n)),
              Param(M.PARAM_SEQ_LEN, str(res["seq_len"])),
              Param(M.PARAM_TEMPERATURE, str(job.temperature)), Param(M.PARAM_TOP_P, str(job.top_p)),
              Param(M.PARAM_GREEDY_FINAL, str(job.greedy_final)),
              Param(M.PARAM_SAMPLER, res["sampler_name"]),
              *(Param(M.sampler_setting_param(k), str(v)) for k, v in res["sampler_settings"].items())]
    client.log_batch(run.info.run_id, metrics=metrics, params=params)
    example = "\n\n".join(f"[steps {p['steps']}] {p['example']}" for p in res["points"])
    client.log_text(run.info.run_id, example, "samples.txt")
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def parse(argv):
    ap = argparse.ArgumentParser(prog="python -m orchestrator.sampling", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("experiment", help="the study's MLflow experiment (= sweep name)")
    ap.add_argument("--steps", default=",".join(map(str, DEFAULT_STEPS)),
                    help="comma-separated denoising step counts")
    ap.add_argument("--n", type=int, default=32, help="sequences per (run, steps)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--top-p", type=float, default=1.0,
                    help="nucleus mass in (0, 1]: draw from the most likely tokens holding it (1 = all)")
    ap.add_argument("--greedy-final", action="store_true",
                    help="diffusion: the last denoising step takes each position's argmax")
    ap.add_argument("--sampler", default=None,
                    help="one of a family's samplers by name (default: each family's own), e.g. "
                         "masked-remdm; only families offering it are sampled")
    ap.add_argument("--sampler-settings", default="",
                    help="the sampler's settings, KEY=VALUE,... (masked-remdm: schedule=cap|rescale|"
                         "loop, eta, t_on, t_off, alpha_on)")
    ap.add_argument("--judge", default=None, help=f"judge run (MLflow id or {M.TAG_RUN_ID} prefix); "
                    "default: the study's best autoregressive run")
    ap.add_argument("--repeats", type=int, default=3, help="timed calls per point (median)")
    add_common_args(ap)
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    try:
        steps = tuple(sorted({int(s) for s in args.steps.split(",") if s}))
        if not steps or min(steps) < 1:
            raise ValueError(f"--steps must be positive integers, got {args.steps!r}")
        for name in ("n", "repeats", "threads"):
            if getattr(args, name) < 1:
                raise ValueError(f"--{name} must be >= 1")
        if not args.temperature > 0:
            raise ValueError("--temperature must be > 0")
        if not 0.0 < args.top_p <= 1.0:
            raise ValueError(f"--top-p must be in (0, 1], got {args.top_p}")
        offer = sampler_choice(args.sampler, parse_settings(args.sampler_settings))
        client = MlflowClient(resolve_uri(args.tracking_uri))
        exp_id, trials = finished_trials(client, args.experiment)
        if not trials:
            raise ValueError(f"experiment {args.experiment!r} has no FINISHED trials: run the sweep first")
        root = Path(args.out_dir).resolve()
        dirs = {r.info.run_id: weights_dir(r, root) for r in trials}
        judge = pick_judge(trials, args.judge, dirs)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    judge_dir = dirs[judge.info.run_id]
    jt = judge.data.tags
    judge_text = (f"autoregressive {jt.get(M.TAG_SIZE)} run {jt.get(M.TAG_RUN_ID, '')[:8]} "
                  f"(val NELBO {judge.data.metrics.get(M.METRIC_LOSS, float('nan')):.3f} nats/token)")
    usable = [r for r in trials if dirs[r.info.run_id]]
    missing = len(trials) - len(usable)
    if offer is not None:
        other = [r for r in usable if r.data.tags.get(M.TAG_FAMILY) not in offer]
        usable = [r for r in usable if r.data.tags.get(M.TAG_FAMILY) in offer]
        print(f"--sampler {args.sampler}: {len(usable)} runs of {', '.join(offer)}; {len(other)} "
              f"runs of other families skipped", flush=True)
    done = _already(client, exp_id)
    jobs = {}
    for r in usable:
        sampler, sampler_settings = (None, {}) if offer is None else offer[r.data.tags.get(M.TAG_FAMILY)]
        job = Job(r.info.run_id, str(dirs[r.info.run_id]), str(judge_dir), steps, args.n, args.seed,
                  args.temperature, args.threads, args.repeats, top_p=args.top_p,
                  greedy_final=args.greedy_final, sampler=sampler, sampler_settings=sampler_settings)
        if (r.info.run_id, settings_key(job, judge.info.run_id)) not in done:
            jobs[r.info.run_id] = job
    print(f"sampling {args.experiment}: {len(trials)} finished runs, {len(usable) - len(jobs)} already "
          f"sampled, {len(jobs)} to sample at steps {list(steps)} (n={args.n}); {missing} without "
          f"weights skipped; judge: {judge_text}", flush=True)
    if not jobs:
        return 0
    ref_h = ref_entropy(judge_dir, args.n)
    parent = client.create_run(exp_id, run_name=f"sampling-{args.experiment}",
                               tags={M.TAG_ROLE: M.ROLE_SAMPLING_PARENT, M.TAG_JUDGE_RUN_ID: judge.info.run_id,
                                     M.TAG_JUDGE: judge_text}).info.run_id
    by_id = {r.info.run_id: r for r in usable}

    def logged(src, job, res) -> str:
        log_result(client, exp_id, parent, src, judge, judge_text,
                   settings_key(job, judge.info.run_id), res, job, ref_h)
        return "  ".join(f"{p['steps']}:{p[M.METRIC_TOKENS_PER_S]:,.0f}t/s ppl {p[M.METRIC_GEN_PPL]:.1f} "
                         f"H {p[M.METRIC_ENTROPY]:.2f}" for p in res["points"])

    failed = None
    try:
        failed = fan_out(sample_job, jobs, by_id, args, logged)
    finally:
        client.set_terminated(parent, "FINISHED" if failed == 0 else "FAILED")
    print(f"sampling {args.experiment}: {len(jobs) - failed} sampled, {failed} failed; reference "
          f"entropy of real text {ref_h:.3f} nats. Next: python -m analysis.speed_quality "
          f"--experiment {args.experiment}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
