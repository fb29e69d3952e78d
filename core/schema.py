"""The MLflow schema: every name the writers (trainer job, orchestrator, sampling stage) and the
readers (analysis/, the UI) must agree on, defined once. Writers and readers import it; nothing else
in the packages spells a ``dlm.*`` name (tests/test_schema.py fails if one does).

Torch-, mlflow- and ray-free: the driver, the trainer, the sweeps and the analysis all import it.

Layout of a study in the tracking store
---------------------------------------
* One MLflow **experiment per sweep**; its name is the sweep name.
* One **parent run per study** (one sweep command: its set of runs, ``dlm.sweep_id``), tagged
  ``dlm.role=parent``, ``dlm.sweep``, ``dlm.sweep_id``, ``dlm.preset``, ``dlm.n_runs``,
  ``dlm.definitions`` (whose definitions the runs use: sweeps/definitions.py); a re-run of
  the same command reuses it and stamps ``dlm.invoked_ms``. Its member runs (the config hashes,
  ``dlm.run_id``, of every run of the study, including runs another study already finished) are the
  artifact ``dlm/members.json`` = {"sweep_id", "run_ids": [...]}, and ``dlm.members`` names that
  artifact once it is written (an artifact, not tags: a tag value holds <= 8000 characters, ~470
  ids, and a study can have thousands). On close: ``dlm.summary.<count>`` tags. The fit selects the
  latest study and attaches its fits and plots to that study's parent as artifacts.
* One **child run per training job**, tagged ``dlm.role=trial`` with ``mlflow.parentRunId`` set.

Trial tags
    ``dlm.family``       noise family: "masked", "uniform", "hybrid", "esolm", "autoregressive".
    ``dlm.knob``         float as str: the family's knob (hybrid: ``mixing_shift`` b in
                         [−1000, 1000]); "" for families without one. Runs logged before the
                         rename to hybrid have family "interpolating" and its knob p_u there.
    ``dlm.knob_label``   the knob as text, with its derived value (NoiseConfig.knob_label():
                         hybrid "b=-2 p_u=0.119", p_u = sigmoid(b) the uniform share of the
                         noise at log-SNR 0); "" for families without one.
    ``dlm.size``         name of the model on the size ladder.
    ``dlm.budget_flops`` float as str: the job's training-compute budget in FLOPs.
    ``dlm.sweep``        sweep name.
    ``dlm.run_id``       deterministic hash of the resolved config; the join key (a resumed job
                         keeps it, possibly under a new MLflow run).
    ``dlm.step_unit``    "GFLOP": every metric's ``step`` is cumulative training compute in GFLOP
                         (an integer), so all metrics of one evaluation share one step.
    ``dlm.world_size``   training processes of the job.
    ``dlm.ray_node``     the Ray node that ran it (set by the orchestrator).
    ``dlm.failure``      reason, on FAILED and KILLED runs (type and message of the error).
    ``dlm.resume``       what the job did on (re)start: fresh, resumed at step s from a tag,
                         checkpoints that did not load, a stale MLflow id it replaced.
    ``dlm.superseded_by`` on a FAILED run whose checkpoints did not load: the MLflow run that
                         restarted the same config from step 0 (analysis keeps the FINISHED one).
    ``dlm.final_val_nelbo``, ``dlm.weights`` on FINISHED runs: the last evaluation and the path of
                         the exported fp32 weights (out_dir/<run_id>/model.pt).

Trial params
    The resolved config flattened with dots (``model.n_layer``, ``train.batch_size``, ...), plus
    ``n_params_backbone`` (N: per-token non-embedding parameters, the same for every family at one
    ladder size; what the laws are fitted on), ``n_params_time_cond`` (time-conditioning layers,
    run once per sequence), ``time_cond_resolved`` (the option the model used, the family default
    resolved), ``n_params_nonembed`` (backbone + time conditioning), ``n_params_total``,
    ``flops_per_token`` (training FLOPs per token under the run's ``train.flop_convention``, the
    one its budget and its ``flops`` metric use), ``flops_per_token.<name>`` for every convention
    of core.flops.CONVENTIONS, ``tokens_per_step``, ``steps``.

Trial metrics (each logged at step = cumulative GFLOP at that evaluation)
    ``val_nelbo``  validation NELBO in nats/token: the quantity the laws are fitted to.
    ``train_loss`` the training loss as optimised (NoiseConfig.train_loss), averaged over the steps
                   since the previous evaluation, in its paper's normalisation, per loss position:
                   'elbo' the NELBO integrand (at t_min = 0 an estimate of val_nelbo's quantity);
                   'ce' (masked: 2602.15014's low_var) cross-entropy summed over the masked
                   positions / *all* positions (~ half the mean over masked positions);
                   autoregressive: next-token NLL; 'gidd' (2512.10858) the integrand × α(1−α)/|α'|.
                   Only 'elbo' and autoregressive are on val_nelbo's scale: compare runs on that.
    ``tokens`` cumulative training tokens; ``flops`` cumulative
    training FLOPs (float) under the run's convention; ``flops.<name>`` the same under every
    convention of core.flops.CONVENTIONS (so a study refits under any, ``fit_laws --flops``);
    ``wall_time_s``; ``tokens_per_s``; ``mfu``; ``epoch``; ``lr``.
    The final evaluation of a run is its point with the largest step; the run's MLflow status
    (FINISHED / FAILED / RUNNING) says whether that point is a finished run's end.

The sampling stage (in the study's own experiment)
    One run tagged ``dlm.role=sampling_parent`` per invocation (``dlm.judge_run_id``,
    ``dlm.judge``); under it one run per trained run, ``dlm.role=sampling``, tagged
    ``dlm.source_run`` (MLflow id of the trained run), the trained run's ``dlm.run_id``,
    ``dlm.family``, ``dlm.knob``, ``dlm.knob_label``, ``dlm.size``, ``dlm.budget_flops``, and
    ``dlm.sampler``, ``dlm.judge_run_id``, ``dlm.judge`` (text), ``dlm.val_nelbo`` (the trained
    run's final validation NELBO), ``dlm.ref_entropy`` (mean per-sequence unigram entropy of real validation
    windows of the same length, nats) and ``dlm.sampling_key`` (hash of the settings: a re-run
    skips what it has). Params ``seed``, ``n_samples``, ``seq_len``, ``temperature``. Metrics at
    ``step`` = the sampler's denoising steps (autoregressive: seq_len): ``tokens_per_s``,
    ``latency_s`` (per sequence), ``gen_ppl``, ``entropy``, ``nfe``.
"""
from __future__ import annotations

