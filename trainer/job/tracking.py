"""MLflow for one training job: find-or-create the run by config hash, batched logging, end status.

Which tags, params and metrics a trial run carries, and their names, is core/schema.py's (the one
definition writers and analysis/ share); this module only writes them. Beside them it marks each
experiment mlflow.experimentKind=custom_model_development (the MLflow 3 UI's "Machine learning"
kind, rather than GenAI).
Only rank 0 constructs a `Tracker`. Each evaluation's metrics go in one `log_batch` (one
`log_metric` costs ~8 ms on sqlite; a 1,000-point batch ~0.17 s), flushed at that evaluation so a
running run's curves are live.
"""
from __future__ import annotations

import sys
import time

from mlflow.entities import LifecycleStage, Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from core import schema as M

# MLflow 3's documented marker of an experiment's kind: this value is what the UI's own
# experiment-kind selector writes for "Machine learning" (mlflow/server/js, ExperimentKind enum).
# The 3.17 UI does not yet follow it (its view follows a browser-stored switch); trainer/tools/ui.py
# prints links with the query that does. Set anyway, so a UI that reads it opens the right view.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"


def ensure_experiment(client: MlflowClient, name: str) -> str:
    """Experiment id, creating it if needed (tolerating a concurrent creator), marked as a model
    training experiment for the UI (also an existing one that predates the mark)."""
    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            return client.create_experiment(name, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
        except Exception:                               # lost a creation race: read the winner's
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
    if EXPERIMENT_KIND_TAG not in exp.tags:             # never overrides a kind a person chose
        client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return exp.experiment_id


def find_run(client: MlflowClient, experiment_id: str, run_id: str):
    """The newest MLflow run tagged with this config hash, or None."""
    runs = client.search_runs([experiment_id], filter_string=M.tag_filter(M.TAG_RUN_ID, run_id),
                              order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0] if runs else None


class Tracker:
    def __init__(self, uri: str | None, experiment: str):
        self.uri = M.resolve_uri(uri)
        self.client = MlflowClient(self.uri)
        self.experiment_id = ensure_experiment(self.client, experiment)
        self.run_id: str | None = None
        self._buffer: list[Metric] = []
        self._last_step = -1                            # points at or below this are already stored
        self.log_seconds = 0.0                          # time spent talking to MLflow (bench/)
        self.notes: list[str] = []                      # what start() had to work around

    # --- run lifecycle --------------------------------------------------------------------------
    def existing(self, config_hash: str):
        return find_run(self.client, self.experiment_id, config_hash)

    def unusable(self, mlflow_id: str) -> str | None:
        """Why the run `mlflow_id` cannot be continued here (gone, deleted, another experiment),
        or None if it can."""
        try:
            run = self.client.get_run(mlflow_id)
        except MlflowException as exc:
            return f"not in the store {self.uri} ({exc.error_code})"
        if run.info.lifecycle_stage == LifecycleStage.DELETED:
            return "deleted"
        if run.info.experiment_id != self.experiment_id:
            return f"in another experiment (id {run.info.experiment_id})"
        return None

    def start(self, tags: dict[str, str], params: dict[str, str], resume_mlflow_id: str | None,
              run_name: str) -> str:
        """Continue `resume_mlflow_id`, else create the run. A saved id that can no longer be
        continued (store replaced, tracking URI changed, run deleted) is not fatal: warn, then
        find-or-create by the config hash (tags['dlm.run_id'])."""
        t0 = time.perf_counter()
        why = self.unusable(resume_mlflow_id) if resume_mlflow_id else None
        if why:
            found = self.existing(tags[M.TAG_RUN_ID])
            alt = found.info.run_id if found is not None and not self.unusable(found.info.run_id) else None
            note = (f"MLflow run {resume_mlflow_id} saved in the checkpoint is {why}; continuing in "
                    + (f"run {alt} (found by {M.TAG_RUN_ID})" if alt else "a new MLflow run"))
            print(f"warning: {note}", file=sys.stderr, flush=True)
            self.notes.append(note)
            resume_mlflow_id = alt
        if resume_mlflow_id:
            self.run_id = resume_mlflow_id
            self.client.update_run(self.run_id, status="RUNNING")
            if M.TAG_FAILURE in self.client.get_run(self.run_id).data.tags:
                self.client.delete_tag(self.run_id, M.TAG_FAILURE)
            history = self.client.get_metric_history(self.run_id, M.METRIC_LOSS)
            self._last_step = max((m.step for m in history), default=-1)
        else:
            run = self.client.create_run(self.experiment_id, tags=tags, run_name=run_name)
            self.run_id = run.info.run_id
            items = [Param(k, v[:6000]) for k, v in params.items()]
            for i in range(0, len(items), 100):                       # log_batch: <= 100 params
                self.client.log_batch(self.run_id, params=items[i:i + 100])
        self.log_seconds += time.perf_counter() - t0
        return self.run_id

    # --- metrics --------------------------------------------------------------------------------
    def log(self, step: int, metrics: dict[str, float]) -> None:
        """Buffer one evaluation point; points at or before what MLflow already holds are skipped
        (a resumed run recomputes them bit-identically, so nothing is lost by skipping)."""
        if step <= self._last_step:
            return
        ts = int(time.time() * 1000)
        self._buffer += [Metric(k, float(v), ts, step) for k, v in metrics.items()]
        self._last_step = step

    def flush(self) -> None:
        t0 = time.perf_counter()
        for i in range(0, len(self._buffer), 1000):
            self.client.log_batch(self.run_id, metrics=self._buffer[i:i + 1000])
        self._buffer.clear()
        self.log_seconds += time.perf_counter() - t0

    def set_tags(self, tags: dict[str, str], run_id: str | None = None) -> None:
        self.client.log_batch(run_id or self.run_id, tags=[RunTag(k, v[:5000]) for k, v in tags.items()])

    def supersede(self, old_id: str, reason: str) -> None:
        """Mark `old_id` (a run whose history this job abandons) FAILED, pointing at this run."""
        if self.unusable(old_id):
            return
        self.set_tags({M.TAG_FAILURE: f"superseded by MLflow run {self.run_id}: {reason}",
                       M.TAG_SUPERSEDED_BY: self.run_id}, old_id)
        self.client.set_terminated(old_id, status="FAILED")

    def abort(self, exc: BaseException) -> str:
        """Mark the run KILLED (an interrupt) or FAILED (anything else) with the reason; returns
        the status. Never raises: the caller re-raises `exc`, which must not be masked."""
        status = "KILLED" if isinstance(exc, (KeyboardInterrupt, SystemExit)) else "FAILED"
        reason = f"{type(exc).__name__}: {str(exc)[:4000]}".rstrip(": ")
        try:
            self.finish(status, reason)
        except Exception as err:                        # noqa: BLE001 - e.g. the store is down
            print(f"warning: could not mark MLflow run {self.run_id} {status} ({err})",
                  file=sys.stderr, flush=True)
        return status

    def finish(self, status: str = "FINISHED", reason: str | None = None,
               extra_tags: dict[str, str] | None = None) -> None:
        self.flush()
        t0 = time.perf_counter()
        tags = dict(extra_tags or {})
        if reason:
            tags[M.TAG_FAILURE] = reason
        if tags:
            self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        self.client.set_terminated(self.run_id, status=status)
        self.log_seconds += time.perf_counter() - t0
