"""Benchmark: the training step (plain PyTorch vs DeepSpeed ZeRO-0 / ZeRO-3), MFU, MLflow share.

    python -m bench.bench_train [--sizes L2-d64,L3-d96,L4-d128,L6-d256] [--threads 2] [--rounds 9]
                                [--engine FIELD=JSON ...] [--no-baseline] [--no-train-run]

One process, one table, every number measured in this run:

- step time of the same model (same seed, same fp32 init; first-step losses are checked equal) on
  the same batches (8 x 128 tokens, masked family), under (a) a plain PyTorch loop: Transformer +
  the engine's AdamW + LambdaLR (`engine.build_optimizer`) + `objective.batch_loss` +
  clip_grad_norm_, on torch's own F.linear; (b) the DeepSpeed engine exactly as trainer/job/engine.py
  builds it (`placement`, `init_distributed`, `build_engine`; one launcher-less process) at ZeRO-0
  and ZeRO-3, and (unless --no-baseline) ZeRO-3 without leaf blocks, the setting before this bench.
  The variants run interleaved, a few steps each per round with the order rotated, so that a
  shared, noisy machine slows them alike; step times are medians over all timed steps (p10-p90),
  ratios the median of per-round ratios (min-max).
- MFU = train_flops_per_token x tokens/s / fp32 matmul peak. The peak is measured in this run
  (trainer.tools.peak.measure, same threads), one probe per round, and is the best probe (see main()).
- MLflow share = RunResult.log_seconds / wall_seconds of a real `train(cfg)` on a temp sqlite store.

Targets (issue 3): ZeRO-3 / plain <= 1.2 at width >= 256; logging <= 2% of the run's wall time.
The crossover (size below which ZeRO-3 costs > 20% over plain) is printed from the measured sizes.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from trainer.config import EngineConfig, RunConfig, TrainConfig
from trainer.data.loader import DataConfig, load_corpus, sample_batch
from trainer.job.engine import build_engine, build_optimizer, ds_config, init_distributed, placement
from core.flops import mfu, train_flops_per_token
from core.ladder import LADDER, model_config
from trainer.model.transformer import Transformer
from trainer.families.registry import NoiseConfig, build_family
from trainer.job.objective import batch_loss
from trainer.tools.peak import measure
from trainer.job.tracking import Tracker
from trainer.job.train import train

RATIO_TARGET = 1.2          # ZeRO-3 / plain step time, at width >= RATIO_WIDTH
RATIO_WIDTH = 256
LOG_SHARE_TARGET = 0.02     # MLflow seconds / run wall seconds
N_BATCHES = 16              # distinct batches cycled through (data loading is not timed)
PEAK_PROBE_S = 0.2          # one matmul-peak probe per round, so the peak sees the same contention
_NATIVE_LINEAR = torch.nn.functional.linear


@contextlib.contextmanager
def native_linear():
    """Run torch's own F.linear. A ZeRO-3 engine built with memory_efficient_linear=True (DeepSpeed's
    default) replaces torch.nn.functional.linear process-wide with its autograd function and never
    puts it back, so a reference loop in the same process would silently run DeepSpeed's linear."""
    current = torch.nn.functional.linear
    torch.nn.functional.linear = _NATIVE_LINEAR
    try:
        yield
    finally:
        torch.nn.functional.linear = current


@dataclass
class Timings:
    name: str
    rounds: list[list[float]] = field(default_factory=list)     # seconds per step, per round

    def all(self) -> list[float]:
        return [t for r in self.rounds for t in r]

    def median(self) -> float:
        return statistics.median(self.all())

    def spread(self) -> tuple[float, float]:
        """(p10, p90) of all timed steps."""
        q = statistics.quantiles(self.all(), n=10, method="inclusive")
        return q[0], q[-1]

    def round_medians(self) -> list[float]:
        return [statistics.median(r) for r in self.rounds]


# --- steppers: each builds its own model from the same seed and returns step(i) -> loss ---------

def plain_stepper(mcfg, tc: TrainConfig, family, batches, total_steps: int):
    """Reference loop: no DeepSpeed. The engine's optimizer and schedule (build_optimizer), clip."""
    torch.manual_seed(tc.seed)
    model = Transformer(mcfg)
    opt, sched = build_optimizer(model, tc, total_steps)
    model.train()

    def step(i: int) -> float:
        with native_linear():
            loss = batch_loss(model, family, batches[i % len(batches)], _gen(i))
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()
    return step, lambda: None


def engine_stepper(mcfg, tc: TrainConfig, eng: EngineConfig, place, family, batches, total_steps):
    torch.manual_seed(tc.seed)
    engine = build_engine(Transformer(mcfg), tc, eng, place, 1, total_steps)
    engine.train()

    # ZeRO-3 runs the F.linear DeepSpeed installed; other stages run torch's, as in a process of their own
    linear = contextlib.nullcontext if eng.zero_stage == 3 else native_linear

    def step(i: int) -> float:
        with linear():
            loss = batch_loss(engine, family, batches[i % len(batches)], _gen(i))
            engine.backward(loss)
        engine.step()
        return loss.item()
    return step, engine.destroy


