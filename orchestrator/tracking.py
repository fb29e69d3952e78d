"""Driver-side MLflow: create the store and experiment once, one parent run per sweep, and find which
of a sweep's runs are already FINISHED (by config hash), all before any trial starts.

Creating a fresh sqlite store from several processes at once races in its schema migration
(STACK.md), so the driver touches the store first; trials then only open an existing one.
"""
from __future__ import annotations

import hashlib
import time
from typing import Iterable

from mlflow.entities import RunTag
from mlflow.tracking import MlflowClient

from core import schema as M
from core.schema import resolve_uri
from core.search import search_all
from trainer.config import RunConfig
from trainer.job.tracking import ensure_experiment


def sweep_id(configs: list[RunConfig]) -> str:
    """Same command (same set of runs) -> same id, so a re-run reuses its parent run."""
    ids = sorted(c.run_id() for c in configs)
    return hashlib.sha256(",".join(ids).encode()).hexdigest()[:16]


class SweepTracking:
    def __init__(self, tracking_uri: str | None, experiment: str):
        self.uri = resolve_uri(tracking_uri)
        self.client = MlflowClient(self.uri)
        self.experiment_id = ensure_experiment(self.client, experiment)

    def parent_run(self, name: str, sid: str, n_runs: int, preset: str,
                   run_ids: Iterable[str] = (), definitions: str = "project") -> str:
        """The parent run of this exact sweep (reused on re-runs), created if missing.

        ``run_ids``: the config hashes of every run of the study. They are recorded on the parent
        (``core.schema.MEMBERS_ARTIFACT``) so that the fit can select this study's runs, including the
        ones another study created and this one skips as finished, which mlflow.parentRunId
        would attribute to the other study alone. ``definitions``: whose definitions the runs
        use (sweeps/definitions.py; tag ``dlm.definitions``).
        """
        found = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"{M.role_filter(M.ROLE_PARENT)} and {M.tag_filter(M.TAG_SWEEP_ID, sid)}",
            order_by=["attributes.start_time DESC"], max_results=1)
        if found:
            run_id, tags = found[0].info.run_id, found[0].data.tags
            self.client.update_run(run_id, status="RUNNING")
        else:
            run = self.client.create_run(
                self.experiment_id, run_name=f"{name}-{preset}-{sid[:6]}",
                tags={M.TAG_ROLE: M.ROLE_PARENT, M.TAG_SWEEP: name, M.TAG_SWEEP_ID: sid,
                      M.TAG_PRESET: preset, M.TAG_N_RUNS: str(n_runs),
                      M.TAG_DEFINITIONS: definitions})
            run_id, tags = run.info.run_id, {}
        # A re-run keeps its parent's start_time; the fit's "latest study" reads this stamp too.
        self.client.set_tag(run_id, M.TAG_INVOKED, str(int(time.time() * 1000)))
        ids = sorted(set(run_ids))
        if ids and M.TAG_MEMBERS not in tags:   # same sweep id -> same set: written once
            self.client.log_dict(run_id, {"sweep_id": sid, "run_ids": ids}, M.MEMBERS_ARTIFACT)
            self.client.set_tag(run_id, M.TAG_MEMBERS, M.MEMBERS_ARTIFACT)   # after: it is whole
        return run_id

    def finished(self, configs: list[RunConfig]) -> set[str]:
        """Config hashes among `configs` whose MLflow run is FINISHED."""
        wanted = {c.run_id() for c in configs}
        runs = search_all(self.client, self.experiment_id,
                          M.role_filter(M.ROLE_TRIAL, M.STATUS_FINISHED))
        return {r.data.tags.get(M.TAG_RUN_ID) for r in runs} & wanted

    def close_parent(self, run_id: str, summary: dict[str, int], status: str,
                     stopped: set[str] = frozenset()) -> None:
        """End the parent run with `status` (FINISHED, FAILED or KILLED) and the summary counts as
        tags. `stopped`: config hashes of trials this invocation started that never reported an end;
        any of them still RUNNING once Ray is down was cut off (an interrupt): KILLED too."""
        self.client.log_batch(run_id, tags=[RunTag(f"{M.TAG_SUMMARY_PREFIX}{k}", str(v))
                                            for k, v in summary.items()])
        if stopped:
            for run in search_all(self.client, self.experiment_id, M.role_filter(M.ROLE_TRIAL, "RUNNING")):
                if run.data.tags.get(M.TAG_RUN_ID) in stopped:
                    self.client.set_terminated(run.info.run_id, status="KILLED")
        self.client.set_terminated(run_id, status=status)
