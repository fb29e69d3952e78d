"""Benchmark: training tokens/s of the small laptop sizes, every family (the numbers behind
sweeps/calibration.py's CPU_TOKENS_PER_S), and what computing logits only where the loss is scored saves.

    python -m bench.bench_tokens [--sizes L1-d8,L1-d12,...] [--families masked,uniform] [--rounds 3]

Plain loop, as the calibration table is defined: bench.bench_train's reference loop (Transformer +
the engine's AdamW param groups + LR schedule + grad clip + `objective.batch_loss`), 1 thread, batch
8 x 128 of the packaged corpus at BPE 512, fp32. Each round
times `--steps` steps (after 5 warm-up steps) of every variant, interleaved so that a noisy machine
slows them alike; a variant's step time is the median over its rounds of the per-round medians.

For masked diffusion two variants run: `scored` (the trainer's path: the output head and the loss run
only at masked positions, NoiseFamily.scored_positions) and `all` (logits at every position, the
same loss value). The printed ratio is all / scored step time, measured in this run.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from bench.bench_train import plain_stepper
from trainer.config import TrainConfig
from trainer.data.loader import DataConfig, load_corpus, sample_batch
from core.flops import train_flops_per_token
from core.ladder import LADDER, model_config
from trainer.families.registry import NoiseConfig, build_family

SMALL = ("L1-d8", "L1-d12", "L1-d16", "L2-d16", "L2-d24", "L2-d32", "L2-d48", "L2-d64")
FAMILIES = ("autoregressive", "masked", "uniform", "hybrid")
B, T, V = 8, 128, 512


class Variant:
    """One (size, family, path) training loop with its own model, optimizer and noise stream."""

    def __init__(self, size: str, family: str, scored: bool, corpus, total_steps: int):
        fam = build_family(NoiseConfig(family=family), V)
        if not scored:
            fam.scored_positions = lambda batch: None      # logits at every position
        mcfg = model_config(size, vocab_size=fam.input_vocab_size, out_vocab_size=V, seq_len=T,
                            causal=fam.causal, time_cond=fam.time_cond_default)
        batches = [torch.from_numpy(sample_batch(corpus.train, B, T, seed=0, step=i)) for i in range(8)]
        self.step, _ = plain_stepper(mcfg, TrainConfig(batch_size=B, seq_len=T), fam, batches, total_steps)
        self.fpt = train_flops_per_token(mcfg)
        self.step_no = 0
        self.times: list[float] = []

    def run(self, steps: int, timed: bool) -> None:
        ts = []
        for _ in range(steps):
            t0 = time.perf_counter()
            self.step(self.step_no)
            ts.append(time.perf_counter() - t0)
            self.step_no += 1
        if timed:
            self.times.append(statistics.median(ts))

    @property
    def step_s(self) -> float:
        return statistics.median(self.times)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default=",".join(SMALL))
    ap.add_argument("--families", default=",".join(FAMILIES))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=25)
    args = ap.parse_args(argv)
    sizes, families = args.sizes.split(","), args.families.split(",")
    for s in sizes:
        if s not in LADDER:
            raise SystemExit(f"--sizes: {s!r} is not in the ladder")
    torch.set_num_threads(1)
    corpus = load_corpus(DataConfig(vocab_size=V))
    print(f"tokens/s, plain loop, 1 thread, batch {B} x {T}, BPE {V}, fp32; median of {args.rounds} "
          f"rounds x {args.steps} steps")
    print(f"{'size':<8} {'FLOPs/tok':>9} " + " ".join(f"{f:>14}" for f in families)
          + f" {'masked all/scored':>18}")
    table = {}
    total = 5 + args.rounds * args.steps
    for size in sizes:
        variants = {f: Variant(size, f, True, corpus, total) for f in families}
        if "masked" in families:
            variants["masked-all"] = Variant(size, "masked", False, corpus, total)
        for v in variants.values():
            v.run(5, timed=False)
        order = list(variants)
        for r in range(args.rounds):
            for name in order[r % len(order):] + order[:r % len(order)]:
                variants[name].run(args.steps, timed=True)
        tok = {f: B * T / variants[f].step_s for f in families}
        table[size] = tok
        ratio = (f"{variants['masked-all'].step_s / variants['masked'].step_s:>17.2f}x"
                 if "masked" in families else "")
        fpt = next(iter(variants.values())).fpt
        print(f"{size:<8} {fpt:>9.3g} " + " ".join(f"{tok[f]:>14,.0f}" for f in families) + f" {ratio}",
              flush=True)
    print("\nas CPU_TOKENS_PER_S rows:")
    for size, tok in table.items():
        print(f'    "{size}": {{' + ", ".join(f'"{f}": {tok[f] / 1e3:.1f}e3' for f in families) + "},")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
