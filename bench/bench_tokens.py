"""Benchmark: training tokens/s of the trainer's step, today's default against the eager path before
#16, per family and width; achieved FLOP/s against the measured matmul peak; engine ÷ plain step.

    python -m bench.bench_tokens [--sizes L1-d8,...] [--families masked,...] [--json]

Every variant is the trainer's own step (trainer/job/loop.py `Loop.step`: data, noise, loss,
engine.backward, clip, engine.step, loss.item()) of a laptop run (sweeps.recipe.LAPTOP_SHAPE: batch
8 x 128, BPE 512, fp32, one thread, DeepSpeed ZeRO-0), differing only in EngineConfig:

    eager      adamw=loop,  lean=False, compile=off   (the trainer before #16)
    lean       adamw=fused, lean=True,  compile=off   (the default for runs < COMPILE_MIN_STEPS)
    compiled   adamw=fused, lean=True,  compile=on    (the default for longer runs)

The variants of one (size, family) run interleaved, a few steps each per round with the order
rotated (bench.bench_train.time_variants), so that a shared, noisy machine slows them alike; a
ratio is the median of per-round ratios. `compile_s` is the compiled variant's first five steps
less five steady steps (dynamo + inductor; warm or cold inductor cache, as this machine has it), and
`break_even_steps` = compile_s / (lean − compiled step time).

Peak fraction (widths 256 and 512, autoregressive: every position's logits are computed) =
training FLOPs per step (the project convention, core/flops.py) / step time / the fp32 matmul peak
measured in this run on the same thread count (best probe of the run, one probe per round):
`plain` is the reference PyTorch loop of bench.bench_train, `engine` the default (lean) engine
step, and `engine_ratio` the engine ÷ plain step time at ZeRO-0 (lean) and ZeRO-3.
Targets (issue 16): speedup >= 2 at widths <= 32 and >= 1.3 at 64-128; peak fraction >= 0.5;
engine ÷ plain <= 1.10 at width >= 256.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from bench.bench_train import engine_stepper, native_linear, plain_stepper, ratio, time_variants
from core.ladder import LADDER
from sweeps.grid import make_run
from sweeps.recipe import LAPTOP_SHAPE
from trainer.data.loader import load_corpus, sample_batch
from trainer.families.registry import FAMILIES, build_family
from trainer.job.engine import init_distributed, placement
from trainer.plan import plan
from trainer.tools.peak import cpu_model, measure
from trainer.tools.probe import bare_loop

SPEED_SIZES = ("L1-d8", "L2-d16", "L2-d32", "L2-d64", "L4-d128", "L6-d256")
PEAK_SIZES = ("L6-d256", "L12-d512")
VARIANTS = {"eager": dict(adamw="loop", lean=False, compile="off"),
            "lean": dict(adamw="fused", lean=True, compile="off"),
            "compiled": dict(adamw="fused", lean=True, compile="on")}
COMPILE_STEPS = 5


def run_config(size: str, family: str, **engine):
    cfg = make_run("bench", LAPTOP_SHAPE, size=size, family=family, knob=None, budget=1e15,
                   pool_tokens=None)
    return replace(cfg, engine=replace(cfg.engine, **engine))


def loop_stepper(cfg, corpus, place, root: Path):
    """step(i) -> training loss: the job's own step (trainer.tools.probe.bare_loop) of `cfg`'s run,
    on the packaged corpus."""
    job = bare_loop(cfg, place, corpus.train, cfg.engine.compile == "on", root)

    def step(i: int) -> float:
        with native_linear():            # torch's F.linear, even after a ZeRO-3 engine replaced it
            return job.step(i)[0]
    return step


def bench_speed(size, family, corpus, place, root, probe, args) -> dict:
    steppers = {n: loop_stepper(run_config(size, family, **v), corpus, place, root)
                for n, v in VARIANTS.items()}
    first = []
    for i in range(COMPILE_STEPS):                     # the compile happens in these
        t0 = time.perf_counter()
        steppers["compiled"](i)
        first.append(time.perf_counter() - t0)
    t, _, _ = time_variants(steppers, 2, args.round_s, args.variant_s, args.rounds, probe)
    med = {n: t[n].median() for n in t}
    compile_s = sum(first) - COMPILE_STEPS * med["compiled"]
    saving = med["lean"] - med["compiled"]
    return {"size": size, "family": family, "width": LADDER[size].d_model,
            "tokens_per_s": {n: LAPTOP_SHAPE.batch_size * LAPTOP_SHAPE.seq_len / m for n, m in med.items()},
            "speedup": ratio(t["compiled"], t["eager"])[0] ** -1,
            "speedup_lean": ratio(t["lean"], t["eager"])[0] ** -1,
            "compile_s": compile_s,
            "break_even_steps": compile_s / saving if saving > 0 else None}


def bench_peak(size, corpus, place, root, probe, args) -> dict:
    cfg = run_config(size, "autoregressive", **VARIANTS["lean"])
    tc, p = cfg.train, plan(cfg, corpus.vocab_size)
    family = build_family(cfg.noise, corpus.vocab_size, corpus.eot_id)
    batches = [torch.from_numpy(sample_batch(corpus.train, tc.batch_size, tc.seq_len, seed=0, step=s))
               for s in range(4)]
    z3 = replace(cfg.engine, zero_stage=3, compile="off")
    built = {"plain": plain_stepper(p.model_cfg, tc, family, batches, p.steps)[0],
             "engine": loop_stepper(cfg, corpus, place, root),
             "zero3": engine_stepper(p.model_cfg, tc, z3, place, family, batches, p.steps)[0]}
    t, _, _ = time_variants(built, 2, args.round_s, args.variant_s, 3, probe)
    return {"size": size, "width": LADDER[size].d_model, "flops_per_step": p.flops_per_step,
            "step_s": {n: t[n].median() for n in t},
            "engine_ratio": {"zero0": ratio(t["engine"], t["plain"])[0],
                             "zero3": ratio(t["zero3"], t["plain"])[0]}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default=",".join(SPEED_SIZES))
    ap.add_argument("--peak-sizes", default=",".join(PEAK_SIZES))
    ap.add_argument("--families", default=",".join(FAMILIES))
    ap.add_argument("--round-s", type=float, default=0.5)
    ap.add_argument("--variant-s", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", action="store_true", help="print one JSON object (nothing else)")
    args = ap.parse_args(argv)
    for s in args.sizes.split(",") + args.peak_sizes.split(","):
        if s and s not in LADDER:
            raise SystemExit(f"--sizes: {s!r} is not in the ladder")
    for f in args.families.split(","):
        if f not in FAMILIES:
            raise SystemExit(f"--families: {f!r} is not a family ({', '.join(FAMILIES)})")
    say = (lambda *a, **k: None) if args.json else print
    stdout = None
    if args.json:            # stdout holds the JSON only: what DeepSpeed and its op builds print
        sys.stdout.flush()   # (at the file-descriptor level too) goes to stderr meanwhile
        stdout = os.dup(1)
        os.dup2(2, 1)
    threads = LAPTOP_SHAPE.engine.threads
    torch.set_num_threads(threads)
    place = placement(LAPTOP_SHAPE.engine)
    init_distributed(place)
    corpus = load_corpus(run_config("L1-d8", "masked").data)
    peaks = [measure(place.device, torch.float32)]
    probe = lambda: peaks.append(measure(place.device, torch.float32, seconds=0.1, windows=2))  # noqa: E731
    root = Path(tempfile.mkdtemp(prefix="bench_tokens_"))
    say(f"CPU: {cpu_model()}; {threads} thread; fp32 matmul peak {peaks[0] / 1e9:.0f} GFLOP/s (first probe); "
        f"batch {LAPTOP_SHAPE.batch_size} x {LAPTOP_SHAPE.seq_len}, BPE {LAPTOP_SHAPE.vocab_size}, ZeRO-0")
    say(f"{'size':<9} {'family':<15} {'eager tok/s':>11} {'lean':>8} {'compiled':>9} "
        f"{'lean/eager':>10} {'comp/eager':>10} {'compile s':>9} {'break-even':>10}")
    speed = []
    for size in [s for s in args.sizes.split(",") if s]:
        for fam in args.families.split(","):
            r = bench_speed(size, fam, corpus, place, root, probe, args)
            speed.append(r)
            tok = r["tokens_per_s"]
            be = r["break_even_steps"]
            say(f"{size:<9} {fam:<15} {tok['eager']:>11,.0f} {tok['lean']:>8,.0f} {tok['compiled']:>9,.0f} "
                f"{r['speedup_lean']:>10.2f} {r['speedup']:>10.2f} {r['compile_s']:>9.1f} "
                f"{'never' if be is None else f'{be:,.0f}':>10}", flush=True)
    peak_rows = [bench_peak(s, corpus, place, root, probe, args) for s in args.peak_sizes.split(",") if s]
    peak = max(peaks)
    fraction = {}
    for r in peak_rows:
        fraction[r["width"]] = {n: r["flops_per_step"] / r["step_s"][n] / peak for n in ("plain", "engine")}
        say(f"{r['size']:<9} autoregressive  plain {fraction[r['width']]['plain']:.1%} of peak, engine "
            f"{fraction[r['width']]['engine']:.1%}; engine/plain ZeRO-0 {r['engine_ratio']['zero0']:.3f}, "
            f"ZeRO-3 {r['engine_ratio']['zero3']:.3f}", flush=True)
    say(f"best matmul peak probe of the run: {peak / 1e9:.0f} GFLOP/s")
    report = {"cpu": cpu_model(), "threads": threads, "peak_gflops": peak / 1e9,
              "speedup": _by_width(speed, "speedup"), "speedup_lean": _by_width(speed, "speedup_lean"),
              "compile_s": _by_width(speed, "compile_s"),
              "break_even_steps": _by_width(speed, "break_even_steps"),
              "tokens_per_s": _by_width(speed, "tokens_per_s"),
              "peak_fraction": fraction,
              "engine_ratio": {r["width"]: r["engine_ratio"] for r in peak_rows}}
    if args.json:
        sys.stdout.flush()
        os.dup2(stdout, 1)
        print(json.dumps(report, indent=1))
    return 0


def _by_width(rows: list[dict], key: str) -> dict:
    out: dict = {}
    for r in rows:
        out.setdefault(r["width"], {})[r["family"]] = r[key]
    return out


if __name__ == "__main__":
    raise SystemExit(main())
