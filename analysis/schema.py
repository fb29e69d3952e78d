"""The analysis side of the contract with the training job: the tables the analysis works on.

What the training job writes to MLflow (the layout of a study, every tag, param and metric name, the
step unit) is defined once in :mod:`core.schema`, which the writers import too; this module only adds
the reader's own things: the documented DataFrame columns, the error type and the fit-group label.

Tables the analysis works on
----------------------------
``RUN_COLUMNS`` (from :func:`analysis.load.load_runs`): one row per (run, evaluation point).
``FINAL_COLUMNS`` (from :func:`analysis.load.final_points` or ``--from-table``): one row per point,
with the names the fits use (N, D, C, loss): a classic run's final evaluation, a decay branch's
final evaluation, or a constant-LR trunk's read-off at one budget (analysis/trajectory.py).
"""

from __future__ import annotations

from core import schema as M
from core.schema import group_label  # noqa: F401  (re-exported: the fit-group name)
from core.flops import CONVENTIONS

# Parameter counts a fit can use as N (fit_laws --n-column). The default is the backbone: the
# per-token non-embedding parameters, equal for every family at one size, so a family's extra
# once-per-sequence time-conditioning layers never move its N*(C) (issue 13, item 1).
N_COLUMNS = ("n_backbone", "n_nonembed", "n_total")
DEFAULT_N_COLUMN = "n_backbone"

# The trial metrics load_runs reads (the others stay in MLflow).
LOADED_METRICS = (M.METRIC_LOSS, M.METRIC_TRAIN_LOSS, M.METRIC_TOKENS, M.METRIC_FLOPS,
                  M.METRIC_READOFF)

# --- analysis tables (reader side) ---------------------------------------------------------------
RUN_COLUMNS: dict[str, str] = {
    "run_id": f"{M.TAG_RUN_ID} tag: config hash, stable across resumes",
    "mlflow_run_id": "MLflow's run id",
    "sweep": f"{M.TAG_SWEEP} tag",
    "family": f"{M.TAG_FAMILY} tag",
    "knob": f"{M.TAG_KNOB} as float; NaN for families without a knob",
    "size": f"{M.TAG_SIZE} tag (ladder name)",
    "budget": f"{M.TAG_BUDGET} as float (FLOPs)",
    "step": f"metric step ({M.STEP_UNIT}, integer)",
    "n_backbone": "per-token non-embedding backbone parameters (blocks + final norm): N, the same "
                  "for every family at one ladder size; logged, or recomputed from size and mlp",
    "n_time_cond": "time-conditioning parameters (once per sequence; NaN before they were logged)",
    "n_nonembed": "non-embedding parameters incl. time conditioning (n_backbone + n_time_cond)",
    "n_total": "all parameters (incl. embedding, head and time conditioning)",
    "tokens": "cumulative training tokens D at this evaluation",
    "flops": "cumulative training FLOPs C at this evaluation, under the run's convention",
    "flop_convention": "the run's train.flop_convention (what 'flops' and its budget count)",
    **{f"flops_{name}": f"cumulative training FLOPs under core.flops convention {name!r} "
                        "(NaN when the run neither logged nor can recompute it)"
       for name in CONVENTIONS},
    "val_nelbo": "validation NELBO, nats/token",
    "train_loss": "training loss at the same step (NaN if not logged there)",
    "is_final": "True on the run's evaluation with the largest step",
    "status": "MLflow run status: FINISHED / FAILED / RUNNING / ...",
    # trajectory studies (one run, many budgets: analysis/trajectory.py); classic runs: "", NaN
    "trajectory": f"{M.TAG_TRAJECTORY} tag: {M.TRAJ_TRUNK!r}, {M.TRAJ_BRANCH!r}, or '' (one run "
                  "per point)",
    "trunk_tag": f"{M.TAG_TRUNK} tag: the trunk's run_id (trunks: their own); '' for classic runs",
    "readoff": f"{M.TAG_READOFF} tag: the study's read-off mode, {M.READOFF_CONSTANT!r} or "
               f"{M.READOFF_BRANCHES!r}; '' for classic runs",
    "readoff_budget": f"metric {M.METRIC_READOFF} at this step: the budget (FLOPs) a trunk reads "
                      "off this evaluation for; NaN elsewhere",
    "seed": f"param {M.PARAM_TRAIN_SEED} as float (NaN if not logged): repeats of a point differ "
            "in it",
    # hyper-parameter and data-constrained studies (analysis/hp_laws.py, data_constrained.py)
    "batch_tokens": f"tokens per optimizer step (param {M.PARAM_TOKENS_PER_STEP}; else "
                    "train.batch_size x train.seq_len)",
    "lr": "param train.lr: the peak learning rate",
    "pool_tokens": "param train.data_pool_tokens: unique training tokens U (NaN: the whole corpus)",
}

FINAL_COLUMNS: dict[str, str] = {
    "run_id": "one id per run",
    "group": "what a law is fitted to: the family, or 'family@knob' when a knob is set",
    "family": "noise family",
    "knob": "float or NaN",
    "N": "parameters: the backbone count by default (fit_laws --n-column picks another)",
    "D": "training tokens",
    "C": "training FLOPs, under one convention (fit_laws --flops; default the runs' own)",
    "loss": "final validation loss, nats/token",
    "budget": "isoFLOP budget the run belongs to (FLOPs); NaN -> clustered from C",
    "trunk": "the bootstrap's resampling unit: the run_id of the run the point was read off "
             "(classic runs and table rows: their own run_id; a trunk's read-offs: the trunk; a "
             "branch: its trunk). Points of one trunk are correlated and are drawn together",
    "loss_constant": "the loss as evaluated, before the cooldown factor (a constant-LR trunk's "
                     "read-off; = loss for every other point): refit with fit_laws --no-cooldown",
    "cooldown": "the cooldown factor applied, loss = loss_constant x cooldown (1.0 unless a "
                "constant-mode read-off: analysis/trajectory.py)",
    "seed": f"{M.PARAM_TRAIN_SEED} of the run (NaN if unknown): repeats give the noise floor",
    "batch_tokens": "tokens per optimizer step (NaN if unknown): the hparams laws' B",
    "lr": "peak learning rate (NaN if unknown): the hparams laws' eta",
    "U": "unique training tokens, repeated in epochs (NaN: not data-bound): data_constrained's U",
}

# Columns of FINAL_COLUMNS a table may lack (older runs frames, foreign tables): NaN there.
FINAL_OPTIONAL = ("seed", "batch_tokens", "lr", "U")

# --from-table: family, N, loss, and at least one of D / C (the other follows from C = 6·N·D,
# the Kaplan/Chinchilla convention, since a foreign table carries no FLOP accounting of ours).
TABLE_REQUIRED = ("family", "N", "loss")
TABLE_ONE_OF = ("D", "C")
TABLE_OPTIONAL = ("knob", "budget", "run_id", "trunk", "seed", "batch_tokens", "lr", "U")
FLOPS_PER_PARAM_TOKEN = 6.0


class AnalysisError(ValueError):
    """Bad input to the analysis: the message names the experiment, family or column at fault."""
