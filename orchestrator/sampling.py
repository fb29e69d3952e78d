"""The sampling stage: every finished run of a study sampled at several step counts, on Ray.

    python -m orchestrator.sampling EXPERIMENT [--out-dir runs] [--steps 8,16,32,64,128] [--n 32]
        [--seed 0] [--judge RUN] [--tracking-uri URI] [--address ADDR] [--num-cpus N] [--threads 1]
    make sample SWEEP=smoke            # then: make speed-quality SWEEP=smoke

For each FINISHED trial of the experiment (its weights are out_dir/<run_id>/model.pt, MLflow tag
dlm.weights) one Ray task loads the model, samples n sequences at every step count (the
autoregressive baseline once: it takes seq_len steps with its KV cache), times the sampler
(median of --repeats timed calls after a warm-up), and scores the samples with the judge: the
autoregressive run of the same study with the lowest final validation NELBO (or --judge), so
gen-PPL is offline and reproducible (trainer/sampling/quality.py). The driver logs one MLflow run per trained
run under a sampling parent run, in the layout analysis/speed_quality.py documents, and skips trained
runs already sampled with the same settings and judge. Timings from tasks that share a machine are
comparable with each other, not with an idle machine (bench/bench_sampling.py has the clean ratios).
Exit codes: 0 ok, 1 some tasks failed, 2 bad input (named) before Ray starts.

What MLflow says is data, not a path to trust: whoever can write to the store can set any tag. Every
file read is confined to --out-dir (the sweep's --out-dir, default runs/ like the sweep's): a trial
whose dlm.weights tag or dlm.run_id points outside it stops the stage (exit 2, naming the run and
the path), and weights and checkpoints load weights-only (trainer/sampling/sample.py).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from analysis import speed_quality as sq
from trainer.job.tracking import resolve_uri

DEFAULT_STEPS = (8, 16, 32, 64, 128)


@dataclass(frozen=True)
class Job:
    """One trained run to sample (everything a Ray task needs, plain data)."""
    source_run: str          # MLflow run id of the trained run
    run_dir: str             # out_dir/<run_id>: config.json + model.pt
    judge_dir: str
    steps: tuple[int, ...]
    n: int
    seed: int
    temperature: float
    threads: int
    repeats: int


def sample_job(job: Job) -> dict:
    """Runs in a Ray worker: sample at every step count, time it, score it. Returns plain data."""
    import torch

    from trainer.sampling.quality import gen_ppl, unigram_entropy
    from trainer.sampling.sample import load_run
    from trainer.sampling.samplers import generate

    torch.set_num_threads(job.threads)
    model, family, cfg, corpus = load_run(job.run_dir)
    judge, _, judge_cfg, _ = load_run(job.judge_dir)
    if judge_cfg.data != cfg.data:
        raise ValueError(f"judge {judge_cfg.run_id()} was trained on other data/tokenizer than "
                         f"{cfg.run_id()}: gen-PPL would not be comparable")
    T = cfg.train.seq_len
    steps_list = (T,) if family.causal else job.steps
    kw = dict(n=job.n, seq_len=T, seed=job.seed, temperature=job.temperature, start_id=corpus.eot_id)
    generate(model, family, **dict(kw, n=1), steps=2)                     # warm-up (allocators)
    points = []
    for steps in steps_list:
        runs = [generate(model, family, **kw, steps=steps) for _ in range(job.repeats)]
        seconds = statistics.median(r.seconds for r in runs)
        tokens = runs[0].tokens                                            # same seed: identical
        points.append({"steps": runs[0].steps, "tokens_per_s": tokens.numel() / seconds,
                       "latency_s": seconds / job.n, "gen_ppl": gen_ppl(judge, tokens, corpus.eot_id),
                       "entropy": unigram_entropy(tokens), "nfe": float(runs[0].nfe),
                       "example": corpus.decode(tokens[0].tolist())})
    return {"source_run": job.source_run, "points": points, "seq_len": T,
            "sampler": family.sampler.name}


# ------------------------------------------------------------------------------------------------
# Driver
# ------------------------------------------------------------------------------------------------


def _trials(client: MlflowClient, experiment: str) -> tuple[str, list]:
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise ValueError(f"experiment {experiment!r} does not exist in this MLflow store")
    runs, token = [], None
    while True:
        page = client.search_runs([exp.experiment_id], "tags.`dlm.role` = 'trial' and "
                                  "attributes.status = 'FINISHED'", max_results=1000, page_token=token)
        runs += list(page)
        token = page.token
        if not token:
            return exp.experiment_id, runs


def _weights_dir(run, root: Path) -> Path | None:
    """out_dir/<run_id> of a trial whose weights load: model.pt (tag dlm.weights), or for runs that
    finished before training exported it, the final checkpoint under root/<dlm.run_id>. Both paths
    must resolve inside `root` (ValueError otherwise); the run's io.out_dir param only explains a
    miss (the sweep ran with another --out-dir)."""
    from trainer.sampling.sample import confine, has_weights
    who = f"trial {run.info.run_id} ({run.data.tags.get('dlm.family')} {run.data.tags.get('dlm.size')})"
    hint = ""
    out = run.data.params.get("io.out_dir")
    if out and Path(out).resolve() != root:
        hint = f"; it was trained with io.out_dir={out}: pass that as --out-dir if you trust it"
    try:
        w = run.data.tags.get("dlm.weights")
        if w and confine(w, root, f"{who}: its dlm.weights tag").is_file():
            return confine(Path(w).parent, root, f"{who}: its run dir")
        rid = run.data.tags.get("dlm.run_id")
        if rid and has_weights(confine(root / rid, root, f"{who}: its dlm.run_id")):
            return root / rid
    except ValueError as exc:
        raise ValueError(f"{exc}{hint}") from None
    return None


def pick_judge(runs: list, judge: str | None, dirs: dict[str, Path | None]):
    """The autoregressive trial with the lowest final val_nelbo (or the one named by `judge`:
    an MLflow run id or a dlm.run_id prefix) among runs whose weights load (`dirs`)."""
    ar = [r for r in runs if r.data.tags.get("dlm.family") == "autoregressive" and dirs[r.info.run_id]]
    if judge:
        ar = [r for r in ar if r.info.run_id == judge or r.data.tags.get("dlm.run_id", "").startswith(judge)]
        if len(ar) != 1:
            raise ValueError(f"--judge {judge!r} matches {len(ar)} finished autoregressive runs with weights")
    if not ar:
        raise ValueError("no finished autoregressive run with exported weights (model.pt) to judge "
                         "gen-PPL with: add the autoregressive family to the sweep")
    return min(ar, key=lambda r: r.data.metrics.get("val_nelbo", float("inf")))


def settings_key(job: Job, judge_run: str) -> str:
    from trainer.sampling.samplers import VERSION
    blob = json.dumps({"steps": job.steps, "n": job.n, "seed": job.seed, "t": job.temperature,
                       "judge": judge_run, "sampler_version": VERSION}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _already(client: MlflowClient, exp_id: str) -> set[tuple[str, str]]:
    done = client.search_runs([exp_id], f"tags.`dlm.role` = '{sq.ROLE_SAMPLING}' and "
                              "attributes.status = 'FINISHED'", max_results=5000)
    return {(r.data.tags.get(sq.TAG_SOURCE_RUN), r.data.tags.get("dlm.sampling_key")) for r in done}


def ref_entropy(judge_dir: Path, n: int) -> float:
    """Mean per-sequence unigram entropy of n real validation windows of the study's seq_len."""
    from trainer.data.loader import validation_windows
    from trainer.sampling.quality import unigram_entropy
    from trainer.sampling.sample import load_run
    _, _, cfg, corpus = load_run(judge_dir)
    windows = validation_windows(corpus.val, n, cfg.train.seq_len)
    return unigram_entropy(windows[:, :cfg.train.seq_len])


