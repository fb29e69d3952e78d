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


def stop(proc: subprocess.Popen, sig=signal.SIGINT, wait=120) -> None:
    """Interrupt the driver like Ctrl-C; if it does not exit, end its whole process group."""
    os.killpg(proc.pid, sig)
    try:
        proc.wait(wait)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


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


def test_dry_run_prints_the_table_and_trains_nothing(tmp_path):
    proc = orchestrate(tmp_path, "smoke", "--dry-run")
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line for line in proc.stdout.splitlines() if line[:3].strip().isdigit()]
    assert len(rows) == SMOKE_RUNS
    assert "ETA" in proc.stdout and "tok/s" in proc.stdout
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "runs").exists()


def test_smoke_sweep_end_to_end_then_rerun_skips_everything(tmp_path):
    t0 = time.perf_counter()
    proc = orchestrate(tmp_path, "smoke")
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
    again = orchestrate(tmp_path, "smoke")
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
             "--steps", "4,16,64", "--n", "8", "--repeats", "1"]
    samp = subprocess.run(stage, cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=600)
    assert samp.returncode == 0, samp.stdout[-2000:] + samp.stderr[-2000:]
    _, sampled = runs(tmp_path, "sampling")
    assert len(sampled) == SMOKE_RUNS and all(r.info.status == "FINISHED" for r in sampled)
    ar = [c for c in children if c.data.tags["dlm.family"] == "autoregressive"]
    best_ar = min(ar, key=lambda c: c.data.metrics["val_nelbo"])
    seq_len = int(children[0].data.params["train.seq_len"])
    for r in sampled:
        assert r.data.tags["dlm.judge_run_id"] == best_ar.info.run_id
        steps = sorted(m.step for m in client.get_metric_history(r.info.run_id, "gen_ppl"))
        assert steps == ([seq_len] if r.data.tags["dlm.family"] == "autoregressive" else [4, 16, 64])
        ppl = client.get_metric_history(r.info.run_id, "gen_ppl")
        assert all(1.0 < m.value < 512 for m in ppl)                # judge vocabulary is 512
        assert all(0 < m.value <= math.log(seq_len) + 1e-9
                   for m in client.get_metric_history(r.info.run_id, "entropy"))
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


def test_interrupted_sweep_resumes_without_rerunning_finished_runs(tmp_path):
    proc = orchestrate(tmp_path, "smoke", stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 400
    while finished_children(tmp_path) < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
    done_first = finished_children(tmp_path)
    assert proc.poll() is None and 2 <= done_first < SMOKE_RUNS, "sweep ended before the interrupt"
    stop(proc)
    client, children = runs(tmp_path, "trial")
    first = {c.data.tags["dlm.run_id"]: (c.info.run_id, c.info.start_time, c.info.end_time)
             for c in children if c.info.status == "FINISHED"}
    assert len(first) >= 2
    again = orchestrate(tmp_path, "smoke")
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert f"{len(first)} skipped as already finished" in again.stdout
    client, children = runs(tmp_path, "trial")
    assert len(children) == SMOKE_RUNS                                      # no duplicates
    assert all(c.info.status == "FINISHED" for c in children)
    for c in children:                                                       # not re-executed
        if c.data.tags["dlm.run_id"] in first:
            assert first[c.data.tags["dlm.run_id"]] == (c.info.run_id, c.info.start_time, c.info.end_time)
        steps = [m.step for m in client.get_metric_history(c.info.run_id, "val_nelbo")]
        assert len(steps) == len(set(steps)) == int(c.data.params["train.evals"]) + 1
    print(f"\ninterrupted after {len(first)} finished runs; resumed:\n" + again.stdout[-800:])


def test_killed_worker_is_retried_and_resumes_from_its_checkpoint(tmp_path):
    # checkpoints every ~0.1 s so that a kill lands after one; the biggest smoke model trains longest
    proc = orchestrate(tmp_path, "smoke", "--set", "io.ckpt_every_min=0.002",
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