def _gen(i: int) -> torch.Generator:
    return torch.Generator().manual_seed(1000 + i)


def time_variants(steppers: dict, warmup: int, round_s: float, variant_s: float, min_rounds: int,
                  probe=None) -> tuple[dict, dict, int]:
    """Interleaved timing. After `warmup` steps of each variant, one more step of the first sets the
    pace: a round runs `steps` (~round_s seconds) of every variant, order rotated per round, then
    `probe()`; rounds repeat until each variant has ~variant_s seconds (at least min_rounds). Short
    rounds keep the variants of one round under the same load from other processes. Returns the
    timings, each variant's first-step loss (same init and batch: must agree) and steps per round."""
    names = list(steppers)
    first = {n: steppers[n](0) for n in names}
    for n in names:
        for i in range(1, warmup):
            steppers[n](i)
    t0 = time.perf_counter()
    steppers[names[0]](warmup)
    pace = time.perf_counter() - t0
    steps = max(1, round(round_s / pace))
    rounds = max(min_rounds, round(variant_s / (steps * pace)))
    out = {n: Timings(n) for n in names}
    i0 = warmup + 1
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for n in order:
            times = []
            for i in range(i0, i0 + steps):
                t0 = time.perf_counter()
                steppers[n](i)
                times.append(time.perf_counter() - t0)
            out[n].rounds.append(times)
        if probe:
            probe()
        i0 += steps
    return out, first, steps


def ratio(a: Timings, b: Timings) -> tuple[float, float, float]:
    """Median, min, max over rounds of (a's round median / b's round median)."""
    rs = [x / y for x, y in zip(a.round_medians(), b.round_medians())]
    return statistics.median(rs), min(rs), max(rs)


def bench_sizes(args, place, peaks: list[float]) -> list[dict]:
    """Step times per size; appends one matmul-peak probe per round to `peaks`. MFU is filled in
    later by `add_mfu`, against the best probe of the run."""
    corpus = load_corpus(DataConfig())
    family = build_family(NoiseConfig(family=args.family), corpus.vocab_size)
    tc = TrainConfig(batch_size=args.batch, seq_len=args.seq_len)
    batches = [torch.from_numpy(sample_batch(corpus.train, tc.batch_size, tc.seq_len, seed=0, step=s))
               for s in range(N_BATCHES)]
    z3 = replace(EngineConfig(), threads=args.threads, zero_stage=3, **args.engine)
    z0 = replace(z3, zero_stage=0)
    total = 10_000                                  # LR schedule length: timing runs in its warmup
    probe = lambda: peaks.append(measure(place.device, torch.float32, seconds=PEAK_PROBE_S))  # noqa: E731
    rows = []
    for size in args.sizes:
        mcfg = model_config(size, vocab_size=family.input_vocab_size, out_vocab_size=corpus.vocab_size,
                            seq_len=tc.seq_len, causal=family.causal, time_cond="none")
        tokens = tc.batch_size * tc.seq_len
        flops_per_step = train_flops_per_token(mcfg) * tokens
        built = {"plain": plain_stepper(mcfg, tc, family, batches, total),
                 "zero0": engine_stepper(mcfg, tc, z0, place, family, batches, total),
                 "zero3": engine_stepper(mcfg, tc, z3, place, family, batches, total)}
        if args.baseline:
            built["zero3_stock"] = engine_stepper(mcfg, tc, replace(z3, zero3_leaf_blocks=False), place,
                                                  family, batches, total)
        t, first, steps = time_variants({k: v[0] for k, v in built.items()}, args.warmup, args.round_s,
                                        args.variant_s, args.rounds, probe)
        for _, cleanup in built.values():
            cleanup()
        r3, r3lo, r3hi = ratio(t["zero3"], t["plain"])
        row = {"size": size, "width": LADDER[size].d_model, "steps_per_round": steps,
               "flops_per_step": flops_per_step,
               "loss_match": max(abs(first[k] - first["plain"]) for k in first),
               "ratio_z3": r3, "ratio_z3_range": (r3lo, r3hi), "ratio_z0": ratio(t["zero0"], t["plain"])[0]}
        if args.baseline:
            row["ratio_z3_stock"] = ratio(t["zero3_stock"], t["plain"])[0]
        for k, tim in t.items():
            row[k] = {"median_s": tim.median(), "p10_p90_s": tim.spread()}
        rows.append(row)
        print(f"  {size}: {steps} steps x {len(t['plain'].rounds)} rounds per variant, "
              f"ZeRO-3 / plain {r3:.2f}", flush=True)
    return rows


