"""The evaluation job: one trained run scored on downstream tasks. Plain data in and out.

orchestrator/evaluation.py decides which runs to evaluate and runs `evaluate_job` in one Ray task
per run, then logs what it returns to MLflow (core/schema.py's evaluation layout). Torch is imported
inside the function, so the driver imports this module without loading torch. The scoring rules
are trainer/evaluation/score.py's, the task data trainer/evaluation/tasks.py's.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

DEFAULT_TASKS = ("hellaswag", "piqa", "arc_easy", "arc_challenge", "lambada", "gsm8k")


@dataclass(frozen=True)
class Settings:
    """How every run is scored: part of the evaluation key (orchestrator/evaluation.py)."""
    t_draws: int = 8
    """Diffusion: t draws per (item, choice) for the continuation's NELBO (the same draws for
    every choice of an item: common random numbers). The autoregressive NLL is exact: one pass."""
    seed: int = 0
    """Seeds the t draws, the corruptions and the samplers (per item: batching changes nothing)."""
    steps: int = 32
    """Diffusion: sampler steps for the generation tasks (LAMBADA's last word, GSM8K's answer)."""
    gen_tokens: int = 32
    """GSM8K: tokens generated after the question."""

    def __post_init__(self):
        for name in ("t_draws", "steps", "gen_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"evaluation setting {name} must be a positive int, got {value!r}")


@dataclass(frozen=True)
class EvalJob:
    """One trained run to evaluate (everything a Ray task needs, plain data)."""
    source_run: str          # MLflow run id of the trained run
    run_dir: str             # out_dir/<run_id>: config.json + model.pt
    tasks: tuple[str, ...]
    n: dict                  # {task: documents (None: all)}, the same subset for every run
    subset_seed: int = 0
    settings: Settings = field(default_factory=Settings)
    threads: int = 1


def evaluate_job(job: EvalJob) -> dict:
    """Score the run on every task. Returns {"source_run", "seq_len", "family", "sampler",
    "settings", "tasks": {name: {"version", "n", "n_total", "kind", "seconds", "metrics":
    {core.schema.EVAL_*: value}, "examples": [text, ...]}}}."""
    import torch

    from trainer.evaluation.score import SCORERS
    from trainer.evaluation.tasks import load_task
    from trainer.sampling.sample import load_run

    torch.set_num_threads(job.threads)
    model, family, cfg, corpus = load_run(job.run_dir)
    out = {"source_run": job.source_run, "seq_len": cfg.train.seq_len, "family": family.name,
           "sampler": family.sampler.name, "settings": asdict(job.settings), "tasks": {}}
    for name in job.tasks:
        task = load_task(name, job.n.get(name), job.subset_seed)
        t0 = time.perf_counter()
        metrics, examples = SCORERS[task.kind](model, family, task, corpus, job.settings)
        out["tasks"][name] = {"version": task.version, "n": len(task.items), "n_total": task.n_total,
                              "kind": task.kind, "seconds": time.perf_counter() - t0,
                              "metrics": metrics, "examples": examples}
    return out