import os
from core.paths import REPO_ROOT

# --- where the store is ---------------------------------------------------------------------------


def default_tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{REPO_ROOT / 'mlflow.db'}"


def resolve_uri(uri: str | None) -> str:
    """The tracking store every part uses: `uri`, else $MLFLOW_TRACKING_URI, else <repo>/mlflow.db."""
    return uri or default_tracking_uri()


# --- the step unit --------------------------------------------------------------------------------
# Every trial metric's MLflow step is cumulative training compute in this unit: an integer (1e24
# FLOPs is 1e15 GFLOP, exact in int64 and below the 2^53 the web UI can show).
STEP_UNIT = "GFLOP"
STEP_FLOPS = 1e9                                   # FLOPs per step unit
STEP_UNIT_FLOPS = {STEP_UNIT: STEP_FLOPS}          # reader side: a run's dlm.step_unit -> FLOPs


def flop_step(flops: float) -> int:
    """The metric step of an evaluation after `flops` training FLOPs."""
    return int(round(flops / STEP_FLOPS))


# --- roles (tag TAG_ROLE) -------------------------------------------------------------------------
TAG_ROLE = "dlm.role"
ROLE_PARENT = "parent"
ROLE_TRIAL = "trial"
ROLE_SAMPLING = "sampling"
ROLE_SAMPLING_PARENT = "sampling_parent"
ROLE_EVALUATION = "evaluation"                     # downstream tasks of one trained run (orchestrator/evaluation.py)
ROLE_EVALUATION_PARENT = "evaluation_parent"

TAG_PARENT = "mlflow.parentRunId"                  # MLflow's own nesting tag
STATUS_FINISHED = "FINISHED"                       # MLflow run status of a completed run

