"""Network helpers for every part (torch-free): the one `free_port`, and the environment of an
embedded Ray cluster bound to loopback (used by the sweep driver and by the corpus build on Ray Data)."""
from __future__ import annotations

import os
import secrets
import socket


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (the OS picks it). Another process may
    take it before the caller binds it: use it at once (a rendezvous, a test server)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


LOOPBACK = "127.0.0.1"


def local_cluster_env() -> dict[str, str]:
    """Environment of the embedded cluster (inherited by its raylet, GCS, agents and workers).

    Loopback only: Ray on Linux turns a `_node_ip_address` of 127.0.0.1 into the machine's
    external address (services.resolve_ip_for_localhost) unless RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER
    is off, its switch for "no multi-node cluster on this machine"; with it off the GCS, raylet,
    worker, dashboard-agent and runtime-env-agent servers all bind 127.0.0.1 (tests/test_exposure.py
    lists them). Token auth stays on, with a fresh random token per invocation passed in the
    environment (RAY_AUTH_TOKEN, read by Ray's AuthenticationTokenLoader) rather than written to
    ~/.ray/auth_token: nothing on the network reaches the ports, and a process on this machine
    without the token is refused (InvalidAuthToken; `ray status` from another shell too, which is
    the point). The sweep's own driver and workers inherit the token."""
    env = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "token"}
    if os.environ.get("RAY_AUTH_MODE") != "token" or not os.environ.get("RAY_AUTH_TOKEN"):
        env["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    return env
