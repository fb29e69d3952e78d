"""Dry-run table and ETA: a short measured throughput probe per distinct model shape, no Ray, no
training. Wall time on a CPU does not follow FLOPs at tiny widths (the softmax over the vocabulary
is memory-bound, STACK.md), so the ETA is measured, not derived from a FLOP/s figure. The probe is
trainer work (trainer/tools/probe.py); this module only calls it, and imports no torch itself.
"""
from __future__ import annotations

import heapq
import time
from collections.abc import Mapping
from dataclasses import dataclass

from sweeps.trajectory import planned_points, run_flops
from trainer.config import RunConfig
from trainer.plan import Plan, branch_configs, decay_steps, plan

TRIAL_OVERHEAD_S = 3.0   # slot time per trial beyond its loop: 1.6 s measured on smoke (bench/bench_sweep.py) + margin
EVAL_COST = 1 / 3        # a forward-only token costs ~1/3 of a training token


@dataclass(frozen=True)
class Row:
    cfg: RunConfig
    plan: Plan
    tokens_per_s: float
    seconds: float


def _shape_key(cfg: RunConfig, p: Plan) -> tuple:
    return (p.model_cfg, cfg.train.batch_size, cfg.engine, cfg.noise.family, cfg.engine.compiles(p.steps))


def probe_shapes(configs: list[RunConfig], slots: int, progress=print) -> list[tuple[float, float]]:
    """(tokens/s, warm-up seconds beyond steady steps) of each config's job step, measured by
    trainer/tools/probe.py in `slots` processes that time their steps at the same moments (a
    barrier after each warm-up), as the sweep's concurrent trials train: two one-thread trials
    share caches and memory bandwidth, which one probe at a time does not see (issue 16: real
    trials took 1.25x the one-at-a-time probe). The list is padded to a multiple of `slots`
    so that the last probes have company too. torch is imported in those processes only."""
    import multiprocessing
    from trainer.tools.probe import init_worker, probe_worker
    if not configs:
        return []
    n = max(1, min(slots, len(configs)))
    jobs = [c.to_json() for c in configs]
    jobs += jobs[:(-len(jobs)) % n]                  # company for the last round
    ctx = multiprocessing.get_context("spawn")
    out = []
    with ctx.Pool(n, initializer=init_worker, initargs=(ctx.Barrier(n, timeout=900),)) as pool:
        for i, res in enumerate(pool.imap(probe_worker, jobs)):
            if i < len(configs):
                cfg = configs[i]
                progress(f"  probe {cfg.noise.family:<14} {cfg.size:<9}: {res[0]:,.0f} tok/s"
                         + (f" (compile {res[1]:.0f} s)" if res[1] >= 1 else ""))
                out.append(res)
    return out


def estimate(configs: list[RunConfig], progress=print, tokens_per_s=None,
             plans: Mapping[str, Plan] | None = None, slots: int = 1) -> list[Row]:
    """Predicted slot seconds per run: training + evaluation tokens at the measured tokens/s plus a
    fixed per-trial overhead plus the probe's warm-up excess (the compile, when the run compiles).
    Default: a probe per model shape (probe_shapes, `slots` at once); `tokens_per_s(cfg, plan)`
    instead gives the throughput (no warm-up cost). `plans`: run id -> Plan already computed by the
    caller (else planned here)."""
    ps = [plans[c.run_id()] if plans is not None else plan(c, c.data.vocab_size) for c in configs]
    first: dict[tuple, int] = {}
    for i, (cfg, p) in enumerate(zip(configs, ps)):
        first.setdefault(_shape_key(cfg, p), i)
    if tokens_per_s is None:
        measured = dict(zip(first, probe_shapes([configs[i] for i in first.values()], slots, progress)))
    else:
        measured = {k: (tokens_per_s(configs[i], ps[i]), 0.0) for k, i in first.items()}
    rows = []
    for cfg, p in zip(configs, ps):
        tok_s, warm_s = measured[_shape_key(cfg, p)]
        tc = cfg.train
        train_tokens = p.steps * tc.batch_size * tc.seq_len
        eval_tokens = len(p.eval_steps) * tc.eval_seqs * tc.eval_t_repeats * tc.seq_len
        seconds = (train_tokens + EVAL_COST * eval_tokens) / tok_s + TRIAL_OVERHEAD_S + warm_s
        rows.append(Row(cfg, p, tok_s, seconds + _branch_seconds(cfg, tok_s)))
    return rows


def _branch_seconds(cfg: RunConfig, tok_s: float) -> float:
    """A trajectory trunk's decay branches (trained by its trial after it): their decay steps and
    the evaluations after each fork, plus the engine build per branch."""
    seconds = 0.0
    for b in branch_configs(cfg):
        q, tc = plan(b, b.data.vocab_size), b.train
        evals = sum(s > q.fork_step for s in q.eval_steps)
        seconds += (decay_steps(tc, q.steps) * tc.batch_size * tc.seq_len
                    + EVAL_COST * evals * tc.eval_seqs * tc.eval_t_repeats * tc.seq_len) / tok_s
        seconds += TRIAL_OVERHEAD_S / 2
    return seconds


def makespan(seconds: list[float], slots: int) -> float:
    """Wall time of greedy longest-first scheduling on `slots` parallel workers."""
    heap = [0.0] * max(1, slots)
    for s in sorted(seconds, reverse=True):
        heapq.heappush(heap, heapq.heappop(heap) + s)
    return max(heap)


