"""The embedded Ray cluster is reachable from this machine only, and only with its token.

A fresh process (Ray must read the loopback settings before it is imported) starts the cluster the
way a sweep does (`runner.connect(None, 2, False)`), runs two tasks so that worker processes exist,
and reports every listening TCP socket of its process tree; then clients without the token and with
a wrong one are refused by the GCS, and one with the sweep's token is let in."""
import ipaddress
import json
import subprocess
import sys

import psutil
import pytest

from tests.conftest import REPO, clean_env

PROBE = r"""
import json, os, subprocess, sys
from orchestrator import runner
from tests.test_exposure import listening
ray = runner.connect(None, 2, False)

@ray.remote
def square(x):
    return x * x

assert ray.get([square.remote(i) for i in range(2)]) == [0, 1]
gcs = ray.get_runtime_context().gcs_address
client = ("import sys; from ray._raylet import GcsClient\n"
          "try:\n    GcsClient(address=sys.argv[1]).internal_kv_keys(b'', None, timeout=5); print('ALLOWED')\n"
          "except Exception as e:\n    print('REFUSED', type(e).__name__, e)")
access = {}
for label, extra in (("none", {"RAY_AUTH_MODE": "disabled"}),
                     ("wrong", {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 64}),
                     ("right", {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": os.environ.get("RAY_AUTH_TOKEN", "")})):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")} | extra
    out = subprocess.run([sys.executable, "-c", client, gcs], env=env, capture_output=True,
                         text=True, timeout=60)
    access[label] = (out.stdout + out.stderr).strip()
print("PROBE " + json.dumps({"sockets": listening(os.getpid()), "access": access}))
ray.shutdown()
"""


def listening(root_pid: int) -> list[list]:
    """[process name, address, port] of every listening TCP socket of `root_pid` and its descendants."""
    root = psutil.Process(root_pid)
    procs = {p.pid: p for p in root.children(recursive=True)} | {root.pid: root}
    found = set()
    for conn in psutil.net_connections(kind="inet"):
        if conn.status == psutil.CONN_LISTEN and conn.pid in procs:
            try:
                name = procs[conn.pid].name()
            except psutil.NoSuchProcess:
                name = "?"
            found.add((name, conn.laddr.ip, conn.laddr.port))
    return sorted(list(f) for f in found)


def is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    mapped = getattr(ip, "ipv4_mapped", None)             # '::ffff:127.0.0.1' from dual-stack sockets
    return (mapped or ip).is_loopback


def test_is_loopback_reads_mapped_and_wildcard_addresses():
    assert is_loopback("127.0.0.1") and is_loopback("::ffff:127.0.0.1") and is_loopback("::1")
    assert not any(is_loopback(a) for a in ("0.0.0.0", "::", "192.0.2.2", "::ffff:10.0.0.1"))


# 11 s on the AVX2 machine alone (Ray start-up), ~45 s under load
def test_embedded_cluster_listens_on_loopback_only_and_requires_its_token():
    proc = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, env=clean_env(), capture_output=True,
                          text=True, timeout=240, start_new_session=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    report = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("PROBE "))[6:])
    sockets, access = report["sockets"], report["access"]
    print("\nlistening:\n" + "\n".join(f"  {n:<22} {a}:{p}" for n, a, p in sockets))
    names = {n for n, _, _ in sockets}
    assert {"gcs_server", "raylet"} <= names and len(sockets) >= 8, sockets     # the tree was seen
    exposed = [s for s in sockets if not is_loopback(s[1])]
    assert not exposed, f"non-loopback listeners: {exposed}"
    assert access["right"] == "ALLOWED", access
    for label in ("none", "wrong"):
        assert access[label].startswith("REFUSED") and "InvalidAuthToken" in access[label], access
