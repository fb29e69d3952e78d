"""A real two-node Ray cluster on this machine (`ray start --head` + a second `ray start
--address=...` node, own temp dir and ports, 127.0.0.1) and a real `mlflow server`: the smoke sweep
joins it through RAY_ADDRESS / MLFLOW_TRACKING_URI, runs trials on both nodes and every run reaches
the server. The cluster runs as the README's cluster recipe says to: Ray's token auth on (one token
for every node and the driver, here in RAY_AUTH_TOKEN). `make test-cluster` (not part of
`make test`: ~1-2 min). Every process started here is ended by its process group, never by name."""
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import REPO, clean_env, free_port

pytestmark = pytest.mark.cluster
RAY = str(Path(sys.executable).with_name("ray"))
AUTH = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}   # shared by all nodes


def _node_args(lo: int) -> list[str]:
    # two raylets on one machine: each its own worker-port range and dashboard-agent port
    return ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--block", "--disable-usage-stats",
            f"--min-worker-port={lo}", f"--max-worker-port={lo + 100}",
            f"--dashboard-agent-listen-port={free_port()}"]


@pytest.fixture
def two_node_cluster(tmp_path):
    env = clean_env(**AUTH)
    port = free_port()
    procs = []
    # a short temp dir: Ray's unix sockets live under it and paths are limited to ~107 bytes
    temp = tempfile.mkdtemp(prefix="dlmray", dir="/tmp")
    head = subprocess.Popen([RAY, "start", "--head", f"--port={port}", "--include-dashboard=false",
                             f"--temp-dir={temp}", *_node_args(23000)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    procs.append(head)
    address = f"127.0.0.1:{port}"
    try:
        _wait_nodes(address, 1, env)
        worker = subprocess.Popen([RAY, "start", f"--address={address}", *_node_args(23200)],
                                  env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  start_new_session=True)
        procs.append(worker)
        _wait_nodes(address, 2, env)
        yield address
    finally:
        for p in reversed(procs):
            _end_group(p)
        shutil.rmtree(temp, ignore_errors=True)


def _wait_nodes(address: str, n: int, env: dict, timeout: float = 120) -> None:
    probe = ("import ray, sys; ray.init(address=sys.argv[1], log_to_driver=False); "
             "print(sum(x['Alive'] for x in ray.nodes()))")
    deadline = time.time() + timeout
    while time.time() < deadline:
        out = subprocess.run([sys.executable, "-c", probe, address], env=env, capture_output=True,
                             text=True, timeout=60)
        if out.returncode == 0 and out.stdout.strip().splitlines()[-1:] == [str(n)]:
            return
        time.sleep(1)
    raise RuntimeError(f"Ray cluster at {address} did not reach {n} nodes")


def _end_group(proc: subprocess.Popen) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(30)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


def test_smoke_sweep_on_a_two_node_cluster_with_an_mlflow_server(tmp_path, two_node_cluster, mlflow_server):
    env = clean_env(RAY_ADDRESS=two_node_cluster, **AUTH)
    # a driver without the cluster's token is refused
    intruder = subprocess.run([sys.executable, "-c", "import ray, sys; ray.init(address=sys.argv[1])",
                               two_node_cluster], env=clean_env(RAY_AUTH_MODE="token",
                               RAY_AUTH_TOKEN=secrets.token_hex(32)), capture_output=True, text=True,
                              timeout=120)
    assert intruder.returncode != 0 and "auth" in (intruder.stdout + intruder.stderr).lower(), \
        intruder.stderr[-2000:]
    # sqlite cannot be shared by nodes: refused before any trial, naming the fix
    refused = subprocess.run([sys.executable, "-m", "orchestrator", "smoke", "--tracking-uri",
                              f"sqlite:///{tmp_path / 'x.db'}", "--out-dir", str(tmp_path / "runs")],
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "mlflow server" in refused.stderr.lower(), refused.stderr[-2000:]
    env["MLFLOW_TRACKING_URI"] = mlflow_server
    proc = subprocess.run([sys.executable, "-m", "orchestrator", "smoke", "--out-dir", str(tmp_path / "runs")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "on 2 node(s)" in proc.stdout
    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name("smoke")
    children = client.search_runs([exp.experiment_id], filter_string="tags.`dlm.role` = 'trial'")
    assert len(children) == 6 and all(c.info.status == "FINISHED" for c in children)
    nodes = {c.data.tags["dlm.ray_node"] for c in children}
    assert len(nodes) == 2, nodes
    for c in children:
        assert len(client.get_metric_history(c.info.run_id, "val_nelbo")) >= 2
    print(f"\n6 trials over nodes {sorted(n[:8] for n in nodes)}; all runs on {mlflow_server}")


def test_corpus_build_on_ray_data_across_two_nodes(tmp_path, two_node_cluster):
    """RAY_ADDRESS set -> data.build 'auto' runs the passes on Ray Data: units on both nodes, the
    same tokens as the one-process build; both encode rates printed (make test-cluster -s)."""
    import json
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    rng = np.random.default_rng(0)
    words = np.array("the river city king queen ran over under a of to and in is was north south".split())
    (tmp_path / "corpus").mkdir()
    for k in range(6):                                  # 6 files x 8 row groups of 250 documents
        rows = [" ".join(rng.choice(words, rng.integers(20, 200))) for _ in range(2000)]
        pq.write_table(pa.table({"text": rows}), tmp_path / "corpus" / f"s{k}.parquet", row_group_size=250)
    cmd = [sys.executable, "-m", "trainer.data.cli", "--paths", str(tmp_path / "corpus"), "--vocab-size", "300"]
    metas = {}
    for build, extra in (("ray", {"RAY_ADDRESS": two_node_cluster, **AUTH}), ("local", {})):
        cache = tmp_path / f"cache-{build}"
        proc = subprocess.run([*cmd, "--cache-dir", str(cache), "--build", "auto" if build == "ray" else "local"],
                              cwd=REPO, env=clean_env(**extra), capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        path = next(cache.glob("*/meta.json")).parent
        metas[build] = json.loads((path / "meta.json").read_text()), path
    (ray_meta, ray_path), (local_meta, local_path) = metas["ray"], metas["local"]
    assert ray_meta["build"] == "ray" and ray_meta["ray_nodes"] == 2 and local_meta["build"] == "local"
    assert ray_path.name == local_path.name
    for name in ("train-00000.bin", "val-00000.bin", "documents.json"):
        assert (ray_path / name).read_bytes() == (local_path / name).read_bytes(), name
    print(f"\ncorpus build, {ray_meta['splits']['train']['total']['stream_tokens']:,} train tokens: encode "
          f"{ray_meta['encode_tokens_per_s']:,} tokens/s on Ray Data over 2 nodes x 1 CPU "
          f"(phases {ray_meta['phases']}), {local_meta['encode_tokens_per_s']:,} in one process "
          f"(phases {local_meta['phases']})")