# --- trial tags -----------------------------------------------------------------------------------
TAG_FAMILY = "dlm.family"
TAG_KNOB = "dlm.knob"
TAG_KNOB_LABEL = "dlm.knob_label"
TAG_SIZE = "dlm.size"
TAG_BUDGET = "dlm.budget_flops"
TAG_SWEEP = "dlm.sweep"
TAG_RUN_ID = "dlm.run_id"
TAG_STEP_UNIT = "dlm.step_unit"
TAG_WORLD_SIZE = "dlm.world_size"
TAG_RAY_NODE = "dlm.ray_node"
TAG_FAILURE = "dlm.failure"
TAG_RESUME = "dlm.resume"
TAG_SUPERSEDED_BY = "dlm.superseded_by"
TAG_FINAL_VAL_NELBO = "dlm.final_val_nelbo"
TAG_WEIGHTS = "dlm.weights"
# trajectory studies (one run, many budgets: sweeps/trajectory.py, trainer/job/trajectory.py)
TAG_TRAJECTORY = "dlm.trajectory"                  # TRAJ_TRUNK | TRAJ_BRANCH; absent = one run per point
TRAJ_TRUNK = "trunk"                               # constant-LR run read off at several budgets
TRAJ_BRANCH = "branch"                             # decay branch forked from a trunk's checkpoint
TAG_TRUNK = "dlm.trunk"                            # the trunk's dlm.run_id (on trunks and branches)
TAG_READOFF = "dlm.readoff"                        # the study's read-off: READOFF_CONSTANT | READOFF_BRANCHES
READOFF_CONSTANT = "constant"                      # points = trunk evaluations x a measured cooldown factor
READOFF_BRANCHES = "branches"                      # points = decay branches' final evaluations

# --- parent (study) tags --------------------------------------------------------------------------
TAG_SWEEP_ID = "dlm.sweep_id"
TAG_PRESET = "dlm.preset"
TAG_DEFINITIONS = "dlm.definitions"                # whose definitions: sweeps/definitions.py
TAG_N_RUNS = "dlm.n_runs"
TAG_INVOKED = "dlm.invoked_ms"
TAG_MEMBERS = "dlm.members"
MEMBERS_ARTIFACT = "dlm/members.json"
TAG_SUMMARY_PREFIX = "dlm.summary."                # + a count's name: finished, failed, ...

# --- sampling tags --------------------------------------------------------------------------------
TAG_SOURCE_RUN = "dlm.source_run"
TAG_SAMPLER = "dlm.sampler"
TAG_JUDGE_RUN_ID = "dlm.judge_run_id"
TAG_JUDGE = "dlm.judge"
TAG_VAL_NELBO = "dlm.val_nelbo"
TAG_REF_ENTROPY = "dlm.ref_entropy"
TAG_SAMPLING_KEY = "dlm.sampling_key"

# --- evaluation tags (also TAG_SOURCE_RUN, TAG_VAL_NELBO and the trial tags copied from the run) --
TAG_EVAL_KEY = "dlm.eval_key"                      # hash of the evaluation settings (skip when equal)
TAG_EVAL_TASKS = "dlm.eval_tasks"                  # comma-separated task names evaluated

# --- trial params (beside the flattened config) ---------------------------------------------------
PARAM_N_BACKBONE = "n_params_backbone"            # N of the laws (core.flops.backbone_params)
PARAM_N_TIME_COND = "n_params_time_cond"           # core.flops.time_cond_params
PARAM_TIME_COND = "time_cond_resolved"             # core.ladder.TIME_CONDS key the model used
PARAM_N_NONEMBED = "n_params_nonembed"             # backbone + time conditioning
PARAM_N_TOTAL = "n_params_total"
PARAM_FLOPS_PER_TOKEN = "flops_per_token"           # under the run's train.flop_convention
PARAM_FLOP_CONVENTION = "train.flop_convention"    # a flattened config field (RunConfig.flat())
PARAM_TOKENS_PER_STEP = "tokens_per_step"
PARAM_STEPS = "steps"
PARAM_OUT_DIR = "io.out_dir"                       # a flattened config field (RunConfig.flat())
PARAM_TRAIN_SEED = "train.seed"                    # a flattened config field: repeats of one point differ in it

# --- sampling params ------------------------------------------------------------------------------
PARAM_SEED = "seed"
PARAM_N_SAMPLES = "n_samples"
PARAM_SEQ_LEN = "seq_len"
PARAM_TEMPERATURE = "temperature"
PARAM_TOP_P = "top_p"                              # nucleus mass (trainer.sampling.samplers.Draw)
PARAM_GREEDY_FINAL = "greedy_final"                # the last denoising step takes the argmax
PARAM_SAMPLER = "sampler"                          # the sampler's name (Sampler.name; its label: TAG_SAMPLER)

