"""Orchestrator overheads on the smoke sweep, measured in one run through real Ray, DeepSpeed, MLflow:

- packing efficiency = Σ trial busy time ÷ (slots × sweep wall time)      target >= 0.85
- per-trial overhead = trial wall time − its training loop (Ray worker start, imports, corpus open,
  DeepSpeed init, MLflow run creation and close), median                  target <= 5 s

    python -m bench.bench_sweep [--sweep smoke] [--repeats 1] [--budgets 1.1e10]

Each of a sweep's slots pays a fixed start-up before its first trial (Ray worker process, Tune's
function trainable, torch / DeepSpeed / MLflow imports: ~2.5 s here, plus ~2 s inside the first
trial), so packing on a sweep of short trials measures mostly that: --budgets shows the trend.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import sweeps
from orchestrator import runner
from orchestrator.cli import build, longest_first, parse
from orchestrator.tracking import SweepTracking, sweep_id


def once(sweep: str, tmp: Path, budgets: str | None = None) -> runner.Outcome:
    args = parse([sweep, "--tracking-uri", f"sqlite:///{tmp / 'mlflow.db'}", "--out-dir", str(tmp / "runs")]
                 + (["--budgets", budgets] if budgets else []))
    configs = longest_first(build(args))          # the order `python -m orchestrator` runs them in
    tracking = SweepTracking(configs[0].io.tracking_uri, configs[0].io.experiment)
    tracking.parent_run(sweep, sweep_id(configs), len(configs), "bench")
    return runner.run_trials(configs, sweep=sweep, storage=tmp / "ray_results", max_retries=0,
                             done_before=0, total=len(configs), verbose=False)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sweep", default="smoke", choices=sorted(sweeps.SWEEPS))
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--budgets", help="override the sweep's FLOP budgets (e.g. 1.1e10: shorter trials)")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    ray = runner.connect(None, None, False)
    print(f"Ray up in {time.perf_counter() - t0:.1f} s (not counted below)")
    rows = []
    try:
        for _ in range(args.repeats):
            with tempfile.TemporaryDirectory() as d:
                out = once(args.sweep, Path(d), args.budgets)
            busy = sum(out.trial_seconds)
            packing = busy / (out.slots * out.wall_seconds)
            overhead = statistics.median(t - loop for t, loop in zip(out.trial_seconds, out.loop_seconds))
            # what a trial costs beyond its loop as seen from the sweep: wall × slots − Σ loops, per trial
            seen = (out.slots * out.wall_seconds - sum(out.loop_seconds)) / max(1, len(out.loop_seconds))
            rows.append((out.wall_seconds, packing, overhead, seen, len(out.trial_seconds), out.slots))
    finally:
        ray.shutdown()
    print(f"{'sweep':<8} {'runs':>4} {'slots':>5} {'wall s':>7} {'packing':>8} {'overhead s':>10} "
          f"{'slot-s/trial beyond loop':>25}")
    for wall, packing, overhead, seen, n, slots in rows:
        print(f"{args.sweep:<8} {n:>4} {slots:>5} {wall:>7.1f} {packing:>8.2f} {overhead:>10.2f} {seen:>25.2f}")
    packing = statistics.median(r[1] for r in rows)
    overhead = statistics.median(r[2] for r in rows)
    print(f"packing efficiency {packing:.2f} (target >= 0.85: {'PASS' if packing >= 0.85 else 'MISS'}); "
          f"per-trial overhead {overhead:.2f} s (target <= 5 s: {'PASS' if overhead <= 5 else 'MISS'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