def table(rows: list[Row], slots: int) -> str:
    head = f"{'#':>3} {'family':<14} {'knob':<16} {'size':<9} {'N':>10} {'D':>10} {'C':>9} {'steps':>6} {'tok/s':>7} {'est s':>7}"
    lines = [head, "-" * len(head)]
    for i, r in enumerate(rows, 1):
        c = r.cfg
        tokens = r.plan.steps * c.train.batch_size * c.train.seq_len
        lines.append(f"{i:>3} {c.noise.family:<14} {c.noise.knob_label():<16} {c.size:<9} "
                     f"{r.plan.n_backbone:>10,} "
                     f"{tokens:>10.3g} {r.plan.steps * r.plan.flops_per_step:>9.2e} {r.plan.steps:>6} "
                     f"{r.tokens_per_s:>7,.0f} {r.seconds:>7.0f}")
    s = summary(rows, slots)
    lines += ["-" * len(head),
              f"{s['n_runs']} runs ({s['n_trunks']} trajectory trunks, {s['n_branches']} decay "
              f"branches) for {s['n_points']} points at {len(s['budgets'])} budgets; "
              f"{s['total_flops']:.3g} FLOPs (one run per point: {s['flops_if_independent']:.3g}, "
              f"{s['saving']:.0%} saved), {s['trial_minutes']:.1f} trial-minutes; "
              f"ETA {s['eta_minutes']:.1f} min on {slots} parallel slot(s)"]
    return "\n".join(lines)


def summary(rows: list[Row], slots: int) -> dict:
    """What a dry run promises (`--dry-run --json`): the runs (a trunk with its largest budget and
    steps), the points they yield, total FLOPs against one run per point, and the ETA."""
    configs = [r.cfg for r in rows]
    points = planned_points(configs)
    total = sum(run_flops(c) for c in configs)
    independent = sum(p.budget for p in points)
    return {
        "runs": [{"run_id": r.cfg.run_id(), "family": r.cfg.noise.family, "knob": r.cfg.noise.knob(),
                  "size": r.cfg.size, "seed": r.cfg.train.seed, "max_budget": r.cfg.train.budget_flops,
                  "steps": r.plan.steps, "readoff": r.cfg.train.readoff,
                  "budgets": list(r.cfg.train.readoffs) or [r.cfg.train.budget_flops],
                  "branches": list(r.cfg.train.forks), "est_seconds": round(r.seconds, 1)}
                 for r in rows],
        "points": [{"family": p.family, "knob": p.knob, "size": p.size, "budget": p.budget,
                    "seed": p.seed, "run_id": p.run_id, "trunk": p.trunk} for p in points],
        "budgets": sorted({p.budget for p in points}),
        "n_runs": len(rows), "n_trunks": sum(bool(c.train.readoffs) for c in configs),
        "n_branches": sum(len(c.train.forks) for c in configs), "n_points": len(points),
        "total_flops": total, "flops_if_independent": independent,
        "saving": round(1 - total / independent, 6) + 0.0 if independent else 0.0,   # no "-0%"
        "trial_minutes": sum(r.seconds for r in rows) / 60,
        "eta_minutes": makespan([r.seconds for r in rows], slots) / 60, "slots": slots,
    }




# --- whole-sweep progress while it runs ---------------------------------------------------------

def eta_seconds(left: list[tuple[float, float]], ratio: float, slots: int) -> float:
    """Wall seconds until the sweep ends. `left`: (predicted seconds, seconds already run) of each
    run not ended yet (0 for those not started); `ratio`: actual / predicted seconds over the runs
    finished so far (the machine's load and the probe's bias in one number). A running run has
    ratio x predicted - elapsed to go (at least 0); the rest are scheduled longest-first."""
    return makespan([max(0.0, ratio * pred - ran) for pred, ran in left], slots)


def fmt_minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds < 3600 else f"{seconds / 3600:.1f} h"


class SweepClock:
    """Elapsed time and ETA of a running sweep for the per-run progress lines: the predicted
    seconds of each run (estimate(): the dry run's probe, or any prior with the right relative
    costs), rescaled by how long the runs finished so far actually took."""

    def __init__(self, predicted: dict[str, float], slots: int, clock=time.perf_counter):
        self.predicted, self.slots, self.clock = predicted, max(1, slots), clock
        self.t0 = clock()
        self.start: dict[str, float] = {}
        self.ended_ids: set[str] = set()
        self.actual = self.expected = 0.0           # over runs finished from scratch here

    def started(self, run_id: str) -> None:
        self.start.setdefault(run_id, self.clock())

    def ended(self, run_id: str, trial_seconds: float | None) -> None:
        """`trial_seconds` of a run trained from scratch, else None (failed, skipped, resumed)."""
        self.ended_ids.add(run_id)
        if trial_seconds is not None and run_id in self.predicted:
            self.actual += trial_seconds
            self.expected += self.predicted[run_id]

    def ratio(self) -> float:
        return self.actual / self.expected if self.expected > 0 else 1.0

    def line(self) -> str:
        now = self.clock()
        left = [(pred, now - self.start[rid] if rid in self.start else 0.0)
                for rid, pred in self.predicted.items() if rid not in self.ended_ids]
        eta = eta_seconds(left, self.ratio(), self.slots)
        r = self.ratio()
        return (f"sweep {fmt_minutes(now - self.t0)} elapsed, ~{fmt_minutes(eta)} left "
                f"(runs take {r:.{2 if r < 10 else 0}f}x the estimate)")
