"""The GPU check: one prepared run on a GPU machine, one JSON report (bench/gpu_check.sh runs it).

    python -m bench.gpu_check --out report.json [--budget-s 420] [--data CORPUS_DIR] [--cpu]

What it measures, in this order (each section is written to the report as soon as it is done, so
a run stopped by its time limit still leaves everything measured until then):

1. `peak`: the bf16 matmul peak (trainer.tools.peak.measure, 8192^2), MFU's denominator.
2. `steps`: training step time, tokens/s and MFU (core/flops.py FLOPs / step time / peak) per family
   at widths 512, 1024, 2048 (ladder L12-d512, L20-d1024, L32-d2048; BPE 32768, T 1024, batch 16):
   the plain loop (Transformer + objective.loss + fused AdamW + clip, bf16 autocast, SDPA's
   flash/efficient kernels) and the DeepSpeed engine at ZeRO-0 and ZeRO-3 on 1 GPU, as
   trainer/job/engine.py builds it (when DeepSpeed imports: the check machine has no DeepSpeed
   unless its wheel travels beside the tree, see gpu_check.sh).
3. `train`: a short real training run per family (L6-d256, the corpus given by --data, else the
   project's packaged-corpus cache, else a synthetic order-1 Markov corpus) whose validation NELBO
   must fall below the data's unigram entropy: `below_unigram`.
4. `sampling`: sampling tokens/s per family and step count with each family's default sampler
   (2602.15014's speed-quality claim is about GPUs).

Nothing downloads. `--cpu` is the dry mode: the same sections and JSON shape on tiny sizes, on the
CPU, in seconds (tests/test_gpu_check.py); its numbers are not GPU results and say so (`dry`).
A failure of one item is recorded in it (`error`) and the check goes on; items the time budget
left out are listed in `skipped`.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from core.flops import train_flops_per_token
from core.ladder import model_config
from trainer.families.registry import FAMILIES, NoiseConfig, build_family
from trainer.job import objective
from trainer.model.transformer import Transformer
from trainer.sampling.samplers import generate
from trainer.tools.peak import cpu_model, measure

SCHEMA = 1


@dataclass(frozen=True)
class Scale:
    """The sizes one mode measures at."""
    step_sizes: tuple[str, ...]
    vocab: int
    seq_len: int
    batch: int
    timed_steps: int
    train_size: str
    train_steps: int
    train_batch: int
    train_seq: int
    sample_n: int
    sample_steps: tuple[int, ...]
    peak_n: int


GPU = Scale(step_sizes=("L12-d512", "L20-d1024", "L32-d2048"), vocab=32768, seq_len=1024, batch=16,
            timed_steps=5, train_size="L6-d256", train_steps=400, train_batch=64, train_seq=256,
            sample_n=64, sample_steps=(16, 64, 256), peak_n=8192)
CPU = Scale(step_sizes=("L1-d8", "L1-d16"), vocab=512, seq_len=64, batch=4, timed_steps=2,
            train_size="L1-d16", train_steps=60, train_batch=8, train_seq=64, sample_n=2,
            sample_steps=(4,), peak_n=1024)


class Report:
    """The JSON report, rewritten after every section."""

    def __init__(self, path: Path, dry: bool, device: torch.device):
        self.path, self.t0 = path, time.perf_counter()
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
        self.data: dict = {"schema": SCHEMA, "dry": dry, "device": name, "torch": torch.__version__,
                           "cuda": torch.version.cuda, "python": platform.python_version(),
                           "peak": None, "steps": [], "train": [], "sampling": [], "skipped": []}
        self.write()

    def write(self) -> None:
        self.data["wall_s"] = time.perf_counter() - self.t0
        tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.data, indent=1))
        tmp.replace(self.path)


def _error() -> str:
    return traceback.format_exc(limit=3).strip().splitlines()[-1]


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _model(size, family, vocab, seq_len, device):
    cfg = model_config(size, vocab_size=family.input_vocab_size, out_vocab_size=vocab, seq_len=seq_len,
                       causal=family.causal, time_cond=family.time_cond_default)
    torch.manual_seed(0)
    with torch.device(device):
        return Transformer(cfg), cfg


def _autocast(device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast(
        "cpu", enabled=False)


def time_plain(size, fam_name, sc: Scale, device) -> tuple[float, float]:
    """(median step seconds, FLOPs per step) of the plain loop."""
    family = build_family(NoiseConfig(family=fam_name), sc.vocab)
    model, cfg = _model(size, family, sc.vocab, sc.seq_len, device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    gen = torch.Generator(device).manual_seed(0)
    times = []
    for i in range(2 + sc.timed_steps):
        window = torch.randint(0, sc.vocab, (sc.batch, sc.seq_len + 1), device=device, generator=gen)
        _sync(device)
        t0 = time.perf_counter()
        with _autocast(device):
            loss = objective.batch_loss(model, family, window, gen)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss.item()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times[2:]), train_flops_per_token(cfg) * sc.batch * sc.seq_len


def time_engine(size, fam_name, sc: Scale, device, stage: int) -> tuple[float, float]:
    """(median step seconds, FLOPs per step) of the DeepSpeed engine at ZeRO `stage`, 1 rank: the
    job's own step (trainer.tools.probe.bare_loop: trainer/job/loop.py Loop.step) on random tokens."""
    from trainer.config import EngineConfig, RunConfig, TrainConfig
    from trainer.data.loader import DataConfig
    from trainer.job.engine import init_distributed, placement
    from trainer.plan import plan
    from trainer.tools.probe import bare_loop
    eng = EngineConfig(device=device.type, precision="bf16" if device.type == "cuda" else "fp32",
                       zero_stage=stage, compile="off")
    cfg = RunConfig(size=size, noise=NoiseConfig(family=fam_name), data=DataConfig(vocab_size=sc.vocab),
                    train=TrainConfig(batch_size=sc.batch, seq_len=sc.seq_len, lr=1e-4, budget_flops=1e21),
                    engine=eng)
    place = placement(eng)
    init_distributed(place)
    tokens = np.random.default_rng(0).integers(0, sc.vocab, 1 << 20, dtype=np.int64)
    loop = bare_loop(cfg, place, tokens, False, Path("/nonexistent-gpu-check"))
    times = []
    try:
        for i in range(2 + sc.timed_steps):
            _sync(device)
            t0 = time.perf_counter()
            loop.step(i)
            _sync(device)
            times.append(time.perf_counter() - t0)
    finally:
        loop.engine.destroy()
    return statistics.median(times[2:]), plan(cfg, sc.vocab).flops_per_step


