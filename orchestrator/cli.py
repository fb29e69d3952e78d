"""python -m orchestrator SWEEP [options]  (make sweep SWEEP=name)

Expands the sweep (pure, validated before Ray starts), prints the dry-run table or runs every trial
on Ray Tune, skipping FINISHED runs, resuming partial ones and retrying failed workers. The end
summary and the exit code (0: nothing failed, 1: some runs failed, 2: bad input) say what happened.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

import sweeps
from orchestrator.estimate import estimate, table
from orchestrator.tracking import SweepTracking, sweep_id
from trainer.config import RunConfig
from trainer.tracking import resolve_uri
from trainer.train import plan


def _csv(kind):
    return lambda s: tuple(kind(x) for x in s.split(",") if x)


def parse(argv):
    ap = argparse.ArgumentParser(prog="python -m orchestrator", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sweep", help=f"one of: {', '.join(sorted(sweeps.SWEEPS))}")
    ap.add_argument("--preset", default=None, help="laptop (default), quick, cluster, ...")
    ap.add_argument("--sizes", type=_csv(str), help="comma-separated ladder sizes (override)")
    ap.add_argument("--budgets", type=_csv(float), help="comma-separated FLOP budgets (override)")
    ap.add_argument("--families", type=_csv(str), help="comma-separated families (override)")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="override a RunConfig field in every run, e.g. --set train.lr=1e-3")
    ap.add_argument("--dry-run", action="store_true", help="print the runs and ETA; train nothing")
    ap.add_argument("--tracking-uri", default=None, help="MLflow URI (default $MLFLOW_TRACKING_URI "
                    "or sqlite:///<repo>/mlflow.db)")
    ap.add_argument("--out-dir", default="runs", help="checkpoint root (shared storage on clusters)")
    ap.add_argument("--address", default=os.environ.get("RAY_ADDRESS"),
                    help="Ray cluster to join (default $RAY_ADDRESS; unset = embedded local Ray)")
    ap.add_argument("--num-cpus", type=int, default=None, help="CPUs of the embedded local Ray")
    ap.add_argument("--slots", type=int, default=None, help="parallel trials assumed by --dry-run")
    ap.add_argument("--max-retries", type=int, default=2, help="retries of a trial whose worker died")
    ap.add_argument("--samples", type=int, default=None, help="hparams: trials per base config")
    ap.add_argument("--verbose", action="store_true", help="forward worker logs (DeepSpeed, Ray)")
    return ap.parse_args(argv)


def build(args) -> list[RunConfig]:
    """Expand and validate every run; raises ValueError naming the problem."""
    kwargs = {k: v for k, v in (("preset", args.preset), ("sizes", args.sizes),
                                ("budgets", args.budgets), ("families", args.families)) if v}
    configs = sweeps.expand(args.sweep, overrides=tuple(args.set), **kwargs)
    if not configs:
        raise ValueError(f"sweep {args.sweep!r} expanded to no runs")
    uri = resolve_uri(args.tracking_uri or configs[0].io.tracking_uri)
    out_dir = str(Path(args.out_dir).resolve())
    configs = [dataclasses.replace(c, io=dataclasses.replace(c.io, tracking_uri=uri, out_dir=out_dir))
               for c in configs]
    space = sweeps.search_space(args.sweep, preset=args.preset)
    for c in configs:                             # an impossible budget fails here, before Ray
        try:
            plan(c, c.data.vocab_size)
            _check_choices(c, space)
        except ValueError as exc:
            raise ValueError(f"run {c.noise.family}/{c.size}/C={c.train.budget_flops:.3g}: {exc}") from None
    return configs


def longest_first(configs: list[RunConfig]) -> list[RunConfig]:
    """The order trials are handed to Ray: most training tokens first (on a CPU, time tracks tokens
    more than FLOPs at small widths), so the sweep does not end on one long straggler with idle
    slots. Stable: equal token counts keep the sweep's order."""
    return sorted(configs, key=lambda c: -plan(c, c.data.vocab_size).steps * c.train.batch_size
                  * c.train.seq_len)


def _check_choices(c: RunConfig, space) -> None:
    """Every discrete value a search may propose must make a valid run too (e.g. each batch size
    divisible by engine.workers; RunConfig itself checks the sweep's own values)."""
    for name, spec in (space.params.items() if space is not None else ()):
        for value in (spec[1] if spec[0] == "choice" else ()):
            space.apply(c, {name: value})


def main(argv=None) -> int:
    args = parse(argv)
    try:
        configs = build(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    name = configs[0].sweep
    threads = configs[0].engine.threads
    if args.dry_run:
        slots = args.slots or max(1, (args.num_cpus or os.cpu_count() or 1) // threads)
        print(f"sweep {name}: {len(configs)} runs; measuring throughput (a few steps per model shape)")
        print(table(estimate(configs), slots))
        return 0

    from orchestrator import runner
    ray = runner.connect(args.address, args.num_cpus, args.verbose)
    try:
        uri = configs[0].io.tracking_uri
        if runner.alive_nodes(ray) > 1 and uri.startswith("sqlite"):
            print(f"error: a {runner.alive_nodes(ray)}-node Ray cluster cannot share the sqlite store "
                  f"{uri}; start an MLflow server (mlflow server --host <reachable address> "
                  "--backend-store-uri sqlite:///...) and pass --tracking-uri http://host:port "
                  "or set MLFLOW_TRACKING_URI", file=sys.stderr)
            return 2
        tracking = SweepTracking(uri, configs[0].io.experiment)     # store + experiment, once
        sid = sweep_id(configs)
        parent = tracking.parent_run(name, sid, len(configs), args.preset or "default")
        done = tracking.finished(configs)
        todo = [dataclasses.replace(c, io=dataclasses.replace(c.io, parent_run_id=parent))
                for c in configs if c.run_id() not in done]
        todo = longest_first(todo)
        print(f"sweep {name}: {len(configs)} runs, {len(done)} already finished, {len(todo)} to run "
              f"on {runner.alive_nodes(ray)} node(s); MLflow {uri} (parent run {parent})", flush=True)
        out = runner.Outcome()
        space = sweeps.search_space(args.sweep, preset=args.preset)
        if space is not None and args.samples:
            space = dataclasses.replace(space, num_samples=args.samples)
        storage = Path(args.out_dir) / "ray_results"
        if space is not None:                   # an optimiser proposes the points (hparams)
            from orchestrator.search import run_searches
            bases = [dataclasses.replace(c, io=dataclasses.replace(c.io, parent_run_id=parent))
                     for c in configs]
            out = run_searches(bases, space, sweep=name, storage=storage, max_retries=args.max_retries,
                               slots=runner.slots(configs[0]), verbose=args.verbose)
        elif todo:
            out = runner.run_trials(todo, sweep=name, storage=storage, max_retries=args.max_retries,
                                    done_before=len(done), total=len(configs), verbose=args.verbose)
        out.skipped += 0 if space is not None else len(done)
        tracking.close_parent(parent, out.summary(), failed=out.failed > 0)
    finally:
        ray.shutdown()
    print(f"sweep {name} summary: {out.finished} finished ({out.resumed} resumed from checkpoints), "
          f"{out.skipped} skipped as already finished, {out.failed} failed")
    for line in out.failures:
        print(f"  failed: {line}")
    return 1 if out.failed else 0
