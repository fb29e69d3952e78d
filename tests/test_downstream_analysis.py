"""Downstream-task analysis (analysis/downstream.py, analysis/two_stage.py): Wilson intervals by
hand, a planted sigmoid and a planted compute law recovered, no fit where the points are at chance,
and a round trip through a real sqlite MLflow store written in core.schema's evaluation layout,
through the loader and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from analysis import downstream as ds
from analysis import load, synthetic
from analysis.schema import AnalysisError
from analysis.two_stage import fit_accuracy, fit_two_stage, sigmoid_accuracy, wilson
from core import schema as M

PLANTED = np.array([0.8, 3.0, 4.0])          # top, k (1/nats), L0 (nats/token)
CHANCE = 0.25


# --------------------------------------------------------------------------------------------------
# Wilson
# --------------------------------------------------------------------------------------------------
def test_wilson_by_hand():
    # 0/20: centre = half = (z²/2n)/(1+z²/n) = 0.09604/1.19207 = 0.0806 -> (0, 0.1611)
    assert np.round(wilson(0, 20), 3).tolist() == [0.0, 0.161]
    assert wilson(0, 20)[1] == pytest.approx(0.1611, abs=5e-5)
    assert np.round(wilson(10, 20), 4).tolist() == [0.2993, 0.7007]
    lo, hi = wilson(20, 20)                     # k = n: the mirror of 0/20
    assert hi == 1.0 and lo == pytest.approx(1 - 0.1611, abs=5e-5)
    assert all(np.isnan(wilson(0, 0)))
    lo, hi = wilson(np.array([0, 10, 80, 3]), np.array([20, 20, 200, 0]))   # vectorised
    np.testing.assert_allclose(lo[:3], [0.0, 0.2993, 0.3346], atol=5e-5)
    np.testing.assert_allclose(hi[:3], [0.1611, 0.7007, 0.4692], atol=5e-5)
    assert np.isnan(lo[3]) and np.isnan(hi[3])


# --------------------------------------------------------------------------------------------------
# Stage 1 and the no-fit rules
# --------------------------------------------------------------------------------------------------
def _planted_points(seed: int, n: int = 2000, losses=np.linspace(3.0, 5.0, 8)):
    rng = np.random.default_rng(seed)
    return losses, rng.binomial(n, sigmoid_accuracy(PLANTED, losses, CHANCE)), np.full(8, n)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_planted_sigmoid_is_recovered(seed):
    loss, k, n = _planted_points(seed)
    fit = fit_accuracy(loss, k, n, CHANCE, group="masked", task="hellaswag", n_boot=30, seed=0)
    assert fit.ok and fit.reason == "" and fit.n_points == 8 and fit.chance == CHANCE
    p = fit.params
    assert p["L0"].value == pytest.approx(4.0, abs=0.15)
    assert p["k"].value == pytest.approx(3.0, rel=0.3)
    assert p["top"].value == pytest.approx(0.8, abs=0.05)
    assert all(e.identified and e.lo < e.value < e.hi for e in p.values())
    again = fit_accuracy(loss, k, n, CHANCE, group="masked", task="hellaswag", n_boot=30, seed=0)
    np.testing.assert_array_equal(again.samples, fit.samples)       # fixed seed: same draws


def test_no_fit_at_chance_or_with_few_points():
    loss = np.linspace(3.0, 5.0, 6)
    n = np.full(6, 400)
    at = fit_accuracy(loss, np.full(6, 100) + [0, 3, -4, 2, -1, 5], n, CHANCE)
    assert not at.ok and at.reason == "all 6 points at chance: no fit" and at.params == {}
    few = fit_accuracy(*(a[:4] for a in _planted_points(0)), CHANCE)
    assert not few.ok and "4 point(s)" in few.reason and ">= 5" in few.reason
    # one clear point above chance is not a curve
    one = fit_accuracy(loss, [100, 100, 100, 100, 100, 200], n, CHANCE)
    assert not one.ok and one.reason.startswith("1 of 6 points above chance")
    # nor are two: three parameters (a fit through 2 of 10 off the floor pins k to a step)
    two = fit_accuracy(loss, [100, 100, 100, 100, 200, 220], n, CHANCE)
    assert not two.ok and two.reason.startswith("2 of 6 points above chance (needs >= 3)")
    # chance 0 (generation): 1 hit in 200 is luck, not above chance (Wilson lo 0.0009 < 0.01)
    lucky = fit_accuracy(loss, [0, 0, 0, 0, 1, 1], np.full(6, 200), 0.0)
    assert not lucky.ok and lucky.n_above == 0 and "at chance" in lucky.reason
    # generation tasks (chance 0): every k = 0 is at chance
    zero = fit_accuracy(loss, np.zeros(6), n, 0.0)
    assert not zero.ok and "at chance" in zero.reason


def test_two_stage_recovers_accuracy_from_a_planted_compute_law():
    law = LADDER_LAW
    C = np.logspace(16, 19.5, 8)
    final, _ = load.table_from_frame(synthetic.compute_law_table(C=C, noise=0.002, family="masked",
                                                                 **law))
    L = law["A"] * C ** -law["beta"] + law["B"]             # 5.0 .. 3.35 nats/token
    rng = np.random.default_rng(3)
    n = 2000
    evals = pd.DataFrame({"group": "masked", "task": "piqa", "compute": C, "val_nelbo": L,
                          "k": rng.binomial(n, sigmoid_accuracy(PLANTED, L, CHANCE)), "n": n,
                          "chance": CHANCE})
    (fit,) = fit_two_stage(evals, final, n_boot=40, seed=0)
    assert fit.ok and fit.law is not None and fit.c_max == C.max()
    assert fit.law.params["beta"].value == pytest.approx(0.1, rel=0.2)
    at = np.array([1.0, 10.0]) * C.max()
    truth = sigmoid_accuracy(PLANTED, law["A"] * at ** -law["beta"] + law["B"], CHANCE)
    got = [fit.predictions["acc@Cmax"], fit.predictions["acc@10x"]]
    assert got[0].value == pytest.approx(truth[0], abs=0.02)
    assert got[1].value == pytest.approx(truth[1], abs=0.04)
    assert got[0].lo < got[0].value < got[0].hi
    np.testing.assert_allclose(fit.predict(C), fit.stage1.predict(fit.law.predict(C=C)))
    # a group without trial points keeps its stage 1 and says why stage 2 is missing
    (other,) = fit_two_stage(evals.assign(group="uniform"), final, n_boot=10)
    assert other.stage1.ok and other.law is None and not other.ok
    assert "no finished trial points" in other.reason and other.predictions == {}


# --------------------------------------------------------------------------------------------------
# MLflow round trip
# --------------------------------------------------------------------------------------------------
EXP = "ds_smoke"
LADDER = "ds_ladder"
LADDER_C = np.logspace(16, 18.5, 6)
LADDER_LAW = {"A": 120.0, "beta": 0.1, "B": 2.0}        # val NELBO 5.0 .. 3.5 nats/token
TRIALS = {  # key: family, size, budget, final C, val NELBO, {task: (n, acc)}
    "m": ("masked", "L2-d32", 1e16, 1.02e16, 4.25,
          {"hellaswag": (200, 0.25), "lambada": (100, 0.0)}),
    "a": ("autoregressive", "L2-d48", 1e17, 0.98e17, 3.5,
          {"hellaswag": (200, 0.40), "lambada": (100, 0.05)}),
}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    pytest.importorskip("mlflow")
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    root = tmp_path_factory.mktemp("mlflow_ds")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment(EXP, artifact_location=(root / "a").as_uri())
    bare = client.create_experiment("trained_only", artifact_location=(root / "b").as_uri())
    parent = client.create_run(exp, tags={M.TAG_ROLE: M.ROLE_PARENT}).info.run_id
    t0 = 1_700_000_000_000

    def trial(e, parent, key, family, size, budget, c, nelbo):
        tags = {M.TAG_ROLE: M.ROLE_TRIAL, M.TAG_PARENT: parent, M.TAG_FAMILY: family,
                M.TAG_KNOB: "", M.TAG_SIZE: size, M.TAG_BUDGET: repr(budget),
                M.TAG_RUN_ID: f"hash-{key}", M.TAG_STEP_UNIT: M.STEP_UNIT}
        run = client.create_run(e, tags=tags).info.run_id
        client.log_batch(run, metrics=[
            Metric(M.METRIC_LOSS, nelbo, t0, M.flop_step(c)),
            Metric(M.METRIC_FLOPS, c, t0, M.flop_step(c)),
            Metric(M.METRIC_TOKENS, c / 6e6, t0, M.flop_step(c))],
            params=[Param(M.PARAM_FLOPS_PER_TOKEN, "6000000.0"),
                    Param(M.PARAM_N_BACKBONE, "1000000"),
                    Param(M.PARAM_FLOP_CONVENTION, "matmul")])
        client.set_terminated(run)
        return run

    trials = {}
    for key, (family, size, budget, c, nelbo, _) in TRIALS.items():
        trials[key] = trial(exp, parent, key, family, size, budget, c, nelbo)
        trial(bare, "", key, family, size, budget, c, nelbo)

    def evaluation(key, *, eval_key="keyA", start, scale=1.0, status="FINISHED", e=exp,
                   spec=TRIALS, sources=trials):
        family, size, budget, _, nelbo, results = spec[key]
        eparent = client.create_run(e, tags={M.TAG_ROLE: M.ROLE_EVALUATION_PARENT}).info.run_id
        tags = {M.TAG_ROLE: M.ROLE_EVALUATION, M.TAG_PARENT: eparent,
                M.TAG_SOURCE_RUN: sources[key], M.TAG_RUN_ID: f"hash-{key}",
                M.TAG_FAMILY: family, M.TAG_KNOB: "", M.TAG_KNOB_LABEL: "", M.TAG_SIZE: size,
                M.TAG_BUDGET: repr(budget), M.TAG_VAL_NELBO: repr(nelbo),
                M.TAG_EVAL_KEY: eval_key, M.TAG_EVAL_TASKS: ",".join(results)}
        run = client.create_run(e, tags=tags, start_time=start).info.run_id
        metrics, params = [], [Param(M.PARAM_EVAL_SEED, "0"), Param(M.PARAM_EVAL_SUBSET_SEED, "1")]
        for task, (n, acc) in results.items():
            vals = {M.EVAL_ACC: acc * scale, M.EVAL_CHANCE: 0.25 if task == "hellaswag" else 0.0,
                    M.EVAL_SECONDS: 1.5}
            if task == "hellaswag":
                vals[M.EVAL_ACC_NORM] = acc + 0.01
                if family != "autoregressive":
                    vals |= {M.EVAL_ACC_DRAW_SD: 0.02, M.EVAL_LL_SE: 0.3}
            else:
                vals[M.EVAL_NLL_TOKEN] = 2.0 + nelbo
            metrics += [Metric(M.eval_metric(task, w), float(v), t0, 0) for w, v in vals.items()]
            params += [Param(M.eval_metric(task, M.EVAL_N), str(n)),
                       Param(M.eval_metric(task, M.EVAL_VERSION), f"{task}-v1")]
        client.log_batch(run, metrics=metrics, params=params)
        client.set_terminated(run, status=status)
        return run

    stale = evaluation("a", start=1_000, scale=0.5)            # older repeat: superseded
    ids = {key: evaluation(key, start=2_000 + i) for i, key in enumerate(TRIALS)}
    evaluation("a", start=5_000, scale=0.1, status="FAILED")    # newer but failed: ignored
    other = evaluation("m", eval_key="keyB", start=6_000, scale=2.0)   # covers 1 run, not 2
    # A ladder: masked runs on L(C) = LADDER_LAW, hellaswag accuracy on the planted sigmoid
    ladder = client.create_experiment(LADDER, artifact_location=(root / "c").as_uri())
    lparent = client.create_run(ladder, tags={M.TAG_ROLE: M.ROLE_PARENT}).info.run_id
    spec, sources = {}, {}
    for i, c in enumerate(map(float, LADDER_C)):
        loss = LADDER_LAW["A"] * c ** -LADDER_LAW["beta"] + LADDER_LAW["B"]
        acc = round(float(sigmoid_accuracy(PLANTED, loss, CHANCE)) * 1000) / 1000
        spec[f"l{i}"] = ("masked", f"L2-d{32 + 16 * i}", c, c, loss, {"hellaswag": (1000, acc)})
        sources[f"l{i}"] = trial(ladder, lparent, f"l{i}", "masked", f"L2-d{32 + 16 * i}", c, c,
                                 loss)
    for i, key in enumerate(spec):
        evaluation(key, start=1_000 + i, e=ladder, spec=spec, sources=sources)
    return {"uri": uri, "trials": trials, "ids": ids, "stale": stale, "other": other}


def test_load_evaluations_round_trip(store):
    df = ds.load_evaluations(EXP, store["uri"])
    assert list(df.columns) == list(ds.EVAL_COLUMNS)
    assert len(df) == 4 and set(df["run"]) == set(store["ids"].values())
    assert (df["eval_key"] == "keyA").all() and (df["flop_convention"] == "matmul").all()
    assert df["task"].tolist() == ["hellaswag", "hellaswag", "lambada", "lambada"]
    assert df["group"].tolist() == ["autoregressive", "masked"] * 2
    row = {(r.source_run, r.task): r for r in df.itertuples(index=False)}
    a, m = store["trials"]["a"], store["trials"]["m"]
    h = row[(a, "hellaswag")]
    assert (h.run_id, h.family, h.size, h.budget, h.n, h.k) == ("hash-a", "autoregressive",
                                                                "L2-d48", 1e17, 200, 80)
    assert h.compute == pytest.approx(0.98e17) and h.val_nelbo == 3.5 and np.isnan(h.knob)
    assert (h.acc, h.acc_norm, h.chance, h.version) == (0.40, pytest.approx(0.41), 0.25,
                                                        "hellaswag-v1")
    assert (h.lo, h.hi) == (pytest.approx(0.3346, abs=5e-5), pytest.approx(0.4692, abs=5e-5))
    assert h.above_chance and np.isnan(h.acc_draw_sd) and np.isnan(h.nll_per_token)
    mh = row[(m, "hellaswag")]                      # 50/200 at chance 0.25: inside [0.195, 0.314]
    assert mh.k == 50 and not mh.above_chance and mh.lo < 0.25 < mh.hi
    assert (mh.acc_draw_sd, mh.ll_se) == (0.02, 0.3) and mh.compute == pytest.approx(1.02e16)
    lm, la = row[(m, "lambada")], row[(a, "lambada")]
    assert lm.k == 0 and lm.lo == 0.0 and not lm.above_chance and np.isnan(lm.acc_norm)
    assert la.k == 5 and la.lo > 0 and la.above_chance and la.nll_per_token == 5.5
    # --key picks the other settings (a prefix will do); an unknown key names the known ones
    other = ds.load_evaluations(EXP, store["uri"], key="keyB")
    assert set(other["run"]) == {store["other"]} and other["acc"].tolist() == [0.5, 0.0]
    with pytest.raises(AnalysisError, match=r"key 'nope' matches no.*keyA \(2 runs\)"):
        ds.load_evaluations(EXP, store["uri"], key="nope")
    with pytest.raises(AnalysisError, match="prefix of several"):
        ds.load_evaluations(EXP, store["uri"], key="key")


def test_load_errors_say_what_to_run(store):
    with pytest.raises(AnalysisError, match="'no_such' not found.*make evaluate SWEEP=no_such"):
        ds.load_evaluations("no_such", store["uri"])
    with pytest.raises(AnalysisError, match="no finished evaluation runs.*make evaluate"):
        ds.load_evaluations("trained_only", store["uri"])


def test_table_marks_and_verdicts(store):
    df = ds.load_evaluations(EXP, store["uri"])
    text = ds.table(df)
    lines = text.splitlines()
    assert lines[0].split() == ["group", "size", "budget", "C", "val", "NELBO", "task", "n",
                                "acc", "[95%", "CI]", "acc_norm", "chance"]
    ar = next(ln for ln in lines if ln.startswith("autoregressive") and "hellaswag" in ln)
    assert ar.split() == ["autoregressive", "L2-d48", "1e+17", "9.8e+16", "3.5000", "hellaswag",
                          "200", "0.400", "[0.335,", "0.469]", "0.410", "0.250", "*"]
    masked = next(ln for ln in lines if ln.startswith("masked") and "lambada" in ln)
    # 0/100: hi = (z²/n) / (1 + z²/n) = 0.037; no mark
    assert masked.split()[-4:] == ["[0.000,", "0.037]", "-", "0.000"]
    assert "hellaswag: above chance: autoregressive" in lines
    assert "lambada: above chance: autoregressive" in lines
    pool = ds.pooled(df.assign(group="all"))
    hs = pool[pool["task"] == "hellaswag"].iloc[0]   # mean of 0.40 and 0.25 at one run's n = 200:
    assert (hs.k, hs.n, hs.runs, hs.runs_above) == (65, 200, 2, 1)  # the runs share their items
    assert hs.lo == pytest.approx(0.2639, abs=1e-3) and hs.above_chance
    assert ds.table(df.query("group == 'masked'")).splitlines()[-3:-1] == [
        "hellaswag: no family above chance", "lambada: no family above chance"]


def test_cli_writes_csv_json_pngs_and_says_why_there_is_no_fit(store, tmp_path, capsys):
    out = tmp_path / "ds"
    assert ds.main(["--experiment", EXP, "--tracking-uri", store["uri"], "--out", str(out),
                    "--bootstrap", "10"]) == 0
    printed = capsys.readouterr().out
    assert "evaluation key keyA: 2 evaluation runs, 2 tasks" in printed
    assert "hellaswag / masked: 1 point(s), a sigmoid needs >= 5: no fit" in printed
    csv = pd.read_csv(out / "downstream.csv")
    assert len(csv) == 4 and csv["above_chance"].sum() == 2
    fits = json.loads((out / "fits.json").read_text())
    assert [(f["task"], f["group"], f["ok"]) for f in fits] == [
        ("hellaswag", "autoregressive", False), ("hellaswag", "masked", False),
        ("lambada", "autoregressive", False), ("lambada", "masked", False)]
    assert {f["reason"] for f in fits} == {"1 point(s), a sigmoid needs >= 5: no fit"}
    assert all(f["stage1"] == {} and f["law"] is None for f in fits)
    for task in ("hellaswag", "lambada"):
        png = (out / f"accuracy_{task}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    argv = ["--tracking-uri", store["uri"], "--out", str(tmp_path / "x")]
    assert ds.main(["--experiment", "trained_only", *argv]) == ds.EXIT_BAD_INPUT
    assert "make evaluate SWEEP=trained_only" in capsys.readouterr().err
    assert ds.main(["--experiment", EXP, "--key", "zzz", *argv]) == ds.EXIT_BAD_INPUT
    assert not (tmp_path / "x").exists()


def test_cli_fits_a_ladder(store, tmp_path, capsys):
    out = tmp_path / "ladder"
    assert ds.main(["--experiment", LADDER, "--tracking-uri", store["uri"], "--out", str(out),
                    "--bootstrap", "20"]) == 0
    printed = capsys.readouterr().out
    assert "hellaswag / masked: stage 1 (6 points" in printed
    (fit,) = json.loads((out / "fits.json").read_text())
    assert fit["ok"] and fit["reason"] == "" and fit["c_max"] == pytest.approx(LADDER_C.max())
    assert fit["stage1"]["L0"]["value"] == pytest.approx(4.0, abs=0.15)
    assert fit["law"]["beta"]["value"] == pytest.approx(0.1, rel=0.2)
    c = LADDER_C.max()
    truth = sigmoid_accuracy(PLANTED, LADDER_LAW["A"] * c ** -LADDER_LAW["beta"]
                             + LADDER_LAW["B"], CHANCE)
    assert fit["predictions"]["acc@Cmax"]["value"] == pytest.approx(float(truth), abs=0.02)