def add_mfu(rows: list[dict], peak: float) -> None:
    for row in rows:
        for k in ("plain", "zero0", "zero3", "zero3_stock"):
            if k in row:
                row[k]["mfu"] = mfu(row["flops_per_step"] / row[k]["median_s"], peak)


def logging_share(args) -> dict:
    """A real train(cfg) on a fresh temp sqlite store; MLflow seconds / wall seconds.

    The store and experiment are created first, as a sweep driver does (STACK.md: concurrent fresh
    sqlite DBs race), and that one-off setup is timed apart. log_seconds covers run creation,
    params, metric batches, tags and termination; the Tracker's lookup calls at start (open client,
    find experiment, find run by config hash) are not in it, so they are timed separately."""
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        uri = f"sqlite:///{Path(tmp) / 'mlflow.db'}"
        t0 = time.perf_counter()
        Tracker(uri, "bench")
        setup = time.perf_counter() - t0
        cfg = RunConfig.from_dict({
            "size": args.log_size, "sweep": "bench", "noise": {"family": args.family},
            "train": {"budget_flops": args.log_budget, "batch_size": args.batch, "seq_len": args.seq_len},
            "engine": {"threads": args.threads, **args.engine},
            "io": {"tracking_uri": uri, "out_dir": str(Path(tmp) / "runs"), "experiment": "bench"}})
        res = train(cfg, progress=False)
        t0 = time.perf_counter()
        Tracker(uri, "bench").existing(cfg.run_id())
        lookup = time.perf_counter() - t0
    return {"size": args.log_size, "budget": args.log_budget, "status": res.status, "steps": res.steps,
            "wall_s": res.wall_seconds, "log_s": res.log_seconds,
            "share": res.log_seconds / res.wall_seconds, "lookup_s": lookup,
            "share_with_lookup": (res.log_seconds + lookup) / res.wall_seconds, "store_setup_s": setup}


# --- output ----------------------------------------------------------------------------------

def _ms(x: float) -> str:
    return f"{1e3 * x:7.1f}"


def _row_line(r: dict) -> str:
    cols = []
    for k in ("plain", "zero0", "zero3"):
        lo, hi = r[k]["p10_p90_s"]
        cols.append(f"{_ms(r[k]['median_s'])} ({_ms(lo).strip()}-{_ms(hi).strip()})")
    lo, hi = r["ratio_z3_range"]
    return (f"{r['size']:>9} {r['flops_per_step'] / 1e9:6.2f} | " + " | ".join(cols) +
            f" | {r['ratio_z0']:5.2f} | {r['ratio_z3']:5.2f} ({lo:.2f}-{hi:.2f}) | "
            f"{100 * r['plain']['mfu']:5.1f}% {100 * r['zero3']['mfu']:5.1f}%" +
            (f" | {r['ratio_z3_stock']:5.2f}" if "ratio_z3_stock" in r else ""))


def header(baseline: bool) -> str:
    return (f"{'size':>9} {'GFLOP':>6} | {'plain ms (p10-p90)':<21} | {'ZeRO-0 ms (p10-p90)':<21} | "
            f"{'ZeRO-3 ms (p10-p90)':<21} | {'Z0/pl':>5} | {'Z3/plain (range)':<17} | "
            f"{'MFU pl / Z3':<13}" + (" | Z3 no-leaf/pl" if baseline else ""))


def crossover(rows: list[dict], key: str = "ratio_z3", label: str = "ZeRO-3") -> str:
    """Where ZeRO-3's overhead crosses RATIO_TARGET, from the measured sizes (ladder order)."""
    rows = sorted(rows, key=lambda r: list(LADDER).index(r["size"]))
    over = [i for i, r in enumerate(rows) if r[key] > RATIO_TARGET]
    pct = ", ".join(f"{r['size']} {100 * (r[key] - 1):+.0f}%" for r in rows)
    lim = f"{RATIO_TARGET - 1:.0%}"
    if not over:
        where = f"within {lim} at every measured size"
    elif over[-1] == len(rows) - 1:
        where = f"above {lim} up to the largest measured size, {rows[-1]['size']}"
    elif over != list(range(over[-1] + 1)):
        where = "not monotone in size (noise?): see the per-size numbers"
    else:
        where = f"above {lim} up to {rows[over[-1]]['size']}, within it from {rows[over[-1] + 1]['size']}"
    return f"crossover: {label} overhead over plain is {where} ({pct})"


