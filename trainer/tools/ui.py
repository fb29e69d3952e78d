"""`make ui`: the MLflow web UI and REST API on 127.0.0.1, against the project's tracking store.

    python -m trainer.tools.ui [--port 5000] [--uri URI] [--dry-run]

The store is --uri, else $MLFLOW_TRACKING_URI, else sqlite:///<repo>/mlflow.db (core.schema).
Lean settings from STACK.md: `mlflow server --workers 1` with MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false
is 2 processes (~410 MiB, ready in ~10 s) where `mlflow ui` is ~15 (~2 GiB). Bound to 127.0.0.1 only.
Artifacts uploaded through the server go to an `mlartifacts/` folder beside the sqlite file.

The process execs into the server, so its PID (and process group) is the server's: stop it with
Ctrl-C, or by that PID. What to look at: Experiments -> a sweep -> a run: parameters (the resolved
config), tags (dlm.family, dlm.size, dlm.budget_flops, ...), and Model metrics, where the x axis
'Step' of val_nelbo is cumulative training compute in GFLOP (tag dlm.step_unit), so that chart is
loss against compute.

MLflow 3.17's UI has a global GenAI / Model training switch (top left) that decides the view of
every experiment; it starts on GenAI (an experiment page then reads "Overview", "Evaluation runs",
...) and remembers a click in the browser's local storage. The experiment tag
mlflow.experimentKind (set by trainer.job.tracking) does not override it in this build, a URL query
`?workflowType=machine_learning` does: so the links printed at start open each experiment in the
training view (Runs, Model metrics).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from core.schema import resolve_uri

TRAINING_VIEW = "workflowType=machine_learning"    # the UI's own query for the Model training view

HOST = "127.0.0.1"
DEFAULT_PORT = 5000


def server_command(uri: str, port: int) -> list[str]:
    """argv of the MLflow server for a sqlite (or other SQLAlchemy) store."""
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri,
           "--host", HOST, "--port", str(port), "--workers", "1"]
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        cmd += ["--artifacts-destination", str(db.parent / "mlartifacts")]
    return cmd


def training_links(uri: str, port: int) -> list[str]:
    """'name: url' lines opening each experiment of an existing store in the training view (none
    for a store that does not exist yet: listing it would create it)."""
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        return []
    from mlflow.tracking import MlflowClient
    base = f"http://{HOST}:{port}/#/experiments"
    return [f"{e.name}: {base}/{e.experiment_id}?{TRAINING_VIEW}"
            for e in MlflowClient(uri).search_experiments() if e.name != "Default"]


def server_env() -> dict[str, str]:
    return {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m trainer.tools.ui", description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, default=int(os.environ.get("UI_PORT", DEFAULT_PORT)))
    ap.add_argument("--uri", help="tracking store (default: $MLFLOW_TRACKING_URI or the repo's sqlite)")
    ap.add_argument("--dry-run", action="store_true", help="print the server command and exit")
    args = ap.parse_args(argv)
    uri = resolve_uri(args.uri)
    if uri.startswith(("http://", "https://")):
        print(f"the tracking store {uri} is already a server: open it in a browser")
        return 0
    cmd = server_command(uri, args.port)
    if args.dry_run:
        print("MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false " + " ".join(cmd))
        return 0
    print(f"MLflow UI for {uri} at http://{HOST}:{args.port}/#/experiments?{TRAINING_VIEW} "
          f"(Ctrl-C stops it). Experiments in the training view:", flush=True)
    for line in training_links(uri, args.port) or ["(none yet)"]:
        print(f"  {line}", flush=True)
    os.execve(sys.executable, cmd, server_env())
    return 0                                            # not reached


if __name__ == "__main__":
    raise SystemExit(main())