def log_result(client, exp_id, parent, src, judge, judge_text, key, res, job, ref_h) -> str:
    t = src.data.tags
    run = client.create_run(exp_id, run_name=f"sample-{t.get('dlm.family')}-{t.get('dlm.size')}", tags={
        "dlm.role": sq.ROLE_SAMPLING, "mlflow.parentRunId": parent, sq.TAG_SOURCE_RUN: src.info.run_id,
        "dlm.run_id": t.get("dlm.run_id", ""), "dlm.family": t.get("dlm.family", ""),
        "dlm.knob": t.get("dlm.knob", ""), "dlm.size": t.get("dlm.size", ""),
        "dlm.budget_flops": t.get("dlm.budget_flops", ""), sq.TAG_SAMPLER: res["sampler"],
        sq.TAG_JUDGE_RUN_ID: judge.info.run_id, sq.TAG_JUDGE: judge_text,
        sq.TAG_VAL_NELBO: repr(src.data.metrics.get("val_nelbo", float("nan"))),
        sq.TAG_REF_ENTROPY: repr(ref_h), "dlm.sampling_key": key})
    now = int(time.time() * 1000)
    metrics = [Metric(k, float(p[k]), now, int(p["steps"])) for p in res["points"] for k in sq.METRICS]
    params = [Param("seed", str(job.seed)), Param("n_samples", str(job.n)),
              Param("seq_len", str(res["seq_len"])), Param("temperature", str(job.temperature))]
    client.log_batch(run.info.run_id, metrics=metrics, params=params)
    example = "\n\n".join(f"[steps {p['steps']}] {p['example']}" for p in res["points"])
    client.log_text(run.info.run_id, example, "samples.txt")
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def parse(argv):
    ap = argparse.ArgumentParser(prog="python -m orchestrator.sampling", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("experiment", help="the study's MLflow experiment (= sweep name)")
    ap.add_argument("--out-dir", default="runs", help="the sweep's checkpoint root (its --out-dir): "
                    "weights are read from inside it only")
    ap.add_argument("--steps", default=",".join(map(str, DEFAULT_STEPS)),
                    help="comma-separated denoising step counts")
    ap.add_argument("--n", type=int, default=32, help="sequences per (run, steps)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--judge", default=None, help="judge run (MLflow id or dlm.run_id prefix); "
                    "default: the study's best autoregressive run")
    ap.add_argument("--repeats", type=int, default=3, help="timed calls per point (median)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (= Ray CPUs) per task")
    ap.add_argument("--tracking-uri", default=None)
    ap.add_argument("--address", default=os.environ.get("RAY_ADDRESS"))
    ap.add_argument("--num-cpus", type=int, default=None)
    ap.add_argument("--verbose", action="store_true")
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
        client = MlflowClient(resolve_uri(args.tracking_uri))
        exp_id, trials = _trials(client, args.experiment)
        if not trials:
            raise ValueError(f"experiment {args.experiment!r} has no FINISHED trials: run the sweep first")
        root = Path(args.out_dir).resolve()
        dirs = {r.info.run_id: _weights_dir(r, root) for r in trials}
        judge = pick_judge(trials, args.judge, dirs)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    judge_dir = dirs[judge.info.run_id]
    jt = judge.data.tags
    judge_text = (f"autoregressive {jt.get('dlm.size')} run {jt.get('dlm.run_id', '')[:8]} "
                  f"(val NELBO {judge.data.metrics.get('val_nelbo', float('nan')):.3f} nats/token)")
    usable = [r for r in trials if dirs[r.info.run_id]]
    missing = len(trials) - len(usable)
    done = _already(client, exp_id)
    jobs = {}
    for r in usable:
        job = Job(r.info.run_id, str(dirs[r.info.run_id]), str(judge_dir), steps, args.n, args.seed,
                  args.temperature, args.threads, args.repeats)
        if (r.info.run_id, settings_key(job, judge.info.run_id)) not in done:
            jobs[r.info.run_id] = job
    print(f"sampling {args.experiment}: {len(trials)} finished runs, {len(usable) - len(jobs)} already "
          f"sampled, {len(jobs)} to sample at steps {list(steps)} (n={args.n}); {missing} without "
          f"weights skipped; judge: {judge_text}", flush=True)
    if not jobs:
        return 0
    ref_h = ref_entropy(judge_dir, args.n)
    parent = client.create_run(exp_id, run_name=f"sampling-{args.experiment}",
                               tags={"dlm.role": sq.ROLE_SAMPLING_PARENT, sq.TAG_JUDGE_RUN_ID: judge.info.run_id,
                                     sq.TAG_JUDGE: judge_text}).info.run_id
    from orchestrator import runner
    ray = runner.connect(args.address, args.num_cpus, args.verbose)
    failed = 0
    try:
        task = ray.remote(num_cpus=args.threads, max_retries=1)(sample_job)
        pending = {task.remote(job): rid for rid, job in jobs.items()}
        by_id = {r.info.run_id: r for r in usable}
        t0 = time.perf_counter()
        for i in range(len(pending)):
            ready, _ = ray.wait(list(pending), num_returns=1)
            rid = pending.pop(ready[0])
            src, job = by_id[rid], jobs[rid]
            tag = f"{src.data.tags.get('dlm.family', ''):<14} {src.data.tags.get('dlm.size', ''):<9}"
            try:
                res = ray.get(ready[0])
            except Exception as exc:                          # noqa: BLE001 - report, go on
                failed += 1
                print(f"[{i + 1}/{len(jobs)}] FAILED {tag}: {type(exc).__name__}: {str(exc)[:300]}", flush=True)
                continue
            log_result(client, exp_id, parent, src, judge, judge_text,
                       settings_key(job, judge.info.run_id), res, job, ref_h)
            pts = "  ".join(f"{p['steps']}:{p['tokens_per_s']:,.0f}t/s ppl {p['gen_ppl']:.1f} H {p['entropy']:.2f}"
                            for p in res["points"])
            print(f"[{i + 1}/{len(jobs)}] {tag} {pts}  ({time.perf_counter() - t0:.0f} s)", flush=True)
    finally:
        client.set_terminated(parent, "FAILED" if failed else "FINISHED")
        ray.shutdown()
    print(f"sampling {args.experiment}: {len(jobs) - failed} sampled, {failed} failed; reference "
          f"entropy of real text {ref_h:.3f} nats. Next: python -m analysis.speed_quality "
          f"--experiment {args.experiment}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
