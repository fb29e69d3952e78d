"""The sampling job: one trained run sampled at several step counts, timed, and scored by a judge.

Trainer work, wherever it is scheduled: orchestrator/sampling.py decides which runs to sample and
runs `sample_job` in a Ray task, then logs what it returns to MLflow. Arguments and results are
plain data (a `Job`, a dict), and torch is imported inside the functions, so the driver imports
this module without loading torch.

The autoregressive family is sampled once, at seq_len steps (its KV cache decodes one token per
step); the others at every step count of the job. Each point's time is the median of `repeats`
identical calls after a warm-up. gen-PPL is the judge's perplexity on the samples
(trainer/sampling/quality.py): offline and reproducible, comparable only under one judge.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path

from core import schema as M


@dataclass(frozen=True)
class Job:
    """One trained run to sample (everything a Ray task needs, plain data)."""
    source_run: str          # MLflow run id of the trained run
    run_dir: str             # out_dir/<run_id>: config.json + model.pt
    judge_dir: str
    steps: tuple[int, ...]
    n: int
    seed: int
    temperature: float
    threads: int
    repeats: int
    top_p: float = 1.0       # trainer.sampling.samplers.Draw
    greedy_final: bool = False
    sampler: str | None = None   # one of the family's samplers by name (None: its default)
    sampler_settings: dict = field(default_factory=dict)   # its settings (NoiseFamily.pick_sampler)


def parse_settings(text: str) -> dict[str, str]:
    """'schedule=cap,eta=0.02' -> {'schedule': 'cap', 'eta': '0.02'} (the CLIs' --sampler-settings;
    the sampler converts the values, NoiseFamily.pick_sampler). ValueError naming a bad item."""
    out = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key.strip() or not value.strip():
            raise ValueError(f"--sampler-settings: {item!r} is not KEY=VALUE")
        out[key.strip()] = value.strip()
    return out


def sampler_fields(sampler) -> dict:
    """A sampler's settings, all of them (its dataclass fields): what identifies a measurement."""
    import dataclasses
    return dataclasses.asdict(sampler) if dataclasses.is_dataclass(sampler) else {}


def sample_job(job: Job) -> dict:
    """Sample at every step count, time it, score it. Returns plain data: {"source_run", "seq_len",
    "sampler" (its name with its settings and the non-default draw settings, Draw.label),
    "sampler_name", "sampler_settings" (sampler_fields), "points": [{"steps", "example",
    <core.schema.SAMPLING_METRICS>...}, ...]}."""
    import torch

    from trainer.sampling.quality import gen_ppl, unigram_entropy
    from trainer.sampling.sample import load_run
    from trainer.sampling.samplers import generate

    torch.set_num_threads(job.threads)
    model, family, cfg, corpus = load_run(job.run_dir)
    judge, _, judge_cfg, _ = load_run(job.judge_dir)
    if judge_cfg.data != cfg.data:
        raise ValueError(f"judge {judge_cfg.run_id()} was trained on other data/tokenizer than "
                         f"{cfg.run_id()}: gen-PPL would not be comparable")
    T = cfg.train.seq_len
    steps_list = (T,) if family.causal else job.steps
    chosen = family.pick_sampler(job.sampler, job.sampler_settings)
    kw = dict(n=job.n, seq_len=T, seed=job.seed, temperature=job.temperature, top_p=job.top_p,
              greedy_final=job.greedy_final, start_id=corpus.eot_id, sampler=job.sampler,
              sampler_settings=job.sampler_settings)
    label = generate(model, family, **dict(kw, n=1), steps=2).sampler     # warm-up (allocators)
    points = []
    for steps in steps_list:
        runs = [generate(model, family, **kw, steps=steps) for _ in range(job.repeats)]
        seconds = statistics.median(r.seconds for r in runs)
        tokens = runs[0].tokens                                            # same seed: identical
        points.append({"steps": runs[0].steps, M.METRIC_TOKENS_PER_S: tokens.numel() / seconds,
                       M.METRIC_LATENCY_S: seconds / job.n,
                       M.METRIC_GEN_PPL: gen_ppl(judge, tokens, corpus.eot_id),
                       M.METRIC_ENTROPY: unigram_entropy(tokens), M.METRIC_NFE: float(runs[0].nfe),
                       "example": corpus.decode(tokens[0].tolist())})
    return {"source_run": job.source_run, "points": points, "seq_len": T, "sampler": label,
            "sampler_name": chosen.name, "sampler_settings": sampler_fields(chosen)}


def ref_entropy(judge_dir: str | Path, n: int) -> float:
    """Mean per-sequence unigram entropy of n real validation windows of the study's seq_len: the
    yardstick below which samples count as degenerate."""
    from trainer.data.loader import validation_windows
    from trainer.sampling.quality import unigram_entropy
    from trainer.sampling.sample import load_run
    _, _, cfg, corpus = load_run(judge_dir)
    windows = validation_windows(corpus.val, n, cfg.train.seq_len)
    return unigram_entropy(windows[:, :cfg.train.seq_len])
