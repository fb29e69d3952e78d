"""python -m orchestrator SWEEP [options]  (make sweep SWEEP=name)

Expands the sweep (pure, validated before Ray starts), prints the dry-run table or runs every trial
on Ray Tune, skipping FINISHED runs, resuming partial ones and retrying failed workers. The end
summary and the exit code say what happened:

    0    every run of the sweep is FINISHED (trained now or before)
    1    some runs failed or did not finish (the summary lists them); the parent run is FAILED
    2    bad input, found before Ray starts (or, for what only the cluster knows, before any trial)
    130  interrupted by SIGINT (Ctrl-C), 143 by SIGTERM (128 + the signal, as shells report it):
         the parent run and the runs cut off are KILLED; run the same command again to resume
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys
import time
from pathlib import Path

import sweeps
from core.schema import resolve_uri
from orchestrator.estimate import Row, SweepClock, estimate, fmt_minutes, makespan, summary, table
from orchestrator.tracking import SweepTracking, sweep_id
from trainer.config import RunConfig
from trainer.plan import Plan, branch_configs, plan


def _csv(kind):
    def parse_list(text: str) -> tuple:
        items = tuple(kind(x) for x in text.split(",") if x.strip())
        if not items:                      # '--budgets ""' must not silently mean "the recipe's"
            raise argparse.ArgumentTypeError(f"empty list {text!r}; give comma-separated values")
        return items
    parse_list.__name__ = f"comma-separated {kind.__name__}"      # argparse names it in errors
    return parse_list


def _count(minimum: int):
    def parse_count(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {value}")
        return value
    parse_count.__name__ = "integer"
    return parse_count


def parse(argv):
    ap = argparse.ArgumentParser(prog="python -m orchestrator", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sweep", help=f"one of: {', '.join(sorted(sweeps.SWEEPS))}")
    ap.add_argument("--preset", default=None,
                    help=f"one of: {', '.join(sweeps.PRESETS)} (default {sweeps.DEFAULT_PRESET}; "
                         "vonruette2025 and sahoo2026 use those papers' definitions)")
    ap.add_argument("--sizes", type=_csv(str), help="comma-separated ladder sizes (override)")
    ap.add_argument("--budgets", type=_csv(float), help="comma-separated FLOP budgets (override)")
    ap.add_argument("--families", type=_csv(str), help="comma-separated families (override)")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="override a RunConfig field in every run, e.g. --set train.lr=1e-3")
    ap.add_argument("--readoff", choices=("constant", "branches", "none"), default=None,
                    help="one run, many budgets: one constant-LR trunk per family, knob and size, "
                         "read off at each budget ('constant': its evaluations x a measured "
                         "cooldown factor; 'branches': a decay branch per budget); 'none': one run "
                         "per point (default: the preset's)")
    ap.add_argument("--seeds", type=_count(1), default=None,
                    help="trajectory studies: repeat one trunk per family with K-1 other seeds "
                         "(the report's seed-to-seed spread)")
    ap.add_argument("--dry-run", action="store_true", help="print the runs and ETA; train nothing")
    ap.add_argument("--json", action="store_true", help="with --dry-run: print the runs, points, "
                    "FLOPs (and those of one run per point) and ETA as one JSON object")
    ap.add_argument("--tracking-uri", default=None, help="MLflow URI (default $MLFLOW_TRACKING_URI "
                    "or sqlite:///<repo>/mlflow.db)")
    ap.add_argument("--out-dir", default="runs", help="checkpoint root (shared storage on clusters)")
    ap.add_argument("--address", default=os.environ.get("RAY_ADDRESS"),
                    help="Ray cluster to join (default $RAY_ADDRESS; unset = embedded local Ray)")
    ap.add_argument("--num-cpus", type=_count(1), default=None, help="CPUs of the embedded local Ray")
    ap.add_argument("--slots", type=_count(1), default=None, help="parallel trials assumed by --dry-run")
    ap.add_argument("--max-retries", type=_count(0), default=2, help="retries of a trial whose worker died")
    ap.add_argument("--samples", type=_count(1), default=None, help="hparams: trials per base config")
    ap.add_argument("--verbose", action="store_true", help="forward worker logs (DeepSpeed, Ray)")
    return ap.parse_args(argv)


def build(args) -> list[RunConfig]:
    """Expand and validate every run; raises ValueError naming the problem."""
    return build_plans(args)[0]


def read_laws(overrides: list[str]) -> dict[str, dict]:
    """The fits files of ``--set FIELD=law:FITS`` overrides (sweeps/from_law.py), parsed."""
    from sweeps import from_law
    out = {}
    for path in set(from_law.split(list(overrides))[1].values()):
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise ValueError(f"law file {path!r} does not exist or is unreadable "
                             f"({type(e).__name__}); give a fits.json of analysis.fit_laws") from None
        out[path] = from_law.parse(path, text)
    return out


def build_plans(args) -> tuple[list[RunConfig], dict[str, Plan]]:
    """`build`, and each run's plan by run id: planned once here (an impossible budget fails
    before Ray) and reused by the dry-run table, the trial order and the ETA."""
    kwargs = {k: v for k, v in (("preset", args.preset), ("sizes", args.sizes),
                                ("budgets", args.budgets), ("families", args.families),
                                ("readoff", args.readoff), ("seeds", args.seeds)) if v}
    configs = sweeps.expand(args.sweep, overrides=tuple(args.set), law_files=read_laws(args.set),
                            **kwargs)
    if not configs:
        raise ValueError(f"sweep {args.sweep!r} expanded to no runs")
    uri = resolve_uri(args.tracking_uri or configs[0].io.tracking_uri)
    out_dir = str(Path(args.out_dir).resolve())
    configs = [dataclasses.replace(c, io=dataclasses.replace(c.io, tracking_uri=uri, out_dir=out_dir))
               for c in configs]
    space = sweeps.search_space(args.sweep, preset=args.preset)
    plans = {}
    for c in configs:                             # an impossible budget fails here, before Ray
        try:
            plans[c.run_id()] = plan(c, c.data.vocab_size)
            _check_choices(c, space)
        except ValueError as exc:
            raise ValueError(f"run {c.noise.family}/{c.size}/C={c.train.budget_flops:.3g}: {exc}") from None
    check_data(configs)
    return configs, plans


def check_data(configs: list[RunConfig]) -> None:
    """What each run asks of its corpus, checked on the driver: user paths exist (CorpusError names
    the file), the validation split holds train.eval_seqs windows, the training split holds
    train.data_pool_tokens. Opening a cached corpus takes ~0.04 s; a missing cache is built here
    once (the trials would otherwise build it, one at a time under its lock, inside Ray)."""
    from trainer.data.loader import load_corpus
    corpora = {}
    for c in configs:
        if c.data not in corpora:
            try:
                corpora[c.data] = load_corpus(c.data)
            except ValueError as exc:                       # CorpusError: a path, file or column
                raise ValueError(f"data: {exc}") from None
        corpus, tc = corpora[c.data], c.train
        where = f"run {c.noise.family}/{c.size}/C={tc.budget_flops:.3g}"
        need = tc.eval_seqs * (tc.seq_len + 1)
        if need > len(corpus.val):
            raise ValueError(f"{where}: train.eval_seqs={tc.eval_seqs} windows of seq_len+1={tc.seq_len + 1} "
                             f"need {need} validation tokens; the corpus has {len(corpus.val)} (at most "
                             f"{len(corpus.val) // (tc.seq_len + 1)} windows, or raise data.val_fraction)")
        if tc.data_pool_tokens is not None and tc.data_pool_tokens > len(corpus.train):
            raise ValueError(f"{where}: train.data_pool_tokens={tc.data_pool_tokens} exceeds the "
                             f"corpus's {len(corpus.train)} training tokens")


PROBE_MIN_RUNS = 10          # below this the probe (~2-3 s per model shape) costs more than it tells
NOMINAL_TOKENS_PER_S = 50e3  # order of one CPU thread here (sweeps/calibration.py CPU_TOKENS_PER_S)


def sweep_clock(todo: list[RunConfig], slots: int, plans: dict[str, Plan] | None = None) -> SweepClock:
    """The ETA of the per-run lines. Its prior: the dry run's estimate (a throughput probe per model
    shape, `slots` at a time, compiling where the jobs compile: measured 32 s for quick's 8 shapes
    and 4.3 min for laptop's 27 with inductor's cache cold, which those compiles then warm for the
    trials) for sweeps of >= PROBE_MIN_RUNS runs to do; below that the same formula at a nominal
    NOMINAL_TOKENS_PER_S. Either way the clock rescales it by the actual / predicted seconds of the
    runs finished so far."""
    t0 = time.perf_counter()
    if len(todo) >= PROBE_MIN_RUNS:
        print(f"estimate: probing the throughput of each model shape ({slots} at a time)", flush=True)
        rows = estimate(todo, progress=lambda line: print(line, flush=True), plans=plans, slots=slots)
        source = f"throughput probe, {time.perf_counter() - t0:.0f} s"
    else:
        rows = estimate(todo, progress=lambda line: None, tokens_per_s=lambda c, p: NOMINAL_TOKENS_PER_S,
                        plans=plans)
        source = f"nominal {NOMINAL_TOKENS_PER_S:,.0f} tokens/s"
    predicted = {r.cfg.run_id(): r.seconds for r in rows}
    print(f"estimate: ~{fmt_minutes(makespan(list(predicted.values()), slots))} on {slots} slot(s) "
          f"({source}; rescaled as runs finish)", flush=True)
    return SweepClock(predicted, slots)


def longest_first(configs: list[RunConfig], plans: dict[str, Plan] | None = None) -> list[RunConfig]:
    """The order trials are handed to Ray: most training tokens first (on a CPU, time tracks tokens
    more than FLOPs at small widths), so the sweep does not end on one long straggler with idle
    slots. Stable: equal token counts keep the sweep's order. `plans`: run id -> Plan (else planned)."""
    def steps(c: RunConfig) -> int:
        return (plans[c.run_id()] if plans is not None else plan(c, c.data.vocab_size)).steps
    return sorted(configs, key=lambda c: -steps(c) * c.train.batch_size * c.train.seq_len)