def corpus_for(data: str | None, sc: Scale):
    """(train tokens, val tokens, vocab, unigram entropy in nats, source)."""
    from trainer.data.loader import Corpus, DataConfig, load_corpus
    if data:
        c = Corpus.open(Path(data))
        return np.asarray(c.train), np.asarray(c.val), c.vocab_size, c.unigram_entropy(), str(data)
    try:
        c = load_corpus(DataConfig(vocab_size=512))
        return np.asarray(c.train), np.asarray(c.val), c.vocab_size, c.unigram_entropy(), "packaged corpus"
    except Exception:                                   # no text packages on the check machine
        return _markov(sc)


def _markov(sc: Scale, vocab: int = 64, n: int = 2_000_000):
    """An order-1 Markov chain with sparse transitions: its conditional entropy is far below the
    unigram entropy, so any model that learns the bigram goes below the unigram."""
    rng = np.random.default_rng(0)
    nxt = rng.integers(0, vocab, (vocab, 4))
    x = np.empty(n, np.int64)
    x[0] = 0
    choice = rng.integers(0, 4, n)
    for i in range(1, n):
        x[i] = nxt[x[i - 1], choice[i]]
    counts = np.bincount(x, minlength=vocab) / n
    h = float(-(counts[counts > 0] * np.log(counts[counts > 0])).sum())
    cut = int(0.95 * n)
    return x[:cut], x[cut:], vocab, h, f"synthetic order-1 Markov, V={vocab}"


