"""Benchmark: how noisy each training loss is, and what it buys in validation NELBO (issue 13).

    python -m bench.bench_loss [--sizes L1-d16,L2-d32] [--steps 600] [--families uniform,hybrid]
                               [--losses 'elbo,elbo t>=1e-3,gidd'] [--oracle-batches 300]
                               [--oracle-seeds 3] [--no-training | --no-oracle] [--threads 1]

One process, two tables, every number measured in this run:

1. Oracle (no training): i.i.d. tokens from the laptop corpus's unigram p (BPE 512), scored with the
   prediction x̂ = p, which is ELBO-optimal for such data (its NELBO is H(p), tests/test_noise.py).
   Relative std (std / mean over batches) of the batch training loss, batch 32 x 128, for the raw
   ELBO (t down to families.base.T_MIN), the ELBO with t floored at 1e-3 (NoiseConfig.t_min,
   2602.15014's sampling_eps), and the GIDD weighting (2512.10858; NoiseConfig.train_loss='gidd').
   Issue 13 measured 7.0%, 5.2% and 2.3% for uniform at 300 batches. The raw ELBO's batch loss is
   heavy-tailed (a corrupted token at t ~ 1e-5 weighs ~1e5), so one seed's sample std is itself
   noisy and usually low (the tail is rarely drawn): the table gives the spread over seeds.
2. Trained: each family x size x loss trained for the same steps on the same batches (laptop
   corpus, batch 8 x 128, AdamW at LR 3e-3, 5% warmup then linear decay to 10%, gradient norm
   clipped at 1; the laptop recipe's plain loop), then: relative std of the training loss over 64
   fresh batches at the final model (the estimator's noise, without the learning trend), and the
   validation NELBO (64 validation windows x 2 t-draws, the laptop evaluation). Validation is the
   exact NELBO for every loss: that column compares the losses on what the laws are fitted to.

Default run: training ~2 min on an idle core (estimated from sweeps/calibration.py CPU_TOKENS_PER_S; the
800-step, 1-seed version took 13 min on this shared, loaded 2-core machine); 600 steps is below the
laptop budgets (L1-d16 at 6e11 FLOPs is ~6,500 steps), so the NELBO column says which loss learns
faster early, not where each ends; `--steps 3000` for more.
"""
from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace

import numpy as np
import torch

from core.ladder import model_config
from trainer.data.loader import DataConfig, load_corpus, sample_batch, validation_windows
from trainer.families.registry import NoiseConfig, build_family
from trainer.job.objective import batch_loss, evaluate
from trainer.model.transformer import Transformer
from trainer.tools.peak import cpu_model, measure

V, T = 512, 128
LOSSES = (("elbo", {"train_loss": "elbo"}), ("elbo t>=1e-3", {"train_loss": "elbo", "t_min": 1e-3}),
          ("gidd", {"train_loss": "gidd"}))


def rel_std(values: list[float]) -> float:
    return statistics.stdev(values) / abs(statistics.mean(values))


def oracle_table(families: list[str], p: torch.Tensor, batches: int, seeds: int) -> None:
    print(f"\n1. oracle x̂ = unigram p on i.i.d. tokens from p (H(p) = "
          f"{float(-(p * p.log()).sum()):.4f} nats), batch 32 x {T}, {batches} batches; relative std "
          f"of the batch loss, median [min, max] over {seeds} seeds")
    print(f"{'family':<16} " + " ".join(f"{name:>20}" for name, _ in LOSSES))
    logits = p.log().expand(32, T, V)
    for family in families:
        cells = []
        for _, kw in LOSSES:
            fam = build_family(NoiseConfig(family=family, **kw), V)
            per_seed = []
            for seed in range(seeds):
                g = torch.Generator().manual_seed(seed)
                vals = []
                for _ in range(batches):
                    window = torch.multinomial(p, 32 * (T + 1), replacement=True, generator=g).view(32, T + 1)
                    with torch.no_grad():
                        vals.append(fam.loss(logits, fam.prepare(window, g)).item())
                per_seed.append(100 * rel_std(vals))
            cells.append(f"{statistics.median(per_seed):>5.1f}% [{min(per_seed):.1f}, {max(per_seed):.1f}]")
        print(f"{family:<16} " + " ".join(f"{c:>20}" for c in cells), flush=True)


def train_one(size: str, noise: NoiseConfig, tokens: np.ndarray, val: np.ndarray, steps: int) -> dict:
    fam = build_family(noise, V)
    torch.manual_seed(0)
    model = Transformer(model_config(size, vocab_size=fam.input_vocab_size, out_vocab_size=V,
                                     seq_len=T, causal=fam.causal, time_cond=fam.time_cond_default))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * max(0.1, 1 - s / steps))
    t0 = time.perf_counter()
    for step in range(steps):
        window = torch.from_numpy(sample_batch(tokens, 8, T, seed=0, step=step))
        loss = batch_loss(model, fam, window, torch.Generator().manual_seed(step))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        vals = [batch_loss(model, fam, torch.from_numpy(sample_batch(tokens, 8, T, seed=1, step=i)),
                           torch.Generator().manual_seed(10_000 + i)).item() for i in range(64)]
    nelbo = evaluate(model, fam, val, seed=12345, batch_size=32, t_repeats=2)
    return {"rel_std": rel_std(vals), "loss": statistics.mean(vals), "nelbo": nelbo, "seconds": seconds}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="L1-d16,L2-d32")
    ap.add_argument("--families", default="uniform,hybrid")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--oracle-batches", type=int, default=300)
    ap.add_argument("--oracle-seeds", type=int, default=3)
    ap.add_argument("--losses", default=",".join(name for name, _ in LOSSES),
                    help="trained losses, of: " + ", ".join(name for name, _ in LOSSES))
    ap.add_argument("--no-training", action="store_true", help="the oracle table only")
    ap.add_argument("--no-oracle", action="store_true", help="the trained table only")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    families, sizes = args.families.split(","), args.sizes.split(",")
    peak = measure(torch.device("cpu"), torch.float32)
    print(f"CPU: {cpu_model()}; {args.threads} thread(s); fp32 matmul peak measured now "
          f"{peak / 1e9:.1f} GFLOP/s")
    corpus = load_corpus(DataConfig(vocab_size=V))
    counts = np.bincount(np.asarray(corpus.train), minlength=V).astype(np.float64)
    p = torch.tensor((counts + 1e-3) / (counts + 1e-3).sum(), dtype=torch.float32)
    if not args.no_oracle:
        oracle_table(families, p, args.oracle_batches, args.oracle_seeds)
    if args.no_training:
        return 0

    val = validation_windows(corpus.val, 64, T)
    print(f"\n2. trained {args.steps} steps x 8 x {T} tokens (laptop corpus, BPE {V}); relative std "
          "of the training loss over 64 fresh batches at the end; validation NELBO (nats/token)")
    print(f"{'family':<16} {'size':<8} {'loss':<13} {'rel. std':>9} {'train loss':>11} "
          f"{'val NELBO':>10} {'train s':>8}")
    for family in families:
        for size in sizes:
            for name, kw in LOSSES:
                if name not in args.losses.split(","):
                    continue
                r = train_one(size, replace(NoiseConfig(family=family), **kw), corpus.train, val, args.steps)
                print(f"{family:<16} {size:<8} {name:<13} {100 * r['rel_std']:>8.1f}% {r['loss']:>11.4f} "
                      f"{r['nelbo']:>10.4f} {r['seconds']:>8.1f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
