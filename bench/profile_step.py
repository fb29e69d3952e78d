"""Profile: where one training step's time goes, per family and width, on this machine.

    python -m bench.profile_step [--sizes L1-d8,L2-d32,L4-d128,L12-d512] [--families ...]
                                 [--steps 12] [--ops 0] [--json]

Each (size, family) is a laptop run (sweeps.recipe.LAPTOP_SHAPE: batch 8 x 128, BPE 512, fp32,
one thread, the DeepSpeed engine at the shape's ZeRO stage) built as trainer/job/train.py builds it,
stepped as trainer/job/loop.py `Loop.step` steps it, with a clock between the pieces (a CPU runs
every op synchronously, so wall-clock segments are exact):

    data      sample_batch (numpy windows) + torch.from_numpy
    noise     family.prepare (t, z_t, the batch's masks)
    fwd+loss  objective.loss (model forward and the family's loss, (B, T, V) work included)
    backward  engine.backward
    optim     engine.step (grad clip, AdamW, LR schedule; DeepSpeed's bookkeeping)
    sync      loss.item() + the divergence / checkpoint flags

`wrapper` is engine (backward + optim) minus the same model's plain PyTorch backward + clip +
AdamW + schedule (bench_train's reference loop), timed alternately in this run. `eval` is one
validation NELBO as the loop runs it (eval_seqs windows x eval_t_repeats, batch 32), as a
multiple of one step; a laptop run of min_steps steps evaluates evals + 1 times. `--ops K` also
prints the K ops with the most self CPU time (torch.profiler) of each (size, family).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from bench.bench_train import plain_stepper
from core.ladder import LADDER
from sweeps.grid import make_run
from sweeps.recipe import LAPTOP_SHAPE
from trainer.data.loader import load_corpus, sample_batch, validation_windows
from trainer.families.registry import FAMILIES, build_family
from trainer.job import objective
from trainer.job.engine import build_engine, init_distributed, placement
from trainer.job.loop import _noise_gen
from trainer.model.transformer import Transformer
from trainer.plan import plan
from trainer.tools.peak import cpu_model

SIZES = ("L1-d8", "L2-d32", "L4-d128", "L12-d512")
PIECES = ("data", "noise", "fwd+loss", "backward", "optim", "sync")


def _engine_step(engine, family, corpus, tc, place, step: int) -> dict[str, float]:
    """One Loop.step, piece by piece: seconds per piece."""
    out, t = {}, time.perf_counter()

    def lap(name):
        nonlocal t
        now = time.perf_counter()
        out[name], t = now - t, now
    window = torch.from_numpy(sample_batch(corpus.train, tc.batch_size, tc.seq_len, seed=tc.seed,
                                           step=step, pool_tokens=tc.data_pool_tokens))
    lap("data")
    batch = family.prepare(window.to(place.device), _noise_gen(tc.seed, step, place.device))
    lap("noise")
    with place.autocast:
        loss = objective.loss(engine, family, batch, normalizer=family.loss_count(batch))
    lap("fwd+loss")
    engine.backward(loss)
    lap("backward")
    engine.step()
    lap("optim")
    value = loss.item()
    flags = torch.tensor([float(value != value), 0.0])
    bool(flags[0] > 0)
    lap("sync")
    return out


def profile(size: str, fam_name: str, corpus, steps: int, ops: int) -> dict:
    cfg = make_run("profile", LAPTOP_SHAPE, size=size, family=fam_name, knob=None,
                   budget=4.21e11, pool_tokens=None)
    tc, p = cfg.train, plan(cfg, corpus.vocab_size)
    place = placement(cfg.engine)
    family = build_family(cfg.noise, corpus.vocab_size)
    torch.manual_seed(tc.seed)
    engine = build_engine(Transformer(p.model_cfg), tc, cfg.engine, place, 1, 10**6)
    engine.train()
    batches = [torch.from_numpy(sample_batch(corpus.train, tc.batch_size, tc.seq_len, seed=0, step=i))
               for i in range(8)]
    plain, _ = plain_stepper(p.model_cfg, tc, family, batches, 10**6)
    for i in range(3):                                   # warm-up: allocator, first-call paths
        _engine_step(engine, family, corpus, tc, place, i)
        plain(i)
    rows, plain_s = [], []
    for i in range(steps):
        rows.append(_engine_step(engine, family, corpus, tc, place, 3 + i))
        t0 = time.perf_counter()
        plain(3 + i)
        plain_s.append(time.perf_counter() - t0)
    piece = {k: statistics.median(r[k] for r in rows) for k in PIECES}
    step_s = statistics.median(sum(r.values()) for r in rows)
    plain_fwd = _plain_forward_s(p.model_cfg, tc, family, batches)
    wrapper = step_s - piece["data"] - piece["noise"] - piece["sync"] - statistics.median(plain_s)
    val = validation_windows(corpus.val, tc.eval_seqs, tc.seq_len)
    t0 = time.perf_counter()
    objective.evaluate(engine, family, val, seed=12345, batch_size=32, t_repeats=tc.eval_t_repeats)
    eval_s = time.perf_counter() - t0
    res = {"size": size, "family": fam_name, "width": LADDER[size].d_model,
           "step_ms": 1e3 * step_s, "plain_ms": 1e3 * statistics.median(plain_s),
           "pieces_ms": {k: 1e3 * v for k, v in piece.items()},
           "plain_fwd_ms": 1e3 * plain_fwd,
           "wrapper_ms": 1e3 * wrapper, "eval_ms": 1e3 * eval_s,
           "eval_steps": eval_s / step_s,
           "gflops": p.flops_per_step / step_s / 1e9}
    if ops:
        res["top_ops"] = _top_ops(engine, family, corpus, tc, place, ops)
    return res


def _plain_forward_s(mcfg, tc, family, batches) -> float:
    torch.manual_seed(0)
    model = Transformer(mcfg)
    ts = []
    for i in range(6):
        t0 = time.perf_counter()
        loss = objective.batch_loss(model, family, batches[i % len(batches)],
                                    torch.Generator().manual_seed(i))
        ts.append(time.perf_counter() - t0)
        del loss
    return statistics.median(ts[2:])


def _top_ops(engine, family, corpus, tc, place, k: int) -> list[tuple[str, float, int]]:
    from torch.profiler import ProfilerActivity, profile as tprof
    with tprof(activities=[ProfilerActivity.CPU]) as prof:
        for i in range(4):
            _engine_step(engine, family, corpus, tc, place, 100 + i)
    ev = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in ev)
    return [(e.key, e.self_cpu_time_total / total, e.count // 4) for e in ev[:k]]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default=",".join(SIZES))
    ap.add_argument("--families", default=",".join(FAMILIES))
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--ops", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(LAPTOP_SHAPE.engine.threads)
    init_distributed(placement(LAPTOP_SHAPE.engine))
    corpus = load_corpus(make_run("profile", LAPTOP_SHAPE, size="L1-d8", family="masked", knob=None,
                                  budget=1e11, pool_tokens=None).data)
    results = []
    if not args.json:
        print(f"{cpu_model()}; {LAPTOP_SHAPE.engine.threads} thread, batch {LAPTOP_SHAPE.batch_size} x "
              f"{LAPTOP_SHAPE.seq_len}, BPE {LAPTOP_SHAPE.vocab_size}, ZeRO-{LAPTOP_SHAPE.engine.zero_stage}; "
              f"median of {args.steps} steps; pieces in ms")
        print(f"{'size':<9} {'family':<15} {'step':>7} " + " ".join(f"{k:>8}" for k in PIECES)
              + f" {'plain':>7} {'p.fwd':>7} {'wrapper':>7} {'eval/step':>9} {'GFLOP/s':>7}")
    for size in args.sizes.split(","):
        for fam in args.families.split(","):
            r = profile(size, fam, corpus, args.steps, args.ops)
            results.append(r)
            if args.json:
                continue
            print(f"{size:<9} {fam:<15} {r['step_ms']:7.2f} "
                  + " ".join(f"{r['pieces_ms'][k]:8.2f}" for k in PIECES)
                  + f" {r['plain_ms']:7.2f} {r['plain_fwd_ms']:7.2f} {r['wrapper_ms']:7.2f} "
                    f"{r['eval_steps']:9.1f} {r['gflops']:7.2f}", flush=True)
            for name, share, count in r.get("top_ops", []):
                print(f"{'':<26} {share:6.1%} {count:5d}x {name}")
    if args.json:
        print(json.dumps({"cpu": cpu_model(), "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
