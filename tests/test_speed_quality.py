"""Speed-quality fronts of the samplers (analysis/speed_quality.py): the dominance rule on hand-made
points, degenerate samples kept off the fronts, and a round trip through a real sqlite MLflow store
written with the sampling stage's schema, through the loader and the CLI."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from analysis import schema
from analysis import speed_quality as sq
from core import schema as M
from analysis.speed_quality import (degenerate_mask, load_sampling, pareto_mask,
                                    speed_quality_table)


# --------------------------------------------------------------------------------------------------
# pareto_mask
# --------------------------------------------------------------------------------------------------
def test_pareto_mask_known_points():
    #          dominated  tie  tie  fastest  best   NaN  same-speed  dominated  same-ppl-slower
    speed = [10, 20, 20, 30, 5, np.nan, 20, 15, 12]
    ppl = [50, 40, 40, 60, 30, 10, 45, 50, 40]
    expect = [False, True, True, True, True, False, False, False, False]
    assert pareto_mask(speed, ppl).tolist() == expect
    # The NaN-speed point would dominate (5, 30) if it counted; a NaN quality neither.
    assert pareto_mask([5, 100], [30, np.nan]).tolist() == [True, False]
    assert pareto_mask([np.inf, 1.0], [1.0, 2.0]).tolist() == [False, True]
    assert pareto_mask([], []).tolist() == []
    assert pareto_mask([3.0], [7.0]).tolist() == [True]
    with pytest.raises(ValueError, match="one length"):
        pareto_mask([1, 2], [1])


def _dominated_brute(s: np.ndarray, q: np.ndarray) -> np.ndarray:
    ok = np.isfinite(s) & np.isfinite(q)
    out = np.zeros(len(s), dtype=bool)
    for i, j in itertools.product(range(len(s)), repeat=2):
        if ok[i] and ok[j] and s[j] >= s[i] and q[j] <= q[i] and (s[j] > s[i] or q[j] < q[i]):
            out[i] = True
    return ok & ~out


def test_pareto_mask_matches_the_definition_with_many_ties():
    rng = np.random.default_rng(0)
    for _ in range(40):
        n = int(rng.integers(1, 30))
        s = rng.integers(0, 6, n).astype(float)  # few distinct values: ties everywhere
        q = rng.integers(0, 6, n).astype(float)
        s[rng.random(n) < 0.1] = np.nan
        np.testing.assert_array_equal(pareto_mask(s, q), _dominated_brute(s, q))


# --------------------------------------------------------------------------------------------------
# The planted study: per sampling run, steps -> (tokens/s, gen-PPL, entropy)
# --------------------------------------------------------------------------------------------------
REF_ENTROPY = 5.2  # x 0.9 = 4.68: below it a sample is degenerate
SEQ_LEN = 64
RUNS = {
    "m32": ("masked", "", "L2-d32", 1e12, "masked-ancestral",
            {8: (4000, 80, 5.0), 16: (2000, 60, 5.0), 32: (1000, 50, 5.0)}),
    "u32": ("uniform", "", "L2-d32", 1e12, "uniform-ancestral",
            {8: (3800, 70, 5.0), 16: (1900, 65, 5.0), 32: (950, 62, 5.0)}),
    "i48": ("hybrid", "-2.0", "L2-d48", 2e12, "uniform-ancestral",
            {8: (3000, 75, 5.0), 16: (1500, 55, 5.0)}),
    "ar": ("autoregressive", "", "L2-d32", 1e12, "ar-kvcache", {SEQ_LEN: (1200, 45, 5.0)}),
    # steps 8: fastest AND best gen-PPL, by repeating itself (entropy 2.0 < 4.68)
    "m128": ("masked", "", "L2-d128", 4e12, "masked-ancestral",
             {8: (5000, 5, 2.0), 16: (2500, 58, 5.0)}),
}
FRONT_ALL = {("m32", 8), ("u32", 8), ("m128", 16), ("i48", 16), ("ar", SEQ_LEN)}
FRONT_GROUP = FRONT_ALL | {("m32", 32), ("u32", 16), ("u32", 32), ("i48", 8)}
DEGENERATE = {("m128", 8)}
GROUPS = {"m32": "masked", "u32": "uniform", "i48": "hybrid@-2", "ar": "autoregressive",
          "m128": "masked"}
JUDGE = "autoregressive L2-d48 run judge0, val 3.10 nats"


def _frame() -> pd.DataFrame:
    """The planted points as the loader would return them (no MLflow)."""
    rows = []
    for key, (family, knob, size, budget, sampler, pts) in RUNS.items():
        for steps, (tps, ppl, ent) in pts.items():
            rows.append({"run": key, "group": GROUPS[key], "family": family, "size": size,
                         "budget": budget, "sampler": sampler, "steps": steps,
                         "tokens_per_s": float(tps), "gen_ppl": float(ppl),
                         "entropy": ent, "ref_entropy": REF_ENTROPY, "judge_run_id": "judge0",
                         "judge": JUDGE})
    return pd.DataFrame(rows).sample(frac=1.0, random_state=1)  # order must not matter


def _marked(table: pd.DataFrame, col: str) -> set:
    return set(zip(table.loc[table[col], "run"], table.loc[table[col], "steps"]))


def test_table_fronts_and_degenerate_points():
    df = _frame()
    assert _marked(df.assign(d=degenerate_mask(df)), "d") == DEGENERATE
    table = speed_quality_table(df)
    assert _marked(table, "degenerate") == DEGENERATE
    assert _marked(table, "front_all") == FRONT_ALL
    assert _marked(table, "front_group") == FRONT_GROUP
    assert not (table["degenerate"] & (table["front_all"] | table["front_group"])).any()
    # Sorted by group, size (natural order: d32 before d128), then steps.
    assert list(zip(table["group"], table["size"], table["steps"]))[:5] == [
        ("autoregressive", "L2-d32", 64), ("hybrid@-2", "L2-d48", 8),
        ("hybrid@-2", "L2-d48", 16), ("masked", "L2-d32", 8), ("masked", "L2-d32", 16)]
    # Without the entropy guard the repetitive sampler games gen-PPL and beats everything.
    gamed = speed_quality_table(df, min_entropy_ratio=0.0)
    assert _marked(gamed, "front_all") == DEGENERATE and not gamed["degenerate"].any()
    with pytest.raises(schema.AnalysisError, match="min_entropy_ratio"):
        degenerate_mask(df, -1.0)


def test_fronts_are_per_judge():
    other = _frame().assign(judge_run_id="judge1", judge="another judge",
                            gen_ppl=lambda d: d["gen_ppl"] * 10)
    table = speed_quality_table(pd.concat([_frame(), other], ignore_index=True))
    for judge in ("judge0", "judge1"):  # gen-PPL x 10 under judge1 does not push judge0 off
        assert _marked(table[table["judge_run_id"] == judge], "front_all") == FRONT_ALL


# --------------------------------------------------------------------------------------------------
# MLflow round trip
# --------------------------------------------------------------------------------------------------
EXP = "sq_smoke"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    pytest.importorskip("mlflow")
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    root = tmp_path_factory.mktemp("mlflow_sq")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment(EXP, artifact_location=(root / "a").as_uri())
    client.create_experiment("trained_only", artifact_location=(root / "b").as_uri())
    for e in (exp, client.get_experiment_by_name("trained_only").experiment_id):
        trial = client.create_run(e, tags={M.TAG_ROLE: M.ROLE_TRIAL})
        client.log_metric(trial.info.run_id, "val_nelbo", 3.0, step=1)  # not a sampling point
    parent = client.create_run(exp, tags={M.TAG_ROLE: M.ROLE_SAMPLING_PARENT})

    def sampling_run(key, start, scale=1.0):
        family, knob, size, budget, sampler, pts = RUNS[key]
        tags = {M.TAG_ROLE: M.ROLE_SAMPLING, "mlflow.parentRunId": parent.info.run_id,
                M.TAG_SOURCE_RUN: f"mlflow-{key}", M.TAG_RUN_ID: f"hash-{key}",
                M.TAG_FAMILY: family, M.TAG_KNOB: knob, M.TAG_SIZE: size,
                M.TAG_BUDGET: repr(budget), M.TAG_SAMPLER: sampler,
                M.TAG_JUDGE_RUN_ID: "judge0", M.TAG_JUDGE: JUDGE,
                M.TAG_VAL_NELBO: repr(3.5 + len(key) / 10), M.TAG_REF_ENTROPY: repr(REF_ENTROPY)}
        run = client.create_run(exp, tags=tags, start_time=start).info.run_id
        t0 = 1_700_000_000_000
        metrics = []
        for steps, (tps, ppl, ent) in pts.items():
            vals = {"tokens_per_s": tps, "latency_s": SEQ_LEN / tps, "gen_ppl": ppl * scale,
                    "entropy": ent, "nfe": steps}
            metrics += [Metric(k, float(v), t0 + 10, steps) for k, v in vals.items()]
        if key == "m32":  # an earlier write of the same (metric, step): superseded
            metrics.append(Metric("gen_ppl", 81.0, t0, 8))
        params = {"seed": "0", "n_samples": "16", "seq_len": str(SEQ_LEN), "temperature": "1.0"}
        client.log_batch(run, metrics=metrics, params=[Param(k, v) for k, v in params.items()])
        client.set_terminated(run)
        return run

    stale = sampling_run("m32", start=1_000, scale=100.0)  # the same measurement, older
    ids = {key: sampling_run(key, start=2_000 + i) for i, key in enumerate(RUNS)}
    return {"uri": uri, "ids": ids, "stale": stale, "root": root}


def test_load_sampling_round_trip(store):
    df = load_sampling(EXP, store["uri"])
    assert list(df.columns) == list(sq.SAMPLING_COLUMNS)
    assert len(df) == sum(len(r[5]) for r in RUNS.values()) == 11
    assert store["stale"] not in set(df["run"])
    by_run = {v: k for k, v in store["ids"].items()}
    for r in df.itertuples(index=False):
        key = by_run[r.run]
        family, knob, size, budget, sampler, pts = RUNS[key]
        tps, ppl, ent = pts[r.steps]
        assert (r.source_run, r.run_id, r.family, r.group, r.size, r.sampler) == (
            f"mlflow-{key}", f"hash-{key}", family, GROUPS[key], size, sampler)
        assert r.budget == budget and (np.isnan(r.knob) if knob == "" else r.knob == -2.0)
        assert (r.tokens_per_s, r.gen_ppl, r.entropy, r.nfe) == (tps, ppl, ent, r.steps)
        assert r.latency_s == pytest.approx(SEQ_LEN / tps, rel=1e-12)
        assert (r.judge_run_id, r.judge, r.ref_entropy) == ("judge0", JUDGE, REF_ENTROPY)
        assert r.val_nelbo == pytest.approx(3.5 + len(key) / 10)
        assert (r.seed, r.n_samples, r.seq_len, r.temperature) == (0, 16, SEQ_LEN, 1.0)
    table = speed_quality_table(df)
    ids = store["ids"]
    assert _marked(table, "front_all") == {(ids[k], s) for k, s in FRONT_ALL}
    assert _marked(table, "degenerate") == {(ids[k], s) for k, s in DEGENERATE}


def test_bulk_and_per_run_metric_paths_agree(store):
    pd.testing.assert_frame_equal(load_sampling(EXP, store["uri"], bulk=True),
                                  load_sampling(EXP, store["uri"], bulk=False))


def test_cli_writes_png_csv_and_prints_the_table(store, tmp_path, capsys):
    out = tmp_path / "sq"
    assert sq.main(["--experiment", EXP, "--tracking-uri", store["uri"], "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    png = (out / "speed_quality.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    csv = pd.read_csv(out / "speed_quality.csv")
    assert len(csv) == 11 and int(csv["front_all"].sum()) == len(FRONT_ALL)
    assert int(csv["front_group"].sum()) == len(FRONT_GROUP)
    assert int(csv["degenerate"].sum()) == 1
    assert csv.loc[csv["degenerate"], "gen_ppl"].tolist() == [5.0]
    lines = printed.splitlines()
    assert lines[0].startswith("| group | size | budget | sampler | steps | tokens/s | latency ms")
    # masked L2-d32 at 8 steps: 4000 tokens/s, 64/4000 s = 16 ms per sequence, gen-PPL 80 (the
    # later of two writes), on the overall and the group front.
    row = "| masked | {} | masked-ancestral | 8 | {} |"
    assert row.format("L2-d32 | 1e+12", "4000 | 16 | 80 | 5.000 | all, group") in lines
    assert row.format("L2-d128 | 4e+12", "5000 | 12.8 | 5 | 2.000 | degenerate") in lines
    assert f"judge: {JUDGE} [MLflow run judge0]" in printed
    assert "5 sampling runs, 11 points" in printed


def test_cli_errors_name_the_experiment(store, tmp_path, capsys):
    argv = ["--tracking-uri", store["uri"], "--out", str(tmp_path / "x")]
    assert sq.main(["--experiment", "no_such_study", *argv]) == sq.EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "'no_such_study' not found" in err and "orchestrator.sampling no_such_study" in err
    assert sq.main(["--experiment", "trained_only", *argv]) == sq.EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "'trained_only' has no sampling runs" in err and "dlm.role=sampling" in err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("other", ["masked-ancestral-cached[top_p=0.9]", "masked-remdm[cap,eta=0.02]"])
def test_each_sampler_and_its_settings_has_its_own_front(other):
    # one masked run sampled two ways (nucleus sampling, or another sampler of the family: ReMDM
    # remasking): the other is slower and better here, so it pushes the plain sampler's 32-step
    # point off the group's front but not off its sampler's
    rows = []
    for sampler, (fs, fq) in (("masked-ancestral-cached", (1.0, 1.0)), (other, (0.8, 0.5))):
        for steps, (tps, ppl) in {8: (1000.0, 200.0), 32: (400.0, 120.0)}.items():
            rows.append({"run": sampler, "group": "masked", "family": "masked", "size": "L2-d32",
                         "budget": 1e12, "sampler": sampler, "steps": steps,
                         "tokens_per_s": tps * fs, "latency_s": 0.01, "gen_ppl": ppl * fq, "entropy": 5.0,
                         "ref_entropy": REF_ENTROPY, "judge_run_id": "judge0", "judge": JUDGE})
    table = speed_quality_table(pd.DataFrame(rows))
    assert table["front_sampler"].all()                            # each sampler's 2 points
    assert _marked(table, "front_group") == {("masked-ancestral-cached", 8), (other, 8), (other, 32)}
    lines = sq.format_markdown(table).splitlines()
    assert [ln for ln in lines if ln.endswith("| sampler |")] == [
        "| masked | L2-d32 | 1e+12 | masked-ancestral-cached | 32 | 400 | 10 | 120 | 5.000 | sampler |"]