def _check_choices(c: RunConfig, space) -> None:
    """Every discrete value a search may propose must make a valid run too (e.g. each batch size
    divisible by engine.workers; RunConfig itself checks the sweep's own values)."""
    for name, spec in (space.params.items() if space is not None else ()):
        for value in (spec[1] if spec[0] == "choice" else ()):
            space.apply(c, {name: value})


def finished(tracking: SweepTracking, configs: list[RunConfig]) -> set[str]:
    """Run ids of the configs that are done: FINISHED in MLflow, and (a trajectory trunk) every
    one of its decay branches too, so a trunk whose branches were cut off runs again (its trial
    skips the trunk and trains the branches left)."""
    fin = tracking.finished(configs + [b for c in configs for b in branch_configs(c)])
    return {c.run_id() for c in configs
            if c.run_id() in fin and all(b.run_id() in fin for b in branch_configs(c))}


def main(argv=None) -> int:
    args = parse(argv)
    try:
        configs, plans = build_plans(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    name = configs[0].sweep
    threads = configs[0].engine.threads
    if args.dry_run:
        slots = args.slots or max(1, (args.num_cpus or os.cpu_count() or 1) // threads)
        pre = summary([Row(c, plans[c.run_id()], 1.0, 0.0) for c in configs], slots)
        print(f"sweep {name}: {pre['n_runs']} runs ({pre['n_trunks']} trajectory trunks, "
              f"{pre['n_branches']} decay branches) for {pre['n_points']} points: "
              f"{pre['total_flops']:.3g} FLOPs, one run per point {pre['flops_if_independent']:.3g} "
              f"({pre['saving']:.0%} saved)", file=sys.stderr if args.json else sys.stdout, flush=True)
        if args.json:
            rows = estimate(configs, plans=plans, progress=lambda line: print(line, file=sys.stderr),
                            slots=slots)
            print(json.dumps({"sweep": name, "preset": args.preset or sweeps.DEFAULT_PRESET,
                              **summary(rows, slots)}, indent=1))
            return 0
        print(f"sweep {name}: {len(configs)} runs; measuring throughput (a few steps per model shape)")
        print(table(estimate(configs, plans=plans, slots=slots), slots))
        return 0

    from orchestrator import runner
    out, parent, tracking = runner.Outcome(), None, None
    with runner.interruptible():
        try:
            ray = runner.connect(args.address, args.num_cpus, args.verbose)
        except KeyboardInterrupt as exc:
            sig = runner.signal_name(exc)
            print(f"sweep {name} interrupted ({sig}) while starting Ray; nothing ran", flush=True)
            return 128 + signal.Signals[sig]
        try:
            uri = configs[0].io.tracking_uri
            if runner.alive_nodes(ray) > 1 and uri.startswith("sqlite"):
                print(f"error: a {runner.alive_nodes(ray)}-node Ray cluster cannot share the sqlite store "
                      f"{uri}; start an MLflow server (mlflow server --host <reachable address> "
                      "--backend-store-uri sqlite:///...) and pass --tracking-uri http://host:port "
                      "or set MLFLOW_TRACKING_URI", file=sys.stderr)
                return 2
            try:
                runner.check_fits(configs)
            except ValueError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
            tracking = SweepTracking(uri, configs[0].io.experiment)     # store + experiment, once
            sid = sweep_id(configs)
            members = configs + [b for c in configs for b in branch_configs(c)]
            parent = tracking.parent_run(name, sid, len(configs), args.preset or "default",
                                         run_ids=[c.run_id() for c in members],
                                         definitions=sweeps.get_preset(args.preset).definitions.name)
            done = finished(tracking, configs)
            todo = [dataclasses.replace(c, io=dataclasses.replace(c.io, parent_run_id=parent))
                    for c in configs if c.run_id() not in done]
            todo = longest_first(todo, plans)
            out.skipped, out.not_run = len(done), len(todo)
            print(f"sweep {name}: {len(configs)} runs, {len(done)} already finished, {len(todo)} to run "
                  f"on {runner.alive_nodes(ray)} node(s); MLflow {uri} (parent run {parent})", flush=True)
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
                clock = sweep_clock(todo, runner.slots(todo[0]), plans)
                out = runner.run_trials(todo, sweep=name, storage=storage, max_retries=args.max_retries,
                                        done_before=len(done), total=len(configs), verbose=args.verbose,
                                        eta=clock)
                out.skipped += len(done)
            else:
                out.not_run = 0
        except KeyboardInterrupt as exc:            # outside Tune's fit (which counts its own)
            out.interrupted = runner.signal_name(exc)
        finally:
            runner.hold_signals()                   # the cleanup below records the outcome: finish it
            ray.shutdown()                          # ends every trial still training
        if tracking is not None and parent is not None:
            if out.interrupted:
                out.count_late(finished(tracking, configs))
            status = "KILLED" if out.interrupted else "FINISHED" if out.complete() else "FAILED"
            # cut off = started here and never reported an end (a run that ended BUSY, or one never
            # started here, may belong to another live writer: not ours to close)
            tracking.close_parent(parent, out.summary(), status, stopped=out.started - out.ended)
    counts = (f"{out.finished} finished ({out.resumed} resumed from checkpoints), {out.skipped} skipped "
              f"as already finished, {out.failed} failed")
    counts += f", {out.not_finished} did not finish" if out.not_finished else ""
    if out.interrupted:
        print(f"sweep {name} interrupted ({out.interrupted}): {counts}, {out.not_run} not run; "
              f"run the same command again to resume", flush=True)
    else:
        counts += f", {out.not_run} not run" if out.not_run else ""
        print(f"sweep {name} summary: {counts}")
    for line in out.failures:
        print(f"  failed: {line}")
    for line in out.unfinished:
        print(f"  not finished: {line}")
    if out.interrupted:
        return 128 + signal.Signals[out.interrupted]
    return 0 if out.complete() else 1
