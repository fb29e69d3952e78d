"""The analysis against a real sqlite MLflow store written the way the training job will write it
(see analysis/schema.py): loading, drop accounting, the CLI's files and its artifacts."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("mlflow")
from mlflow import MlflowClient  # noqa: E402
from mlflow.entities import Metric, Param  # noqa: E402

from analysis import fit_laws, schema, synthetic  # noqa: E402
from core import schema as M  # noqa: E402
from core.flops import CONVENTIONS  # noqa: E402
from analysis.load import DropCounts, final_points, latest_parent_run_id, load_runs  # noqa: E402

SWEEP = "smoke_test"
BUDGETS = np.logspace(16, 19, 4)
FAMILIES = {"masked": {**synthetic.CHINCHILLA, "E": 1.9}, "uniform": synthetic.CHINCHILLA}
EVALS = (0.25, 0.5, 1.0)  # evaluation points as fractions of the run's budget


def _fpt(convention: str, n: float) -> float:
    return 6 * n * ((n / 1e6) ** 0.2 if convention == "vonruette2025" else 1.0)


def _trial(client, exp_id, parent_id, *, family, size, budget, n, evals, status="FINISHED",
           extra_tags=None):
    tags = {M.TAG_ROLE: M.ROLE_TRIAL, "mlflow.parentRunId": parent_id,
            M.TAG_FAMILY: family, M.TAG_KNOB: "", M.TAG_SIZE: size,
            M.TAG_BUDGET: repr(float(budget)), M.TAG_SWEEP: SWEEP,
            M.TAG_RUN_ID: f"{family}-{size}-{budget:.0e}", M.TAG_STEP_UNIT: "GFLOP",
            **(extra_tags or {})}
    run = client.create_run(exp_id, tags=tags)
    tokens_final = budget / (6 * n)
    params = {"model.n_layer": "2", "train.batch_size": "8", M.PARAM_N_TOTAL: str(int(n)),
              M.PARAM_N_BACKBONE: str(int(n)),   # the N a fit uses by default: the planted N
              M.PARAM_N_NONEMBED: str(int(n * 0.6)), M.PARAM_FLOPS_PER_TOKEN: repr(6 * n),
              "tokens_per_step": "1024", "train.lr": "0.003", "train.data_pool_tokens": "None",
              # every convention's count (issue 13): one of them grows faster than N
              **{M.flops_per_token_param(c): repr(_fpt(c, n)) for c in CONVENTIONS}}
    metrics = []
    for i, (frac, loss) in enumerate(evals):
        flops = frac * budget
        step = int(flops / 1e9)
        for key, value in ((M.METRIC_LOSS, loss), (M.METRIC_TRAIN_LOSS, loss - 0.05),
                           (M.METRIC_TOKENS, frac * tokens_final),
                           (M.METRIC_FLOPS, flops), ("wall_time_s", 10.0 * (i + 1)),
                           ("mfu", 0.1)):
            metrics.append(Metric(key, float(value), 1_700_000_000_000 + i, step))
    client.log_batch(run.info.run_id, metrics=metrics,
                     params=[Param(k, v) for k, v in params.items()])
    if status != "RUNNING":
        client.set_terminated(run.info.run_id, status=status)
    return run.info.run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A sweep: 2 families x 4 budgets x 4 sizes, 3 evaluations each, plus a failed run, a
    running run and a run that died before evaluating; two parent runs (the later one is latest)."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp_id = client.create_experiment(SWEEP, artifact_location=(root / "artifacts").as_uri())
    client.create_experiment("empty_sweep", artifact_location=(root / "artifacts2").as_uri())
    dead = client.create_experiment("dead_sweep", artifact_location=(root / "artifacts3").as_uri())
    _trial(client, dead, "", family="masked", size="s0", budget=1e16, n=1e6, evals=[],
           status="FAILED")
    old = client.create_run(exp_id, tags={M.TAG_ROLE: M.ROLE_PARENT}, start_time=1_000)
    client.set_terminated(old.info.run_id)
    parent = client.create_run(exp_id, tags={M.TAG_ROLE: M.ROLE_PARENT},
                               start_time=2_000)
    raw = pd.concat([synthetic.isoflop_table(budgets=BUDGETS, params=p, sizes=4, span=6.0,
                                             seed=i, family=f)
                     for i, (f, p) in enumerate(FAMILIES.items())], ignore_index=True)
    for k, r in raw.iterrows():
        # Intermediate evaluations sit above the final one, as on a cosine schedule.
        evals = [(frac, r["loss"] * (1 + 0.3 * (1 - frac))) for frac in EVALS]
        _trial(client, exp_id, parent.info.run_id, family=r["family"], size=f"s{k % 4}",
               budget=r["budget"], n=r["N"], evals=evals)
    n = float(raw["N"].iloc[0])
    _trial(client, exp_id, parent.info.run_id, family="masked", size="big", budget=1e19, n=n,
           evals=[(0.25, 9.0), (0.5, float("nan"))], status="FAILED",
           extra_tags={M.TAG_FAILURE: "loss diverged"})
    _trial(client, exp_id, parent.info.run_id, family="uniform", size="big", budget=1e19, n=n,
           evals=[(0.25, 5.0)], status="RUNNING")
    _trial(client, exp_id, parent.info.run_id, family="uniform", size="oom", budget=1e19, n=n,
           evals=[], status="FAILED")
    return {"uri": uri, "client": client, "parent": parent.info.run_id, "raw": raw,
            "root": root}


def test_load_runs_rows_and_columns(store):
    runs = load_runs(SWEEP, store["uri"])
    assert list(runs.columns) == list(schema.RUN_COLUMNS)
    n_good = len(store["raw"])
    assert len(runs) == 3 * n_good + 2 + 1 + 1  # + failed (2 evals), running (1), no evals (1)
    assert runs.groupby("mlflow_run_id")["is_final"].sum().eq(1).all()
    assert set(runs["status"]) == {"FINISHED", "FAILED", "RUNNING"}
    fin = runs[runs["is_final"] & (runs["status"] == "FINISHED")].sort_values(["family", "budget",
                                                                               "n_total"])
    raw = store["raw"].sort_values(["family", "budget", "N"])
    np.testing.assert_allclose(fin["val_nelbo"], raw["loss"], rtol=1e-12)
    np.testing.assert_allclose(fin["flops"], raw["C"], rtol=1e-12)
    np.testing.assert_allclose(fin["tokens"], raw["D"], rtol=1e-9)
    np.testing.assert_allclose(fin["n_total"], np.floor(raw["N"]), rtol=0)
    assert fin["step"].eq((raw["C"].to_numpy() / 1e9).astype(int)).all()
    assert fin["train_loss"].notna().all() and fin["knob"].isna().all()
    assert (runs["sweep"] == SWEEP).all()
    # the hparams / data-constrained columns come from the flattened config params
    assert (runs["batch_tokens"] == 1024).all() and (runs["lr"] == 0.003).all()
    assert runs["pool_tokens"].isna().all()          # "None": the whole corpus


def test_bulk_and_per_run_metric_paths_agree(store):
    bulk = load_runs(SWEEP, store["uri"], bulk=True)
    per_run = load_runs(SWEEP, store["uri"], bulk=False)
    pd.testing.assert_frame_equal(bulk, per_run)


def test_final_points_drop_accounting(store):
    final, dropped = final_points(load_runs(SWEEP, store["uri"]))
    assert len(final) == len(store["raw"])
    assert dropped == DropCounts(failed=2, unfinished=1)
    assert list(final.columns) == list(schema.FINAL_COLUMNS)


def test_latest_parent_is_the_newest(store):
    assert latest_parent_run_id(SWEEP, store["uri"]) == store["parent"]


def test_cli_writes_fits_and_attaches_them_to_parent(store, tmp_path, capsys):
    out = tmp_path / "fits"
    rc = fit_laws.main(["--experiment", SWEEP, "--tracking-uri", store["uri"], "--out", str(out),
                        "--bootstrap", "30"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "masked" in printed and "uniform" in printed and "dropped runs: 3" in printed
    fits = pd.read_parquet(out / "fits.parquet")
    assert set(fits["group"]) >= {"masked", "uniform"}
    pngs = {p.name for p in out.glob("*.png")}
    assert {"pareto.png", "residuals.png", "loss_vs_compute_masked.png",
            "isoflops_uniform.png"} <= pngs
    assert len(pd.read_parquet(out / "runs.parquet")) == 3 * len(store["raw"]) + 4
    attached = {a.path for a in store["client"].list_artifacts(store["parent"], "fits")}
    assert {"fits/fits.parquet", "fits/fits.json", "fits/pareto.png"} <= attached
    assert {f"fits/{p}" for p in pngs} <= attached


@pytest.mark.parametrize("experiment, message", [
    ("no_such_sweep", "MLflow experiment 'no_such_sweep' not found"),
    ("empty_sweep", "MLflow experiment 'empty_sweep' has no trial runs"),
    ("dead_sweep", "dead_sweep: no usable runs (dropped: failed 1,"),
])
def test_cli_bad_experiment_is_named(store, tmp_path, capsys, experiment, message):
    rc = fit_laws.main(["--experiment", experiment, "--tracking-uri", store["uri"],
                        "--out", str(tmp_path / "o")])
    assert rc == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_cli_unknown_family_in_mlflow_is_named(store, tmp_path, capsys):
    rc = fit_laws.main(["--experiment", SWEEP, "--tracking-uri", store["uri"], "--families",
                        "autoregressive", "--out", str(tmp_path / "o")])
    assert rc == 2
    assert "unknown family 'autoregressive'" in capsys.readouterr().err


def test_cli_refits_under_another_flop_convention(store, tmp_path, capsys):
    out = tmp_path / "fits"
    rc = fit_laws.main(["--experiment", SWEEP, "--tracking-uri", store["uri"], "--out", str(out),
                        "--bootstrap", "0", "--flops", "vonruette2025"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "C: training FLOPs under convention 'vonruette2025'" in printed
    final = pd.read_parquet(out / "final.parquet")
    raw = store["raw"].sort_values(["family", "budget", "N"])
    final = final.sort_values(["family", "budget", "N"])
    expect = raw["D"].to_numpy() * np.array([_fpt("vonruette2025", n) for n in raw["N"]])
    np.testing.assert_allclose(final["C"], expect, rtol=1e-9)
    doc = json.loads((out / "fits.json").read_text())
    assert doc["flop_convention"] == "vonruette2025" and doc["n_column"] == "n_backbone"
    fits = pd.read_parquet(out / "fits.parquet")
    assert set(fits["flop_convention"]) == {"vonruette2025"} and set(fits["n_column"]) == {"n_backbone"}
    # under the runs' own convention (none logged: the project's default) C is the logged flops
    rc = fit_laws.main(["--experiment", SWEEP, "--tracking-uri", store["uri"], "--out",
                        str(tmp_path / "own"), "--bootstrap", "0"])
    assert rc == 0 and "convention 'matmul'" in capsys.readouterr().out
    own = pd.read_parquet(tmp_path / "own" / "final.parquet").sort_values(["family", "budget", "N"])
    np.testing.assert_allclose(own["C"], raw["C"], rtol=1e-12)


def test_cli_flops_is_for_mlflow_runs_only(tmp_path, capsys):
    table = tmp_path / "t.csv"
    synthetic.isoflop_table(budgets=BUDGETS).to_csv(table, index=False)
    with pytest.raises(SystemExit):
        fit_laws.main(["--from-table", str(table), "--flops", "sahoo2026"])
    assert "--flops recounts C of MLflow runs" in capsys.readouterr().err