def verdicts(rows: list[dict], peak: dict, log: dict | None) -> list[str]:
    lines = []
    wide = [r for r in rows if r["width"] >= RATIO_WIDTH]
    for r in wide:
        ok = r["ratio_z3"] <= RATIO_TARGET
        lines.append(f"ZeRO-3 / plain at {r['size']}: {r['ratio_z3']:.2f} (target <= {RATIO_TARGET}): "
                     f"{'PASS' if ok else 'MISS'}")
    if not wide:
        lines.append(f"ZeRO-3 / plain: no size of width >= {RATIO_WIDTH} measured: MISS")
    lines.append(crossover(rows))
    if "ratio_z3_stock" in rows[0]:
        lines.append(crossover(rows, "ratio_z3_stock", "before (ZeRO-3 without leaf blocks)"))
    bad = max(r["loss_match"] for r in rows)
    lines.append(f"same model and batch: first-step losses agree to {bad:.1e} across variants: "
                 f"{'PASS' if bad < 1e-5 else 'MISS'}")
    q = statistics.quantiles(peak["all"], n=10, method="inclusive")
    lines.append(f"fp32 matmul peak ({peak['threads']} threads, 1024^3 matmul, {len(peak['all'])} probes "
                 f"interleaved with the rounds): max {peak['max'] / 1e9:.0f} GFLOP/s = the peak MFU "
                 f"divides by (median {peak['median'] / 1e9:.0f}, p10-p90 {q[0] / 1e9:.0f}-"
                 f"{q[-1] / 1e9:.0f}: probes slowed by other processes)")
    if log:
        ok = log["share"] <= LOG_SHARE_TARGET
        verdict = "PASS" if ok else "MISS"
        lines.append(f"MLflow logging: {log['log_s']:.3f} s of {log['wall_s']:.1f} s wall = "
                     f"{100 * log['share']:.2f}% (target <= {LOG_SHARE_TARGET:.0%}): {verdict}"
                     f"  [{log['size']}, {log['budget']:.0e} FLOPs, {log['steps']} steps, {log['status']}; "
                     f"+ start-up lookups {log['lookup_s']:.3f} s -> {100 * log['share_with_lookup']:.2f}%; "
                     f"one-off store creation {log['store_setup_s']:.2f} s not counted]")
    return lines


def _kv(items: list[str]) -> dict:
    out = {}
    for item in items:
        k, _, v = item.partition("=")
        out[k] = json.loads(v)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.bench_train", description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="L2-d64,L3-d96,L4-d128,L6-d256")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--family", default="masked")
    ap.add_argument("--rounds", type=int, default=9, help="minimum interleaved rounds per size")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--round-s", type=float, default=0.3, help="seconds per variant per round")
    ap.add_argument("--variant-s", type=float, default=6.0, help="timed seconds per variant per size")
    ap.add_argument("--engine", nargs="*", default=[], metavar="FIELD=JSON",
                    help="EngineConfig overrides for the DeepSpeed variants (and the logging run)")
    ap.add_argument("--no-baseline", dest="baseline", action="store_false",
                    help="skip timing ZeRO-3 without leaf blocks (zero3_leaf_blocks=False, the before)")
    ap.add_argument("--log-size", default="L2-d64")
    ap.add_argument("--log-budget", type=float, default=3e11)
    ap.add_argument("--no-train-run", action="store_true", help="skip the MLflow logging-share run")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    args.sizes = [s for s in args.sizes.split(",") if s]
    args.engine = _kv(args.engine)
    eng = replace(EngineConfig(), threads=args.threads, **args.engine)

    place = placement(eng)                              # sets torch threads, DS_ACCELERATOR=cpu
    init_distributed(place)
    peaks = [measure(place.device, torch.float32, seconds=PEAK_PROBE_S) for _ in range(3)]
    zero = ds_config(TrainConfig(batch_size=args.batch), replace(eng, zero_stage=3), place, 1)
    print(f"training step: batch {args.batch} x {args.seq_len} tokens, fp32, 1 process, {args.threads} "
          f"threads, {args.family} family; ZeRO-3 as built by "
          f"trainer/job/engine.py: {json.dumps(zero['zero_optimization'])}", flush=True)
    rows = bench_sizes(args, place, peaks)
    # The peak is the best probe: other processes on a shared machine only ever slow a probe down
    # (a 2-thread matmul runs at the pace of its slower thread), so the median of the probes flips
    # between ~1 and ~2 cores' worth with the load, and the maximum estimates the hardware's peak.
    peak = {"threads": args.threads, "all": peaks, "median": statistics.median(peaks), "max": max(peaks)}
    add_mfu(rows, peak["max"])
    log = None if args.no_train_run else logging_share(args)
    print("step time: median over all timed steps (p10-p90); Z0/pl, Z3/plain: median of per-round "
          "ratios (min-max)" + ("; last column: ZeRO-3 / plain without leaf blocks" if args.baseline else ""))
    print(header(args.baseline))
    for row in rows:
        print(_row_line(row))
    for line in verdicts(rows, peak, log):
        print(line)
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "peak": peak, "logging": log}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
