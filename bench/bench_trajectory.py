"""One run, many budgets, measured: a trajectory trunk's decay branches and its constant-LR read-offs
against independent cosine runs to the same budgets (sweeps/trajectory.py, trainer/job/train.py
train_trajectory), on a small grid through the real trainer (DeepSpeed engine, MLflow store).

    python -m bench.bench_trajectory [--families autoregressive,masked] [--sizes L2-d24,L2-d32,L2-d48]
                                     [--budgets 6e10,1e11,1.65e11]

Prints per point: the independent run's final val_nelbo (cosine to the budget), the branch's (WSD
from the trunk's fork at 80% of the budget's steps), the trunk's read-off (constant LR, no
cooldown), and the summary: mean and max |branch − independent| / independent, the read-off's
ratio to both, and the FLOPs each design spent. The CPU model and matmul peak head the output.
tests/test_trajectory.py runs `equivalence` on a smaller grid with a stated tolerance.
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

import torch
from mlflow.tracking import MlflowClient

from trainer.tools.peak import cpu_model
from core import schema as M
from sweeps.grid import make_run
from sweeps.recipe import SMOKE_SHAPE
from sweeps.trajectory import run_flops, trajectory_runs
from trainer.config import EngineConfig, IOConfig, RunConfig
from trainer.job.train import train, train_trajectory
from trainer.plan import branch_configs
from trainer.tools.peak import measure

ENGINE = EngineConfig(device="cpu", precision="fp32", threads=1, zero_stage=0)


def _point(tmp: Path, family: str, size: str, budget: float, shape=SMOKE_SHAPE) -> RunConfig:
    cfg = make_run("trajectory_bench", shape, size=size, family=family, knob=None, budget=budget,
                   pool_tokens=None)
    io = IOConfig(tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}", out_dir=str(tmp / "runs"),
                  experiment="trajectory_bench")
    return dataclasses.replace(cfg, engine=ENGINE, io=io)


def _history(client: MlflowClient, mlflow_id: str, key: str) -> dict[int, float]:
    return {m.step: m.value for m in client.get_metric_history(mlflow_id, key)}


def equivalence(tmp: Path, families, sizes, budgets, shape=SMOKE_SHAPE) -> list[dict]:
    """Per (family, size, budget): independent, branch and constant-read-off losses (nats/token),
    each trained here from scratch. Rows carry the FLOPs each design spent on the point's size."""
    rows = []
    for family in families:
        for size in sizes:
            points = [_point(tmp, family, size, b, shape) for b in budgets]
            indep = {p.train.budget_flops: train(p, progress=False) for p in points}
            (trunk,) = trajectory_runs(points, "branches")
            res = train_trajectory(trunk, progress=False)
            if res.status != "FINISHED":
                raise RuntimeError(f"trunk {family} {size}: {res.status} {res.reason}")
            client = MlflowClient(trunk.io.tracking_uri)
            loss = _history(client, res.mlflow_run_id, M.METRIC_LOSS)
            readoff = {b: loss[s] for s, b in _history(client, res.mlflow_run_id,
                                                       M.METRIC_READOFF).items()}
            for branch in branch_configs(trunk):
                b = branch.train.budget_flops
                rows.append({"family": family, "size": size, "budget": b,
                             "independent": indep[b].final_val_nelbo,
                             "branch": train(branch, progress=False).final_val_nelbo,
                             "constant": readoff[b],
                             "flops_independent": sum(run_flops(p) for p in points),
                             "flops_trajectory": run_flops(trunk)})
    return rows


def summary(rows: list[dict]) -> dict:
    rel = [abs(r["branch"] - r["independent"]) / r["independent"] for r in rows]
    per_size = {(r["family"], r["size"]): r for r in rows}.values()
    return {"points": len(rows), "mean_rel_diff": statistics.mean(rel), "max_rel_diff": max(rel),
            "mean_signed": statistics.mean((r["branch"] - r["independent"]) / r["independent"]
                                           for r in rows),
            "constant_over_branch": statistics.median(r["constant"] / r["branch"] for r in rows),
            "constant_over_independent": statistics.median(r["constant"] / r["independent"]
                                                           for r in rows),
            "flops_ratio": (sum(r["flops_trajectory"] for r in per_size)
                            / sum(r["flops_independent"] for r in per_size))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--families", default="autoregressive,masked")
    ap.add_argument("--sizes", default="L2-d24,L2-d32,L2-d48")
    ap.add_argument("--budgets", default="6e10,1e11,1.65e11")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    peak = measure(torch.device("cpu"), torch.float32)
    print(f"CPU: {cpu_model()}; fp32 matmul peak {peak / 1e9:.0f} GFLOP/s on 1 thread")
    families, sizes = args.families.split(","), args.sizes.split(",")
    budgets = [float(b) for b in args.budgets.split(",")]
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        rows = equivalence(Path(d), families, sizes, budgets)
    print(f"{'family':<15} {'size':<8} {'budget':>8} {'independent':>11} {'branch':>8} {'diff':>7} "
          f"{'constant':>8} {'const/br':>8}")
    for r in rows:
        print(f"{r['family']:<15} {r['size']:<8} {r['budget']:>8.3g} {r['independent']:>11.4f} "
              f"{r['branch']:>8.4f} {(r['branch'] - r['independent']) / r['independent']:>+7.2%} "
              f"{r['constant']:>8.4f} {r['constant'] / r['branch']:>8.4f}")
    s = summary(rows)
    print(f"{s['points']} points: branch vs independent |diff| mean {s['mean_rel_diff']:.2%}, max "
          f"{s['max_rel_diff']:.2%} (signed mean {s['mean_signed']:+.2%}); constant read-off / branch "
          f"{s['constant_over_branch']:.4f}, / independent {s['constant_over_independent']:.4f} "
          f"(medians); trajectory FLOPs / independent {s['flops_ratio']:.2f}; "
          f"{time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
