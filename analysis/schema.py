"""The contract between the training job (writer) and the analysis (reader).

MLflow layout written by the training job
-----------------------------------------
* One MLflow **experiment per sweep**; its name is the sweep name.
* One **parent run per study** (one sweep command: its set of runs, ``dlm.sweep_id``), tagged
  ``dlm.role=parent``, ``dlm.sweep``, ``dlm.sweep_id``, ``dlm.preset``; a re-run of the same command
  reuses it and stamps ``dlm.invoked_ms``. Its member runs (the config hashes, ``dlm.run_id``, of
  every run of the study, including runs another study already finished) are the artifact
  ``dlm/members.json`` = {"sweep_id", "run_ids": [...]}, and ``dlm.members`` names that artifact
  once it is written (an artifact, not tags: a tag value holds <= 8000 characters, ~470 ids, and a
  study can have thousands). The fit selects the latest study and attaches its fits and plots to
  that study's parent as artifacts.
* One **child run per training job**, tagged ``dlm.role=trial`` with ``mlflow.parentRunId`` set.

Child run tags
    ``dlm.family``       noise family: "masked", "uniform", "interpolating", "autoregressive".
    ``dlm.knob``         float as str: the interpolating family's ``uniform_share`` in [0, 1];
                         "" for the other families.
    ``dlm.size``         name of the model on the size ladder.
    ``dlm.budget_flops`` float as str: the job's training-compute budget in FLOPs.
    ``dlm.sweep``        sweep name.
    ``dlm.run_id``       deterministic hash of the resolved config; the join key (a resumed job
                         keeps it, possibly under a new MLflow run).
    ``dlm.step_unit``    "GFLOP": every metric's ``step`` is cumulative training compute in GFLOP
                         (an integer), so all metrics of one evaluation share one step.
    ``dlm.failure``      reason, on FAILED and KILLED runs (type and message of the error).
    ``dlm.resume``       what the job did on (re)start: fresh, resumed at step s from a tag,
                         checkpoints that did not load, a stale MLflow id it replaced.
    ``dlm.superseded_by`` on a FAILED run whose checkpoints did not load: the MLflow run that
                         restarted the same config from step 0 (analysis keeps the FINISHED one).

Child run params
    The resolved config flattened with dots (``model.n_layer``, ``train.batch_size``, ...), plus
    ``n_params_nonembed``, ``n_params_total``, ``flops_per_token``, ``tokens_per_step``.

Child run metrics (each logged at step = cumulative GFLOP at that evaluation)
    ``val_nelbo``  validation NELBO in nats/token: the quantity the laws are fitted to.
    ``train_loss`` training loss; ``tokens`` cumulative training tokens; ``flops`` cumulative
    training FLOPs (float); ``wall_time_s``; ``tokens_per_s``; ``mfu``; ``epoch`` (data-bound runs).
    The final evaluation of a run is its point with the largest step; the run's MLflow status
    (FINISHED / FAILED / RUNNING) says whether that point is a finished run's end.

Tables the analysis works on
----------------------------
``RUN_COLUMNS`` (from :func:`analysis.load.load_runs`): one row per (run, evaluation point).
``FINAL_COLUMNS`` (from :func:`analysis.load.final_points` or ``--from-table``): one row per run,
its final evaluation, with the names the fits use (N, D, C, loss).
"""

from __future__ import annotations

# --- MLflow names (writer side) ------------------------------------------------------------------
TAG_ROLE = "dlm.role"
ROLE_PARENT = "parent"
ROLE_TRIAL = "trial"
TAG_FAMILY = "dlm.family"
TAG_KNOB = "dlm.knob"
TAG_SIZE = "dlm.size"
TAG_BUDGET = "dlm.budget_flops"
TAG_SWEEP = "dlm.sweep"
TAG_RUN_ID = "dlm.run_id"
TAG_STEP_UNIT = "dlm.step_unit"
TAG_FAILURE = "dlm.failure"
TAG_SWEEP_ID = "dlm.sweep_id"
TAG_PRESET = "dlm.preset"
TAG_INVOKED = "dlm.invoked_ms"
TAG_MEMBERS = "dlm.members"
MEMBERS_ARTIFACT = "dlm/members.json"
TAG_PARENT = "mlflow.parentRunId"
STEP_UNIT_FLOPS = {"GFLOP": 1e9}  # step unit -> FLOPs per step unit

PARAM_N_NONEMBED = "n_params_nonembed"
PARAM_N_TOTAL = "n_params_total"
PARAM_FLOPS_PER_TOKEN = "flops_per_token"

METRIC_LOSS = "val_nelbo"
METRIC_TRAIN_LOSS = "train_loss"
METRIC_TOKENS = "tokens"
METRIC_FLOPS = "flops"
LOADED_METRICS = (METRIC_LOSS, METRIC_TRAIN_LOSS, METRIC_TOKENS, METRIC_FLOPS)

STATUS_FINISHED = "FINISHED"

# --- analysis tables (reader side) ---------------------------------------------------------------
RUN_COLUMNS: dict[str, str] = {
    "run_id": "dlm.run_id tag: config hash, stable across resumes",
    "mlflow_run_id": "MLflow's run id",
    "sweep": "dlm.sweep tag",
    "family": "dlm.family tag",
    "knob": "dlm.knob as float; NaN for families without a knob",
    "size": "dlm.size tag (ladder name)",
    "budget": "dlm.budget_flops as float (FLOPs)",
    "step": "metric step (GFLOP, integer)",
    "n_nonembed": "non-embedding parameters",
    "n_total": "all parameters",
    "tokens": "cumulative training tokens D at this evaluation",
    "flops": "cumulative training FLOPs C at this evaluation",
    "val_nelbo": "validation NELBO, nats/token",
    "train_loss": "training loss at the same step (NaN if not logged there)",
    "is_final": "True on the run's evaluation with the largest step",
    "status": "MLflow run status: FINISHED / FAILED / RUNNING / ...",
}

FINAL_COLUMNS: dict[str, str] = {
    "run_id": "one id per run",
    "group": "what a law is fitted to: the family, or 'family@knob' when a knob is set",
    "family": "noise family",
    "knob": "float or NaN",
    "N": "parameters (total by default: C counts all FLOPs, as in Chinchilla)",
    "D": "training tokens",
    "C": "training FLOPs",
    "loss": "final validation loss, nats/token",
    "budget": "isoFLOP budget the run belongs to (FLOPs); NaN -> clustered from C",
}

# --from-table: family, N, loss, and at least one of D / C (the other follows from C = 6·N·D,
# the Kaplan/Chinchilla convention, since a foreign table carries no FLOP accounting of ours).
TABLE_REQUIRED = ("family", "N", "loss")
TABLE_ONE_OF = ("D", "C")
TABLE_OPTIONAL = ("knob", "budget", "run_id")
FLOPS_PER_PARAM_TOKEN = 6.0


class AnalysisError(ValueError):
    """Bad input to the analysis: the message names the experiment, family or column at fault."""


def group_label(family: str, knob: float) -> str:
    """Fit-group name: knob values of one family are different curves, each gets its own law."""
    if knob != knob:  # NaN: family without a knob
        return family
    return f"{family}@{knob:g}"