# --- trial metrics --------------------------------------------------------------------------------
METRIC_LOSS = "val_nelbo"
METRIC_TRAIN_LOSS = "train_loss"
METRIC_TOKENS = "tokens"
METRIC_FLOPS = "flops"                             # under the run's train.flop_convention
METRIC_WALL_TIME = "wall_time_s"
METRIC_TOKENS_PER_S = "tokens_per_s"               # trials: trained tokens/s; sampling: generated
METRIC_MFU = "mfu"
METRIC_EPOCH = "epoch"
METRIC_LR = "lr"
METRIC_READOFF = "readoff_budget"                  # trunks: logged at each read-off evaluation = its budget

# --- sampling metrics (step = denoising steps) ----------------------------------------------------
METRIC_LATENCY_S = "latency_s"
METRIC_GEN_PPL = "gen_ppl"
METRIC_ENTROPY = "entropy"
METRIC_NFE = "nfe"
SAMPLING_METRICS = (METRIC_TOKENS_PER_S, METRIC_LATENCY_S, METRIC_GEN_PPL, METRIC_ENTROPY, METRIC_NFE)

# --- evaluation metrics and params (one set per task: eval_metric(task, EVAL_*)) -------------------
EVAL_ACC = "acc"                                   # accuracy (multiple choice: argmax of the log-likelihood)
EVAL_ACC_NORM = "acc_norm"                         # multiple choice: argmax of log-likelihood per character
EVAL_CHANCE = "chance"                             # accuracy of a uniform guess (mean 1/choices; 0 for generation)
EVAL_NLL_TOKEN = "nll_per_token"                   # LAMBADA: NLL (AR) / NELBO (diffusion) of the last word per token
EVAL_ACC_DRAW_SD = "acc_draw_sd"                   # diffusion: sd of acc over single-t-draw estimators
EVAL_LL_SE = "ll_se"                               # diffusion: mean standard error of a choice's log-likelihood (nats)
EVAL_SECONDS = "seconds"                           # wall time of the task in the job
EVAL_N = "n"                                       # param: items scored
EVAL_VERSION = "version"                           # param: the task data's version (oe-eval task_hash)
PARAM_EVAL_SEED = "eval.seed"                      # seeds the t draws and the samplers
PARAM_EVAL_SUBSET_SEED = "eval.subset_seed"        # picks the item subset (the same for every run)
PARAM_EVAL_T_DRAWS = "eval.t_draws"                # diffusion: t draws per choice
PARAM_EVAL_STEPS = "eval.steps"                    # diffusion: sampler steps for generation tasks
PARAM_EVAL_GEN_TOKENS = "eval.gen_tokens"          # GSM8K: tokens generated per answer




def sampler_setting_param(setting: str) -> str:
    """Sampling param: one setting of the sampler (a field of trainer.sampling.remasking.MaskedRemdm, ...)."""
    return f"{PARAM_SAMPLER}.{setting}"


def eval_metric(task: str, what: str) -> str:
    """Evaluation metric (or param, for EVAL_N / EVAL_VERSION) `what` of one task: 'eval.piqa.acc'."""
    return f"eval.{task}.{what}"


def flops_per_token_param(convention: str) -> str:
    """Trial param: training FLOPs per token under `convention` (a core.flops.CONVENTIONS key)."""
    return f"{PARAM_FLOPS_PER_TOKEN}.{convention}"


def flops_metric(convention: str) -> str:
    """Trial metric: cumulative training FLOPs under `convention` at each evaluation."""
    return f"{METRIC_FLOPS}.{convention}"


# --- search filters -------------------------------------------------------------------------------
def tag_filter(tag: str, value: str) -> str:
    """MLflow search clause `tag = value` (backquoted: the names have dots)."""
    return f"tags.`{tag}` = '{value}'"


def role_filter(role: str, status: str | None = None) -> str:
    """Search filter for the runs of one role, optionally of one MLflow status."""
    clause = tag_filter(TAG_ROLE, role)
    return clause if status is None else f"{clause} and attributes.status = '{status}'"


def group_label(family: str, knob: float) -> str:
    """Fit-group name (what analysis/ fits one law to, and fits.json's group key, which
    sweeps/from_law.py reads back): knob values of one family are different curves."""
    if knob != knob:  # NaN: family without a knob
        return family
    return f"{family}@{knob:g}"
