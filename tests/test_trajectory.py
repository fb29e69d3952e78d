"""Trajectory runs (one run, many budgets): a constant-LR trunk read off at several budgets, and
decay branches forked from its checkpoints. A branch started from the trunk's fork checkpoint must
be the same run as the branch trained alone from step 0 (same seed, batches and noise per step)."""
from __future__ import annotations

import dataclasses
import math

import pytest
from mlflow.tracking import MlflowClient

from core import schema as M
from tests.conftest import tiny_run
from trainer.config import RunConfig
from trainer.job.engine import lr_lambda
from trainer.job.train import train, train_trajectory
from trainer.plan import branch_config, branch_configs, plan

BUDGETS = (4e9, 7e9, 1.2e10)


def trunk(tmp, family="masked", forks=BUDGETS, **train_fields) -> RunConfig:
    d = tiny_run(tmp, noise={"family": family},
                 train={"budget_flops": BUDGETS[-1], "schedule": "constant", "readoffs": list(BUDGETS[:-1]),
                        "forks": list(forks), "warmup_steps": 3, "readoff": "branches", **train_fields},
                 engine={"zero_stage": 0, "device": "cpu", "threads": 1})
    return RunConfig.from_dict(d)


def history(uri, run_id, key):
    return {m.step: m.value for m in MlflowClient(uri).get_metric_history(run_id, key)}


def test_schedules_share_every_step_before_the_decay():
    cfg = RunConfig().train
    t = dataclasses.replace(cfg, schedule="constant", warmup_steps=10, readoffs=(5e10,), forks=(5e10,),
                            budget_flops=1e11)
    b = dataclasses.replace(t, schedule="wsd", readoffs=(), forks=(), trunk_id="x", budget_flops=5e10)
    lt, lb = lr_lambda(t, 1000), lr_lambda(b, 400)
    assert [lt(s) for s in range(320)] == [lb(s) for s in range(320)]     # 400 - 20% = 320
    assert lb(320) < 1.0 and math.isclose(lb(399), cfg.min_lr_ratio)
    assert lt(999) == 1.0 and lt(0) == pytest.approx(0.1)


def test_plan_reads_off_and_forks_at_the_branches_steps(tmp_path):
    cfg = trunk(tmp_path)
    p = plan(cfg, 512)
    branches = branch_configs(cfg)
    assert [b.train.budget_flops for b in branches] == list(BUDGETS)
    for b in branches:
        q = plan(b, 512)
        assert p.readoff_steps[q.steps] == b.train.budget_flops          # read-off = branch's end
        assert p.fork_steps[q.fork_step] == b.train.budget_flops
        assert q.steps - q.fork_step == max(1, round(0.2 * q.steps))
        assert b.train.trunk_id == p.run_id and b.train.warmup_steps == 3
    assert set(p.readoff_steps) <= set(p.eval_steps)
    with pytest.raises(ValueError, match="train.forks"):
        branch_config(cfg, 5e9)
    with pytest.raises(ValueError, match="train.schedule"):
        RunConfig().with_overrides(["train.readoffs=[1e10]"])
    with pytest.raises(ValueError, match="train.warmup_steps"):
        RunConfig().with_overrides(["train.schedule=constant", "train.forks=[1e11]"])


def test_classic_run_ids_are_unchanged_by_the_trajectory_fields():
    assert RunConfig().run_id() == "860e1a46ad0ec30f"     # the id before the fields existed


@pytest.mark.parametrize("family", ["masked", "autoregressive"])
def test_forked_branch_equals_the_branch_trained_alone(tmp_path, family):
    cfg = trunk(tmp_path / "a", family)
    res = train_trajectory(cfg, progress=False)
    assert res.status == "FINISHED"
    uri = cfg.io.tracking_uri
    client = MlflowClient(uri)
    runs = {r.data.tags[M.TAG_RUN_ID]: r for r in client.search_runs(
        [client.get_experiment_by_name("test").experiment_id])}
    assert len(runs) == 1 + len(BUDGETS)
    t = runs[cfg.run_id()]
    assert t.data.tags[M.TAG_TRAJECTORY] == M.TRAJ_TRUNK and t.data.tags[M.TAG_TRUNK] == cfg.run_id()
    readoff = history(uri, t.info.run_id, M.METRIC_READOFF)
    loss = history(uri, t.info.run_id, M.METRIC_LOSS)
    assert sorted(readoff.values()) == list(BUDGETS) and set(readoff) <= set(loss)
    for branch in branch_configs(cfg):
        r = runs[branch.run_id()]
        assert r.info.status == "FINISHED" and r.data.tags[M.TAG_TRAJECTORY] == M.TRAJ_BRANCH
        assert r.data.tags[M.TAG_TRUNK] == cfg.run_id()
        assert r.data.tags["dlm.resume"].startswith("forked from trunk")
        # the same branch alone, from step 0, in another store: the same final loss and FLOPs
        alone_cfg = RunConfig.from_dict({**branch.to_dict(), "io": {
            **branch.to_dict()["io"], "out_dir": str(tmp_path / "b" / "runs"),
            "tracking_uri": f"sqlite:///{tmp_path / 'b' / 'mlflow.db'}"}})
        alone = train(alone_cfg, progress=False)
        assert alone.status == "FINISHED"
        fork_at = plan(branch, 512).fork_step
        assert alone.steps == plan(branch, 512).steps and fork_at > 0
        assert r.data.metrics[M.METRIC_LOSS] == pytest.approx(alone.final_val_nelbo, rel=1e-5, abs=1e-6)
        assert r.data.metrics[M.METRIC_FLOPS] == pytest.approx(branch.train.budget_flops, rel=0.01)
        # and the trunk's constant-LR read-off at that budget sits at the same step, uncooled
        step = max(s for s, b in readoff.items() if b == branch.train.budget_flops)
        assert history(uri, r.info.run_id, M.METRIC_LOSS)[step] == r.data.metrics[M.METRIC_LOSS]
    # a second call skips everything: nothing is retrained
    again = train_trajectory(cfg, progress=False)
    assert again.status == "SKIPPED" and again.loop_seconds == 0


def test_branch_without_its_fork_trains_from_step_0_and_says_so(tmp_path):
    branch = branch_config(trunk(tmp_path), BUDGETS[0])
    res = train(branch, progress=False)
    assert res.status == "FINISHED" and res.resumed_from == 0
    client = MlflowClient(branch.io.tracking_uri)
    run = client.get_run(res.mlflow_run_id)
    assert "has no fork" in run.data.tags["dlm.resume"]


def test_branches_match_independent_runs_and_the_readoff_needs_its_cooldown(tmp_path):
    """Issue 15's equivalence, small: decay branches forked from one trunk vs independent cosine
    runs to the same budgets (bench/bench_trajectory.py prints the 2 x 3 x 3 version: |diff| mean
    1.05%, max 2.88%, branches lower by 0.93% on average). Tolerance: 3% per point. The constant-LR
    read-off sits above the branch where the model learns (AR: +0.8-2.1% in the bench; masked at
    these smoke budgets stays near its start, ratio ~1.00)."""
    from bench.bench_trajectory import equivalence, summary
    rows = equivalence(tmp_path, ["masked", "autoregressive"], ["L2-d24"], [6e10, 1.2e11])
    s = summary(rows)
    assert s["points"] == 4
    assert s["max_rel_diff"] <= 0.03, rows
    assert all(r["constant"] / r["branch"] >= 1.005 for r in rows if r["family"] == "autoregressive"), rows
    assert s["flops_ratio"] < 0.9                     # one trunk + decays < two runs
