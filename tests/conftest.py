import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.net import free_port  # noqa: F401  (the one free_port; tests import it from here)

REPO = Path(__file__).resolve().parents[1]
DIST_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
             "GROUP_RANK", "ROLE_RANK", "TORCHELASTIC_RUN_ID")


def tiny_run(tmp: Path, **sections) -> dict:
    """A RunConfig dict for a seconds-long job writing only under `tmp`."""
    d = {"size": "L2-d24", "sweep": "test",
         "train": {"budget_flops": 1e10, "batch_size": 8, "seq_len": 64, "evals": 4, "eval_seqs": 16,
                   "eval_t_repeats": 1},
         "io": {"tracking_uri": f"sqlite:///{tmp / 'mlflow.db'}", "out_dir": str(tmp / "runs"),
                "experiment": "test"}}
    for key, value in sections.items():
        if isinstance(value, dict):
            d.setdefault(key, {}).update(value)
        else:
            d[key] = value
    return d


def clean_env(**extra) -> dict:
    """Environment for a child process: no inherited rendezvous variables from in-process runs."""
    env = {k: v for k, v in os.environ.items() if k not in DIST_VARS}
    env["PYTHONPATH"] = str(REPO)
    env.update(extra)
    return env


@pytest.fixture
def mlflow_server(tmp_path):
    """A real `mlflow server` on 127.0.0.1 (lean settings from STACK.md), ended by its PID."""
    port = free_port()
    db = tmp_path / "server.db"
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--backend-store-uri", f"sqlite:///{db}",
         "--artifacts-destination", str(tmp_path / "artifacts")],
        env=clean_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    import urllib.request
    while True:
        try:
            urllib.request.urlopen(url + "/health", timeout=1)
            break
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("mlflow server did not start")
            time.sleep(0.5)
    yield url
    os.killpg(proc.pid, 15)          # the server's own process group (it spawns a worker)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
