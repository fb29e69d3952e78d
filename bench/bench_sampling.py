"""Sampler speed of every family on one backbone size, as ratios measured in one run:

- tokens/s of the masked, uniform and hybrid samplers at 3 step counts, and of the
  autoregressive sampler with its KV cache (seq_len positions), each the median of --repeats timed
  calls after a warm-up; ratio = family tokens/s ÷ autoregressive-with-cache tokens/s;
- the autoregressive sampler without a cache (the full prefix re-run per position) as a check of
  what the cache buys;
- Eso-LM's sampler at α₀ = 1 and 0.5 with its KV cache, and at α₀ = 1 without it (the full ordered
  forward per step): what 2602.15014's cached diffusion steps buy at each step count.

Speed does not depend on the weights, so the models are freshly initialised (masked sampling with
its logit cache does depend on how many positions change per step; that is a function of the
schedule, not of the weights). One thread, one process: the numbers of one run are comparable.

    python -m bench.bench_sampling [--size L2-d64] [--seq-len 128] [--n 32] [--steps 16,64,128]
"""
from __future__ import annotations

import argparse
import statistics

import torch

from core.ladder import model_config
from trainer.model.transformer import Transformer
from trainer.families.registry import NoiseConfig, build_family
from trainer.sampling.esolm import EsoLMSampler
from trainer.sampling.samplers import Draw, generate

FAMILIES = ("masked", "uniform", "hybrid")


def _model(size: str, family, seq_len: int) -> Transformer:
    torch.manual_seed(0)
    cfg = model_config(size, vocab_size=family.input_vocab_size, out_vocab_size=family.V,
                       seq_len=seq_len, causal=family.causal, time_cond=family.time_cond_default)
    return Transformer(cfg).eval()


def tokens_per_s(model, family, *, n, seq_len, steps, repeats, start_id=0,
                 settings=None) -> tuple[float, int]:
    kw = dict(n=n, seq_len=seq_len, steps=steps, seed=0, start_id=start_id,
              sampler_settings=settings)
    generate(model, family, **dict(kw, n=1, steps=min(steps, 2)))            # warm-up
    runs = [generate(model, family, **kw) for _ in range(repeats)]
    return n * seq_len / statistics.median(r.seconds for r in runs), runs[0].nfe


@torch.no_grad()
def uncached_ar(model, *, n, seq_len, repeats) -> float:
    """Tokens/s of AR temperature sampling that re-runs the whole prefix at every position."""
    import time
    gen = torch.Generator().manual_seed(0)
    times = []
    for _ in range(repeats):
        seq = torch.zeros((n, 1), dtype=torch.long)
        t0 = time.perf_counter()
        for _ in range(seq_len):
            probs = model(seq[:, -model.cfg.seq_len:])[:, -1].float().softmax(-1)
            seq = torch.cat([seq, torch.multinomial(probs, 1, generator=gen)], 1)
        times.append(time.perf_counter() - t0)
    return n * seq_len / statistics.median(times)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="L2-d64")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--vocab", type=int, default=512)
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--steps", default="16,64,128")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    steps = [int(s) for s in args.steps.split(",")]
    ar_fam = build_family(NoiseConfig(family="autoregressive"), args.vocab)
    ar_model = _model(args.size, ar_fam, args.seq_len)
    ar, _ = tokens_per_s(ar_model, ar_fam, n=args.n, seq_len=args.seq_len, steps=1, repeats=args.repeats)
    ar_plain = uncached_ar(ar_model, n=args.n, seq_len=args.seq_len, repeats=args.repeats)
    print(f"sampler speed, {args.size}, vocab {args.vocab}, {args.n} x {args.seq_len} tokens, "
          f"{args.threads} thread(s), median of {args.repeats}")
    print(f"{'family':<16} {'steps':>6} {'nfe':>5} {'tokens/s':>10} {'x AR+KV':>8}")
    print(f"{'autoregressive':<16} {args.seq_len:>6} {args.seq_len:>5} {ar:>10,.0f} {1.0:>8.2f}  (KV cache)")
    print(f"{'autoregressive':<16} {args.seq_len:>6} {args.seq_len:>5} {ar_plain:>10,.0f} "
          f"{ar_plain / ar:>8.2f}  (no cache: prefix re-run per position)")
    for name in FAMILIES:
        fam = build_family(NoiseConfig(family=name), args.vocab)
        model = _model(args.size, fam, args.seq_len)
        for s in steps:
            tps, nfe = tokens_per_s(model, fam, n=args.n, seq_len=args.seq_len, steps=s,
                                    repeats=args.repeats)
            print(f"{name:<16} {s:>6} {nfe:>5} {tps:>10,.0f} {tps / ar:>8.2f}")
    eso = build_family(NoiseConfig(family="esolm"), args.vocab)
    model = _model(args.size, eso, args.seq_len)
    for settings in ({}, {"kv_cache": False}, {"alpha_0": 0.5}):
        label = Draw().label(EsoLMSampler.name, EsoLMSampler(**settings).settings())
        for s in steps:
            tps, nfe = tokens_per_s(model, eso, n=args.n, seq_len=args.seq_len, steps=s,
                                    repeats=args.repeats, settings=settings)
            print(f"{'esolm':<16} {s:>6} {nfe:>5} {tps:>10,.0f} {tps / ar:>8.2f}  ({label})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
