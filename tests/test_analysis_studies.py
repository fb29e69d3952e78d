"""Studies never mix silently: the fit takes the latest study (members recorded by the sweep's
parent run, shared runs included) and pools only when asked. Real sqlite MLflow store; parents
written by the orchestrator's own SweepTracking.parent_run, trials as the training job logs them."""

from __future__ import annotations

import time

import pytest

pytest.importorskip("mlflow")
from mlflow import MlflowClient  # noqa: E402
from mlflow.entities import Metric, Param  # noqa: E402

from analysis import fit_laws  # noqa: E402
from analysis.load import StudyChoice, load_study  # noqa: E402
from analysis.schema import AnalysisError  # noqa: E402
from core import schema as M  # noqa: E402
from orchestrator.tracking import SweepTracking  # noqa: E402

EXP = "compute_bound"
LAPTOP = [f"lap{i}" for i in range(4)]
QUICK = [f"qk{i}" for i in range(3)]
SHARED = "shared0"


def _trial(client, exp_id, parent, rid, i):
    n, budget = 1e6 * (i + 1), 1e15 * (i + 1)
    tags = {M.TAG_ROLE: M.ROLE_TRIAL, M.TAG_PARENT: parent,
            M.TAG_FAMILY: "masked", M.TAG_KNOB: "", M.TAG_SIZE: f"s{i}",
            M.TAG_BUDGET: repr(budget), M.TAG_SWEEP: EXP, M.TAG_RUN_ID: rid,
            M.TAG_STEP_UNIT: "GFLOP"}
    run = client.create_run(exp_id, tags=tags)
    step = int(budget / 1e9)
    client.log_batch(run.info.run_id, params=[Param(M.PARAM_N_TOTAL, str(int(n))),
                                              Param(M.PARAM_N_BACKBONE, str(int(n))),
                                              Param(M.PARAM_FLOPS_PER_TOKEN, repr(6 * n))],
                     metrics=[Metric(M.METRIC_LOSS, 5.0 - 0.1 * i, 0, step),
                              Metric(M.METRIC_FLOPS, budget, 0, step),
                              Metric(M.METRIC_TOKENS, budget / (6 * n), 0, step)])
    client.set_terminated(run.info.run_id)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """laptop study (4 runs + a shared one), then a quick study (3 runs + the same shared run,
    skipped as finished, so it never becomes a child of the quick parent); and an experiment whose
    parent is from before member lists."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    tracking = SweepTracking(uri, EXP)
    client, exp_id = tracking.client, tracking.experiment_id
    lap = tracking.parent_run(EXP, "a" * 16, 5, "laptop", run_ids=LAPTOP + [SHARED])
    for i, rid in enumerate(LAPTOP + [SHARED]):
        _trial(client, exp_id, lap, rid, i)
    time.sleep(0.01)
    quick = tracking.parent_run(EXP, "b" * 16, 4, "quick", run_ids=QUICK + [SHARED])
    for i, rid in enumerate(QUICK):
        _trial(client, exp_id, quick, rid, i)
    legacy = MlflowClient(uri).create_experiment("legacy",
                                                 artifact_location=(root / "a2").as_uri())
    old = client.create_run(legacy, tags={M.TAG_ROLE: M.ROLE_PARENT})
    for i in range(3):
        _trial(client, legacy, old.info.run_id, f"old{i}", i)
    return {"uri": uri, "laptop": lap, "quick": quick, "client": client}


def _ids(store, **choice):
    runs, sel = load_study(EXP, store["uri"], StudyChoice(**choice))
    assert set(runs["run_id"]) == sel.run_ids
    return sel


def test_default_is_the_latest_study_with_its_shared_run(store):
    sel = _ids(store)
    assert sel.run_ids == set(QUICK + [SHARED])
    assert sel.parents == (store["quick"],) and sel.n_members == 4 and sel.left_out == 4
    text = "\n".join(sel.describe())
    assert f"sweep {EXP}, preset quick, sweep id bbbbbbbbbbbb" in text and ": 4 runs" in text
    assert "left out: 4 run(s)" in text and "--all-studies" in text


def test_preset_and_sweep_id_pick_a_study_and_all_studies_pools(store):
    assert _ids(store, preset="laptop").run_ids == set(LAPTOP + [SHARED])
    assert _ids(store, sweep_id="aaaaaa").parents == (store["laptop"],)
    pooled = _ids(store, all_studies=True)
    assert pooled.run_ids == set(LAPTOP + QUICK + [SHARED]) and pooled.left_out == 0
    assert len(_ids(store, preset="quick", all_studies=True).run_ids) == 4
    with pytest.raises(AnalysisError, match="no study with preset 'paper'.*preset laptop"):
        load_study(EXP, store["uri"], StudyChoice(preset="paper"))


def test_rerun_of_the_older_study_makes_it_the_latest(store, tmp_path):
    tracking = SweepTracking(store["uri"], EXP)
    assert tracking.parent_run(EXP, "a" * 16, 5, "laptop", run_ids=LAPTOP + [SHARED]) \
        == store["laptop"]                                   # reused, members not rewritten
    try:
        assert _ids(store).parents == (store["laptop"],)
    finally:  # leave the module's store as the other tests expect it
        tracking.parent_run(EXP, "b" * 16, 4, "quick", run_ids=QUICK + [SHARED])


def test_parent_without_member_list_falls_back_to_its_children(store):
    runs, sel = load_study("legacy", store["uri"])
    assert sel.run_ids == {"old0", "old1", "old2"} and sel.n_members is None
    assert any("no member list" in n for n in sel.notes)


def test_cli_prints_the_study_and_attaches_to_its_parent(store, tmp_path, capsys):
    rc = fit_laws.main(["--experiment", EXP, "--tracking-uri", store["uri"], "--bootstrap", "0",
                        "--out", str(tmp_path / "o")])
    assert rc in (0, 3)                                       # 4 runs: little to fit, no matter
    out = capsys.readouterr().out
    assert "study: sweep compute_bound, preset quick" in out and "left out: 4 run(s)" in out
    attached = {a.path for a in store["client"].list_artifacts(store["quick"], "fits")}
    assert "fits/fits.json" in attached
    assert not store["client"].list_artifacts(store["laptop"], "fits")
    rc = fit_laws.main(["--experiment", EXP, "--tracking-uri", store["uri"], "--bootstrap", "0",
                        "--all-studies", "--out", str(tmp_path / "p")])
    assert "all 2 studies of 'compute_bound' pooled (--all-studies): 8 runs" in capsys.readouterr().out
