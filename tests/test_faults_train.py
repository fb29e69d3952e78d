"""Faults of one training job and what its MLflow run says about them (issue 11, items 1, 2, 5, 7,
12, 13): broken checkpoints, a stale MLflow id, two writers, errors and interrupts, live curves, the
experiment's kind. Real DeepSpeed, real sqlite MLflow, tiny seconds-long runs."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

import trainer.job.loop as loop_mod
from tests.conftest import REPO, clean_env, tiny_run
from trainer.job.checkpoint import LOCK, RunLock
from trainer.config import RunConfig
from trainer.job.tracking import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, ensure_experiment, find_run
from trainer.job.train import EXIT_BUSY, train


def runs_of(cfg: RunConfig, client: MlflowClient | None = None):
    client = client or MlflowClient(cfg.io.tracking_uri)
    exp = client.get_experiment_by_name(cfg.io.experiment)
    return client.search_runs([exp.experiment_id], f"tags.`dlm.run_id` = '{cfg.run_id()}'")


def history(client, run_id, key="val_nelbo"):
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def keep_one_mid_checkpoint(cfg: RunConfig) -> tuple[Path, int]:
    """Pretend the job died mid-run: only one checkpoint, from the middle of a finished run, is
    left on disk, and its MLflow run is back to RUNNING (never terminated)."""
    root = Path(cfg.io.out_dir) / cfg.run_id() / "ckpt"
    tags = sorted(p.name for p in root.glob("step*"))
    assert len(tags) >= 3, tags
    keep = tags[len(tags) // 2]
    for t in tags:
        if t != keep:
            shutil.rmtree(root / t)
    (root.parent / "model.pt").unlink()
    run = find_run(MlflowClient(cfg.io.tracking_uri),
                   MlflowClient(cfg.io.tracking_uri).get_experiment_by_name(cfg.io.experiment).experiment_id,
                   cfg.run_id())
    MlflowClient(cfg.io.tracking_uri).update_run(run.info.run_id, status="RUNNING")
    return root / keep, int(keep[4:])


# --- item 1: a checkpoint loads whole or not at all ----------------------------------------------
# ZeRO-2 in make test; 1 and 3 (the same code path, other shard layouts) in make test-all
@pytest.mark.parametrize("stage", [2, pytest.param(1, marks=pytest.mark.slow),
                                   pytest.param(3, marks=pytest.mark.slow)])
def test_unreadable_optimizer_shard_restarts_fresh_in_a_new_mlflow_run(tmp_path, capfd, stage):
    cut = RunConfig.from_dict(tiny_run(tmp_path, engine={"zero_stage": stage},
                                       io={"ckpt_every_min": 0.005, "keep_ckpts": 1000}))
    clean = first = train(cut, progress=False)                        # a clean, uninterrupted run
    tag_dir, step = keep_one_mid_checkpoint(cut)
    shards = list(tag_dir.glob("*optim_states.pt"))
    assert shards, sorted(p.name for p in tag_dir.iterdir())
    for f in shards:                                  # the model-states file stays intact
        f.write_bytes(b"not a pickle")
    again = train(cut, progress=False)
    err = capfd.readouterr().err
    print(f"\nZeRO-{stage}: clean {clean.final_val_nelbo!r}, broken-shard rerun "
          f"{again.final_val_nelbo!r} (checkpoint at step {step})")
    assert "fresh engine from step 0" in err and tag_dir.name in err
    assert again.status == "FINISHED" and again.resumed_from == 0
    assert again.final_val_nelbo == pytest.approx(clean.final_val_nelbo, rel=1e-6, abs=1e-6)
    client = MlflowClient(cut.io.tracking_uri)
    new, old = client.get_run(again.mlflow_run_id), client.get_run(first.mlflow_run_id)
    assert new.info.run_id != old.info.run_id and new.info.status == "FINISHED"
    assert "fresh engine from step 0" in new.data.tags["dlm.resume"]
    assert old.info.status == "FAILED" and old.data.tags["dlm.superseded_by"] == new.info.run_id
    h = history(client, new.info.run_id)
    h_clean = history(client, clean.mlflow_run_id)
    assert [s for s, _ in h] == [s for s, _ in h_clean] and len(h) == cut.train.evals + 1  # each once
    assert h[-1][1] == float(new.data.tags["dlm.final_val_nelbo"]) == again.final_val_nelbo
    assert find_run(client, new.info.experiment_id, cut.run_id()).info.run_id == new.info.run_id
    # the broken tag is kept aside as it was; the restart's time-based checkpoints may write a new,
    # good checkpoint under the same tag (same step), never reusing the broken files
    broken = tag_dir.parent / (tag_dir.name + ".broken")
    assert all((broken / f.name).read_bytes() == b"not a pickle" for f in shards)
    assert not tag_dir.exists() or all(f.read_bytes() != b"not a pickle" for f in shards)


# --- item 2: a stale MLflow id in the checkpoint ---------------------------------------------------
@pytest.mark.parametrize("how", ["delete_run", "new_store"])
def test_stale_mlflow_id_in_checkpoint_falls_back_with_a_warning(tmp_path, capfd, how):
    cfg = RunConfig.from_dict(tiny_run(tmp_path, io={"ckpt_every_min": 0.002, "keep_ckpts": 1000}))
    first = train(cfg, progress=False)
    _, step = keep_one_mid_checkpoint(cfg)
    if how == "delete_run":                                            # e.g. deleted in the UI
        MlflowClient(cfg.io.tracking_uri).delete_run(first.mlflow_run_id)
    else:                                # a store replaced or a changed URI: the id is unknown there
        cfg = RunConfig.from_dict({**cfg.to_dict(), "io": {
            **cfg.to_dict()["io"], "tracking_uri": f"sqlite:///{tmp_path / 'new.db'}"}})
        assert cfg.run_id() == first.run_id                            # the same job
    again = train(cfg, progress=False)
    err = capfd.readouterr().err
    assert "warning: MLflow run " + first.mlflow_run_id in err
    assert ("deleted" if how == "delete_run" else "not in the store") in err
    assert again.status == "FINISHED" and again.resumed_from == step
    assert again.mlflow_run_id != first.mlflow_run_id
    client = MlflowClient(cfg.io.tracking_uri)
    live = client.get_run(again.mlflow_run_id)
    assert live.info.lifecycle_stage == "active" and live.info.status == "FINISHED"
    assert "a new MLflow run" in live.data.tags["dlm.resume"]
    assert [r.info.run_id for r in runs_of(cfg, client)] == [again.mlflow_run_id]
    assert train(cfg, progress=False).status == "SKIPPED"              # and reruns work again


# --- item 5: one writer per run ---------------------------------------------------------------------
def test_lock_names_its_holder_and_a_killed_holder_does_not_block(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from trainer.job.checkpoint import RunLock; "
         f"assert RunLock({str(tmp_path)!r}).acquire() is None; print('held', flush=True); "
         "time.sleep(120)"], cwd=REPO, env=clean_env(), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        busy = RunLock(tmp_path).acquire()
        assert busy is not None and f"pid {holder.pid} on " in busy
    finally:
        os.kill(holder.pid, signal.SIGKILL)                            # dies holding the lock
        holder.wait()
    lock = RunLock(tmp_path)
    assert lock.acquire() is None                                      # the kernel released it
    lock.release()
    assert (tmp_path / LOCK).exists()                                  # never unlinked


# two processes of a 3e10-FLOP job at once: 17 s on the AVX2 machine alone, ~120 s under load
def test_two_identical_jobs_at_once_one_writes_the_other_is_busy(tmp_path):
    cfg = tiny_run(tmp_path, train={"budget_flops": 3e10})
    ensure_experiment(MlflowClient(cfg["io"]["tracking_uri"]), "test")   # one creator of the DB
    path = tmp_path / "run.json"
    path.write_text(json.dumps(cfg))
    procs = [subprocess.Popen([sys.executable, "-m", "trainer.job.train", "--config", str(path)],
                              cwd=REPO, env=clean_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [(p.wait(300), *p.communicate()) for p in procs]
    codes = sorted(rc for rc, _, _ in outs)
    assert codes == [0, EXIT_BUSY], [(rc, err[-2000:]) for rc, _, err in outs]
    busy_err = next(err for rc, _, err in outs if rc == EXIT_BUSY)
    assert "is busy" in busy_err and "held by pid " in busy_err, busy_err
    rc = RunConfig.from_dict(cfg)
    client = MlflowClient(rc.io.tracking_uri)
    runs = runs_of(rc, client)
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    steps = [s for s, _ in history(client, runs[0].info.run_id)]
    assert len(steps) == len(set(steps)) == rc.train.evals + 1


# --- item 7: no orphan RUNNING runs ----------------------------------------------------------------
@pytest.mark.parametrize("exc,status", [(RuntimeError("disk on fire"), "FAILED"),
                                        (KeyboardInterrupt(), "KILLED")])
def test_error_after_the_run_starts_marks_it_with_the_reason(tmp_path, monkeypatch, exc, status):
    cfg = RunConfig.from_dict(tiny_run(tmp_path))
    calls = []
    real = loop_mod.evaluate

    def flaky(*a, **k):
        calls.append(1)
        if len(calls) == 2:                                            # the second evaluation
            raise exc
        return real(*a, **k)

    monkeypatch.setattr(loop_mod, "evaluate", flaky)
    with pytest.raises(type(exc)):
        train(cfg, progress=False)
    (run,) = runs_of(cfg)
    assert run.info.status == status
    assert run.data.tags["dlm.failure"] == f"{type(exc).__name__}: {exc}".rstrip(": ")
    lock = RunLock(Path(cfg.io.out_dir) / cfg.run_id())
    assert lock.acquire() is None                                      # released on the way out
    lock.release()


# a process started and stopped mid-run: 12 s on the AVX2 machine alone, ~130 s under load
def test_sigterm_marks_the_run_killed(tmp_path):
    cfg = RunConfig.from_dict(tiny_run(tmp_path, train={"budget_flops": 1e11}))
    ensure_experiment(MlflowClient(cfg.io.tracking_uri), "test")
    path = tmp_path / "run.json"
    path.write_text(cfg.to_json())
    proc = subprocess.Popen([sys.executable, "-m", "trainer.job.train", "--config", str(path)], cwd=REPO,
                            env=clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    client = MlflowClient(cfg.io.tracking_uri)
    while time.time() < deadline and proc.poll() is None:
        runs = runs_of(cfg, client)
        if runs and history(client, runs[0].info.run_id):            # training has begun
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before it could be stopped"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    (run,) = runs_of(cfg, client)
    assert run.info.status == "KILLED" and run.data.tags["dlm.failure"] == "Terminated: SIGTERM"


# --- item 12: live curves -----------------------------------------------------------------------------
def test_every_evaluation_is_in_mlflow_when_it_is_reported(tmp_path):
    cfg = RunConfig.from_dict(tiny_run(tmp_path))
    client = MlflowClient(cfg.io.tracking_uri)
    seen = []

    def on_eval(point):
        (run,) = runs_of(cfg, client)
        stored = {s for s, _ in history(client, run.info.run_id)}
        seen.append((round(point["flops"] / 1e9), stored))

    res = train(cfg, progress=False, on_eval=on_eval)
    assert res.status == "FINISHED" and len(seen) == cfg.train.evals + 1
    for i, (step, stored) in enumerate(seen):
        assert step in stored and len(stored) == i + 1, (i, step, sorted(stored))


# --- item 13: the MLflow UI's training view -----------------------------------------------------------
def test_experiment_is_marked_model_training_new_and_existing(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path / 'm.db'}")
    new = ensure_experiment(client, "fresh")
    assert client.get_experiment(new).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    old = client.create_experiment("made-before")                     # an older store's experiment
    assert EXPERIMENT_KIND_TAG not in client.get_experiment(old).tags
    assert ensure_experiment(client, "made-before") == old
    assert client.get_experiment(old).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    chosen = client.create_experiment("chosen", tags={EXPERIMENT_KIND_TAG: "finetuning"})
    ensure_experiment(client, "chosen")                                # a person's choice stays
    assert client.get_experiment(chosen).tags[EXPERIMENT_KIND_TAG] == "finetuning"


def test_ui_prints_training_view_links(tmp_path):
    from trainer.tools.ui import TRAINING_VIEW, training_links
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    assert training_links(uri, 5000) == []                             # no store: nothing created
    assert not (tmp_path / "m.db").exists()
    exp = ensure_experiment(MlflowClient(uri), "compute_bound")
    assert training_links(uri, 5000) == [
        f"compute_bound: http://127.0.0.1:5000/#/experiments/{exp}?{TRAINING_VIEW}"]
