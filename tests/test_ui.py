"""`make ui` (python -m trainer.tools.ui): a real MLflow server on 127.0.0.1 over a sqlite store shows the
runs written straight to that sqlite file, and listens on the loopback interface only."""
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import psutil
import pytest
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from tests.conftest import REPO, clean_env, free_port


def _wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.time() + timeout
    while True:
        try:
            with urllib.request.urlopen(url + "/health", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            raise AssertionError(f"server not healthy (exit code {proc.poll()})")
        time.sleep(0.3)


def _outbound_ip() -> str | None:
    """This host's non-loopback address, if it has one (UDP connect sends nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))
            ip = s.getsockname()[0]
        except OSError:
            return None
    return None if ip.startswith("127.") else ip


def _stop(proc: subprocess.Popen) -> None:
    """End the server's own process group (it has a worker), by its PID."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def test_make_ui_runs_the_entry_point():
    if shutil.which("make") is None:
        pytest.skip("make not installed")
    out = subprocess.run(["make", "-n", "ui", "UI_PORT=5999"], cwd=REPO, capture_output=True,
                         text=True, check=True).stdout
    assert "-m trainer.tools.ui --port 5999" in out


def test_ui_serves_the_store_on_loopback_only(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # a run written straight to the sqlite file, as trainer.job.tracking does (this also creates the DB
    # before the server opens it: two processes migrating a fresh sqlite file at once race)
    store = MlflowClient(uri)
    exp = store.create_experiment("ui-test")
    run = store.create_run(exp, tags={"dlm.family": "masked", "dlm.step_unit": "GFLOP"},
                           run_name="masked-L2-d24")
    rid = run.info.run_id
    store.log_batch(rid, params=[Param("size", "L2-d24")],
                    metrics=[Metric("val_nelbo", 5.0 - k, 0, step) for k, step in enumerate((0, 3, 7))])

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "trainer.tools.ui", "--port", str(port), "--uri", uri],
                            cwd=REPO, env=clean_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_healthy(url, proc)
        store.log_batch(rid, metrics=[Metric("val_nelbo", 1.5, 0, 12)])      # written while it runs
        store.set_terminated(rid, "FINISHED")

        rest = MlflowClient(url)
        assert "ui-test" in {e.name for e in rest.search_experiments()}
        seen = rest.get_run(rid)
        assert seen.info.status == "FINISHED" and seen.info.run_name == "masked-L2-d24"
        assert seen.data.params == {"size": "L2-d24"}
        assert seen.data.tags["dlm.family"] == "masked"
        history = [(m.step, m.value) for m in rest.get_metric_history(rid, "val_nelbo")]
        assert sorted(history) == [(0, 5.0), (3, 4.0), (7, 3.0), (12, 1.5)]
        with urllib.request.urlopen(url + "/", timeout=5) as r:                # the web UI itself
            assert r.status == 200 and b"<html" in r.read().lower()

        # loopback only: every listening socket on the port is 127.0.0.1, and the host's other
        # address refuses the connection
        listening = [c for c in psutil.net_connections("inet")
                     if c.status == psutil.CONN_LISTEN and c.laddr.port == port]
        assert listening and {c.laddr.ip for c in listening} == {"127.0.0.1"}, listening
        ip = _outbound_ip()
        if ip is not None:
            with pytest.raises(OSError):
                socket.create_connection((ip, port), timeout=2).close()
    finally:
        _stop(proc)