def train_run(fam_name, sc: Scale, device, corpus) -> dict:
    from trainer.data.loader import sample_batch, validation_windows
    train, val, vocab, h, source = corpus
    family = build_family(NoiseConfig(family=fam_name), vocab)
    model, cfg = _model(sc.train_size, family, vocab, sc.train_seq, device)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, fused=True, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 20) * 0.5 * (1 + math.cos(math.pi * s / sc.train_steps)))
    t0 = time.perf_counter()
    for step in range(sc.train_steps):
        window = torch.from_numpy(sample_batch(train, sc.train_batch, sc.train_seq, seed=0, step=step)
                                  ).to(device)
        gen = torch.Generator(device).manual_seed(step)
        with _autocast(device):
            loss = objective.batch_loss(model, family, window, gen)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    windows = validation_windows(val, 64, sc.train_seq)
    with _autocast(device):
        nelbo = objective.evaluate(model, family, windows, seed=1, t_repeats=2, device=device)
    return {"family": fam_name, "size": sc.train_size, "steps": sc.train_steps, "data": source,
            "val_nelbo": nelbo, "unigram_entropy": h, "below_unigram": bool(nelbo < h),
            "seconds": time.perf_counter() - t0, "model": model, "error": None}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="path of the JSON report")
    ap.add_argument("--cpu", action="store_true", help="dry mode: tiny sizes on the CPU")
    ap.add_argument("--budget-s", type=float, default=420.0,
                    help="stop starting new items after this many seconds (default %(default)s)")
    ap.add_argument("--data", default=None, help="a corpus cache directory (train.bin, val.bin, meta.json)")
    ap.add_argument("--families", default=",".join(FAMILIES))
    args = ap.parse_args(argv)
    out = Path(args.out)
    if not out.parent.is_dir():
        ap.error(f"--out: directory {out.parent} does not exist")
    if args.budget_s <= 0:
        ap.error("--budget-s must be > 0")
    families = args.families.split(",")
    for f in families:
        if f not in FAMILIES:
            ap.error(f"--families: {f!r} is not a family ({', '.join(FAMILIES)})")
    if args.data and not (Path(args.data) / "meta.json").is_file():
        ap.error(f"--data: {args.data} has no meta.json (a corpus cache directory is expected)")
    if not args.cpu and not torch.cuda.is_available():
        ap.error("no CUDA device: run with --cpu for the dry mode")
    device = torch.device("cpu" if args.cpu else "cuda")
    sc = CPU if args.cpu else GPU
    rep = Report(out, args.cpu, device)
    over = lambda: time.perf_counter() - rep.t0 > args.budget_s   # noqa: E731

    dtype = torch.float32 if args.cpu else torch.bfloat16
    rep.data["peak"] = {"dtype": str(dtype).replace("torch.", ""),
                        "tflops": measure(device, dtype, n=sc.peak_n) / 1e12}
    rep.write()
    peak = rep.data["peak"]["tflops"] * 1e12
    try:
        import deepspeed  # noqa: F401
        stages = (0, 3)
    except ImportError:
        stages = ()
        rep.data["skipped"].append("engine steps: deepspeed is not importable here")
    for variant in ("plain", *(f"zero{s}" for s in stages)):
        for size in sc.step_sizes:
            for fam in families:
                item = {"family": fam, "size": size, "variant": variant, "error": None}
                if over():
                    rep.data["skipped"].append(f"steps {variant} {fam} {size}: time budget")
                    continue
                try:
                    s, flops = (time_plain(size, fam, sc, device) if variant == "plain"
                                else time_engine(size, fam, sc, device, int(variant[4:])))
                    item.update(step_s=s, tokens_per_s=sc.batch * sc.seq_len / s, mfu=flops / s / peak)
                except Exception:
                    item["error"] = _error()
                rep.data["steps"].append(item)
                rep.write()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    corpus = corpus_for(args.data, sc)
    models = {}
    for fam in families:
        if over():
            rep.data["skipped"].append(f"train {fam}: time budget")
            continue
        try:
            r = train_run(fam, sc, device, corpus)
            models[fam] = r.pop("model")
        except Exception:
            r = {"family": fam, "error": _error()}
        rep.data["train"].append(r)
        rep.write()
    for fam, model in models.items():
        family = build_family(NoiseConfig(family=fam), corpus[2])
        for steps in (sc.sample_steps if not family.causal else (1,)):
            if over():
                rep.data["skipped"].append(f"sampling {fam} {steps}: time budget")
                continue
            item = {"family": fam, "steps": steps if not family.causal else sc.train_seq, "error": None}
            try:
                kw = dict(n=sc.sample_n, seq_len=sc.train_seq, steps=steps, seed=0, device=device,
                          start_id=0)
                generate(model, family, **dict(kw, n=1))                       # warm-up
                res = generate(model, family, **kw)
                item.update(tokens_per_s=sc.sample_n * sc.train_seq / res.seconds, nfe=res.nfe)
            except Exception:
                item["error"] = _error()
            rep.data["sampling"].append(item)
            rep.write()
    rep.write()
    print(f"gpu_check: report {out} ({rep.data['wall_s']:.0f} s; {len(rep.data['skipped'])} skipped)",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
