"""The driver's Ray session: connecting (the embedded cluster bound to loopback with token auth,
or a cluster named by RAY_ADDRESS) and turning SIGINT / SIGTERM into an exception that the sweep
counts and records instead of Tune's quiet stop.
"""
from __future__ import annotations

import logging
import os
import signal
from contextlib import contextmanager

from core.net import LOOPBACK, local_cluster_env  # noqa: F401 (re-exported)
from core.paths import REPO_ROOT

REPO = REPO_ROOT
QUIET_ENV = {
    "DS_ACCELERATOR": "cpu",               # overridden per trial on GPU placements
    "PYTHONWARNINGS": "ignore",
    "RAY_DEDUP_LOGS": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


def connect(address: str | None, num_cpus: int | None, verbose: bool):
    """Embedded local Ray (address 'local') unless RAY_ADDRESS / --address names a cluster."""
    if not verbose:
        # Tune's boxed console tables are noise here: progress comes from the Progress callback
        # (results live in MLflow; Tune's own result files stay under out_dir/ray_results).
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Interrupts are ours (`interruptible`): Tune's handler would end fit() as if it had
    # completed and print advice (Tuner.restore) that is wrong for this tool.
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    if not address:
        os.environ.update(local_cluster_env())          # before Ray reads its constants (import)
    import ray
    if not verbose:
        for name in ("mlflow", "ray", "ray.tune", "alembic"):
            logging.getLogger(name).setLevel(logging.WARNING)
    env = dict(QUIET_ENV, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    kwargs = dict(include_dashboard=False, log_to_driver=verbose, runtime_env={"env_vars": env},
                  logging_level=logging.INFO if verbose else logging.WARNING)
    if address:
        ray.init(address=address, **kwargs)
        return ray
    ray.init(address="local", num_cpus=num_cpus, _node_ip_address=LOOPBACK, **kwargs)
    node_ip = ray.util.get_node_ip_address()
    if node_ip != LOOPBACK:                 # e.g. Ray imported before local_cluster_env() was set
        ray.shutdown()
        raise RuntimeError(f"the embedded Ray node took the address {node_ip}, not {LOOPBACK}: its "
                           "ports would be reachable from the network; start it from a fresh process")
    return ray


class Interrupted(KeyboardInterrupt):
    """SIGINT / SIGTERM in the driver. A KeyboardInterrupt, so that Tune's `except Exception`
    cleanup paths let it through to `run_trials`, which counts what never ran. Catch
    KeyboardInterrupt, not this class: Ray may re-raise it as a plain one (`signal_name`)."""
    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


_received: list[int] = []      # the signals the active `interruptible` block caught


def signal_name(exc: KeyboardInterrupt) -> str:
    """The signal behind an interrupt. Ray's C++ waits (ray.wait inside Tune's loop) turn a pending
    signal into a plain KeyboardInterrupt of their own, so the handler's record is the truth."""
    if _received:
        return signal.Signals(_received[0]).name
    return str(exc) if isinstance(exc, Interrupted) else "SIGINT"


@contextmanager
def interruptible():
    """Turn SIGINT and SIGTERM into `Interrupted` for the block; Tune's own SIGINT handler (which
    ends `fit()` quietly and advises `Tuner.restore`) is switched off in `connect`. After the first
    signal further ones are ignored until the block ends, so the cleanup that records the
    interruption (shutting Ray down, marking runs KILLED) is not itself cut short."""
    def handler(signum, frame):
        hold_signals()
        _received.append(signum)
        raise Interrupted(signum)
    _received.clear()
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def hold_signals() -> None:
    """Ignore SIGINT / SIGTERM from here to the end of the `interruptible` block."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)


