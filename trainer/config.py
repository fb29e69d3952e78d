"""`RunConfig`: one point of a scaling grid (size × family × FLOP budget × batch, LR, seed, data).

Frozen, keyword-only, validated in `__post_init__` with messages that name the field. The run id is a
hash of the fields that change the science (not of paths, tracking URI, checkpoint cadence or the
engine layout), so the same config always maps to the same run, whichever machine or sweep
invocation starts it, and a re-run resumes it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any

from trainer.data.loader import DataConfig
from core.flops import CONVENTIONS
from core.ladder import COND_DIM, LADDER, MLP_HIDDEN, TIME_CONDS
from trainer.families.registry import FAMILIES, NoiseConfig

SCHEDULES = ("cosine", "wsd", "constant")
READOFFS = ("constant", "branches")


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    budget_flops: float = 1e11
    """Training compute (FLOPs, convention `flop_convention`); sets the number of steps."""
    batch_size: int = 8
    """Global batch in sequences per optimizer step (split over data-parallel ranks)."""
    seq_len: int = 128
    """Tokens per sequence."""
    lr: float = 3e-3
    """Peak learning rate (AdamW)."""
    min_lr_ratio: float = 0.1
    """Final LR as a fraction of the peak (cosine floor / WSD decay target)."""
    warmup_frac: float = 0.05
    """Fraction of steps of linear warmup."""
    decay_frac: float = 0.2
    """WSD only: fraction of steps in the final linear decay."""
    schedule: str = "cosine"
    """'cosine' (warmup + cosine to min_lr_ratio), 'wsd' (warmup–stable–decay) or 'constant'
    (warmup, then the peak LR to the end: a trajectory study's trunk)."""
    warmup_steps: int | None = None
    """Set: this many warmup steps instead of warmup_frac of the run's own (a trunk and its decay
    branches share one warmup, fixed by the sweep)."""
    readoffs: tuple[float, ...] = ()
    """Trajectory trunk: budgets (FLOPs, <= budget_flops) at whose step the run also evaluates and
    logs core.schema.METRIC_READOFF = the budget; each is a point of the study."""
    forks: tuple[float, ...] = ()
    """Trajectory trunk: budgets (each in readoffs or = budget_flops) whose decay branch forks from
    this run: it keeps a checkpoint at each branch's fork step (trainer.plan.branch_config)."""
    trunk_id: str | None = None
    """Decay branch: the run id of the trunk it forks from (at step steps − decay_frac × steps,
    from out_dir/<trunk_id>/forks/); trained from step 0 when that checkpoint is missing."""
    readoff: str | None = None
    """The study's read-off (trunks and branches): 'constant' (points = trunk evaluations × a
    measured cooldown factor) or 'branches' (points = decay branches); None = one run per point."""
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    """Global gradient-norm clip (0 = off)."""
    seed: int = 0
    """Seeds the init, the batch order and the training noise."""
    flop_convention: str = "matmul"
    """FLOP counting convention, a key of core.flops.CONVENTIONS ('matmul', 'sahoo2026', ...)."""
    data_pool_tokens: int | None = None
    """Data-bound mode: draw windows from only the first this-many training tokens (repeated epochs)."""
    evals: int = 8
    """Evaluations spread evenly over the budget (plus one at step 0 and the final one)."""
    eval_seqs: int = 64
    """Validation windows (fixed slice at the start of the validation split, same for every run)."""
    eval_t_repeats: int = 2
    """Independent (t, z_t) draws per validation window (fixed seed, identical for every run)."""

    def __post_init__(self):
        check_types(type(self), vars(self), "train.")
        if self.seed < 0:
            raise ValueError(f"train.seed must be a non-negative integer, got {self.seed}")
        _positive(self, "train", ("budget_flops", "batch_size", "seq_len", "lr", "evals", "eval_seqs",
                                  "eval_t_repeats"))
        if not math.isfinite(self.budget_flops):
            raise ValueError(f"train.budget_flops must be finite, got {self.budget_flops}")
        for name in ("min_lr_ratio", "warmup_frac", "decay_frac"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"train.{name} must be in [0, 1], got {getattr(self, name)}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"train.schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        self._check_trajectory()
        if self.flop_convention not in CONVENTIONS:
            raise ValueError(f"train.flop_convention must be one of {sorted(CONVENTIONS)}, "
                             f"got {self.flop_convention!r}")
        for name in ("weight_decay", "grad_clip"):
            if getattr(self, name) < 0:
                raise ValueError(f"train.{name} must be >= 0, got {getattr(self, name)}")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ValueError("train.beta1 and train.beta2 must be in [0, 1)")
        if self.data_pool_tokens is not None and self.data_pool_tokens <= self.seq_len:
            raise ValueError(f"train.data_pool_tokens must exceed seq_len ({self.seq_len}), "
                             f"got {self.data_pool_tokens}")


    def _check_trajectory(self) -> None:
        if self.warmup_steps is not None and self.warmup_steps < 1:
            raise ValueError(f"train.warmup_steps must be a positive int or null, got {self.warmup_steps}")
        if self.readoff is not None and self.readoff not in READOFFS:
            raise ValueError(f"train.readoff must be one of {READOFFS} or null, got {self.readoff!r}")
        for name in ("readoffs", "forks"):
            values = tuple(getattr(self, name))
            object.__setattr__(self, name, values)
            for b in values:
                if isinstance(b, bool) or not isinstance(b, (int, float)) or not (
                        0 < b <= self.budget_flops and math.isfinite(b)):
                    raise ValueError(f"train.{name}: {b!r} must be a FLOP budget in "
                                     f"(0, train.budget_flops = {self.budget_flops:.4g}]")
            if len(set(values)) != len(values):
                raise ValueError(f"train.{name} must not repeat: {values}")
        stray = [b for b in self.forks if b not in self.readoffs and b != self.budget_flops]
        if stray:
            raise ValueError(f"train.forks: {stray} are not read-off budgets (train.readoffs)")
        if (self.readoffs or self.forks) and self.schedule != "constant":
            raise ValueError("train.readoffs / train.forks: a trunk trains at train.schedule = "
                             f"'constant' (got {self.schedule!r}): read-offs of a decaying LR are "
                             "not the loss of a run to that budget")
        if self.forks and self.warmup_steps is None:
            raise ValueError("train.forks: a trunk's branches share its warmup, so it is set in "
                             "steps: train.warmup_steps must be set")
        if self.trunk_id is not None and self.schedule != "wsd":
            raise ValueError(f"train.trunk_id: a decay branch trains at train.schedule = 'wsd' "
                             f"(got {self.schedule!r})")


ADAMW_IMPLS = ("fused", "foreach", "loop")
# engine.compile='auto' compiles a job of at least this many steps: bench/bench_tokens.py measured
# the compile repaid after a median ~2,400 steps (860-8,400) at widths 8-64 (2-core AMD EPYC,
# 1 thread, batch 8 x 128, BPE 512), where one step saves 0.3-3 ms against a 1-20 s compile.
COMPILE_MIN_STEPS = 2000


@dataclass(frozen=True, kw_only=True)
class EngineConfig:
    """How the job runs; not part of the run id (the same science on 1 or 8 ranks)."""
    zero_stage: int = 3
    """DeepSpeed ZeRO stage (0-3)."""
    device: str = "auto"
    """'cpu', 'cuda' or 'auto' (cuda if available)."""
    precision: str = "auto"
    """'fp32', 'bf16' or 'auto' (bf16 on GPU; fp32 on CPU, where bf16 is ~10x slower here)."""
    threads: int = 1
    """torch intra-op threads per process on CPU."""
    persistence_threshold: int = 100_000
    """ZeRO-3 stage3_param_persistence_threshold (elements): smaller params stay resident instead of
    being gathered every forward; the per-module gather hooks dominate tiny models (see bench/)."""
    prefetch_bucket_size: int = 5_000_000
    """ZeRO-3 stage3_prefetch_bucket_size (elements)."""
    zero3_leaf_blocks: bool = True
    """ZeRO-3: make each transformer Block a DeepSpeed leaf module (zero_optimization.leaf_module),
    so its parameters are fetched and released as one unit: one hook pair and one all-gather per
    block instead of one per Linear/RMSNorm (9 modules per block). Partitioning at rest is unchanged.
    Measured on 2 shared CPU threads (bench/bench_train.py, three runs), ZeRO-3's step-time
    overhead over plain PyTorch drops from +42-44% to +25-33% at L2-d64 and from +12-26% to +7-15%
    at L6-d256. Off = DeepSpeed's default per-module fetching. Crossover: trainer/job/engine.py."""
    compile: str = "auto"
    """torch.compile (inductor) of the training loss, model included (trainer/job/engine.py
    compiled_loss): 'on', 'off', or 'auto' = on for a run of at least COMPILE_MIN_STEPS
    steps, where the per-step saving repays the compile (measured: bench/bench_tokens.py). ZeRO
    stage 0 only. Evaluation runs eagerly either way. The compile is paid once per job and model
    shape (seconds; from inductor's on-disk cache after the first time on a machine)."""
    adamw: str = "fused"
    """torch AdamW implementation: 'fused' (one kernel per parameter group), 'foreach' or 'loop'
    (per-parameter ops, the implementation before #16). The same update up to float rounding;
    measured: clip + optimizer step 2.0-2.7x faster fused on 1 CPU thread (docs/throughput.md)."""
    lean: bool = True
    """ZeRO-0 in fp32: clip gradients with torch's foreach clip_grad_norm_ between engine.backward
    and engine.step instead of DeepSpeed's per-parameter clip (the same global norm: ZeRO-0
    gradients are whole and, after the all-reduce, identical on every rank), and on one rank skip
    DeepSpeed's gradient all-reduce (nothing to reduce). Measured: bench/bench_tokens.py."""
    workers: int = 1
    """Data-parallel DeepSpeed ranks per trial (orchestrator: Ray Train workers, each `threads` CPU
    threads or one GPU). The global batch is split over them, so train.batch_size and
    train.eval_seqs must be divisible by it; results match one rank up to float summation order."""

    def compiles(self, steps: int) -> bool:
        """Whether a job of `steps` optimizer steps compiles its training loss (`compile`)."""
        if self.compile != "auto":
            return self.compile == "on"
        return self.zero_stage == 0 and steps >= COMPILE_MIN_STEPS

    def __post_init__(self):
        check_types(type(self), vars(self), "engine.")
        if self.zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"engine.zero_stage must be 0-3, got {self.zero_stage}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"engine.device must be auto|cpu|cuda, got {self.device!r}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"engine.precision must be auto|fp32|bf16, got {self.precision!r}")
        _positive(self, "engine", ("threads",))
        if self.compile not in ("auto", "on", "off"):
            raise ValueError(f"engine.compile must be auto|on|off, got {self.compile!r}")
        if self.compile == "on" and self.zero_stage != 0:
            raise ValueError(f"engine.compile='on' needs engine.zero_stage=0 (got {self.zero_stage}): "
                             f"ZeRO-1/2/3 hook into the forward that a compiled loss bypasses")
        if self.adamw not in ADAMW_IMPLS:
            raise ValueError(f"engine.adamw must be one of {'|'.join(ADAMW_IMPLS)}, got {self.adamw!r}")
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 1:
            raise ValueError(f"engine.workers must be a positive integer, got {self.workers!r}")


@dataclass(frozen=True, kw_only=True)
class IOConfig:
    """Where results go; not part of the run id."""
    tracking_uri: str | None = None
    """MLflow tracking URI; None -> $MLFLOW_TRACKING_URI, else sqlite:///<repo>/mlflow.db."""
    experiment: str = "adhoc"
    """MLflow experiment (one per sweep)."""
    out_dir: str = "runs"
    """Checkpoint root; a run's checkpoints live in out_dir/<run_id>/ (shared storage on clusters)."""
    ckpt_every_min: float = 10.0
    """Save a checkpoint at least this often (minutes of training wall time), and at the end."""
    keep_ckpts: int = 2
    """Checkpoints kept per run (older ones deleted; >= 2 so a truncated latest can fall back)."""
    parent_run_id: str | None = None
    """MLflow parent (sweep) run id, set by the orchestrator."""

    def __post_init__(self):
        check_types(type(self), vars(self), "io.")
        if self.ckpt_every_min <= 0:
            raise ValueError(f"io.ckpt_every_min must be > 0, got {self.ckpt_every_min}")
        if self.keep_ckpts < 1:
            raise ValueError(f"io.keep_ckpts must be >= 1, got {self.keep_ckpts}")
        if not self.experiment:
            raise ValueError("io.experiment must be a non-empty name")


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    size: str = "L2-d64"
    """Ladder size name (core.ladder.LADDER)."""
    mlp: str = "gelu"
    """MLP kind ('gelu' or 'swiglu')."""
    time_cond: str | None = None
    """Time conditioning, a key of core.ladder.TIME_CONDS ('none', 'adaln', 'adaln_full'); None ->
    the family's default (FamilySpec.time_cond_default: 'adaln' for uniform, else 'none')."""
    cond_dim: int = COND_DIM
    """Condition width of 'adaln' (features; 2602.15014's cond_dim, 128); unused otherwise."""
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    io: IOConfig = field(default_factory=IOConfig)
    sweep: str = "adhoc"
    """Sweep (study) this run belongs to; a tag, and part of the run id."""

    def __post_init__(self):
        check_types(type(self), vars(self), "")
        if self.size not in LADDER:
            raise ValueError(f"size: unknown ladder size {self.size!r}; known: {', '.join(LADDER)}")
        if self.mlp not in MLP_HIDDEN:
            raise ValueError(f"mlp must be one of {sorted(MLP_HIDDEN)}, got {self.mlp!r}")
        if self.time_cond is not None and self.time_cond not in TIME_CONDS:
            raise ValueError(f"time_cond must be one of {sorted(TIME_CONDS)} or null (the family's "
                             f"default), got {self.time_cond!r}")
        if FAMILIES[self.noise.family].causal and self.resolved_time_cond() != "none":
            raise ValueError(f"time_cond: the {self.noise.family} family has no diffusion time")
        if self.cond_dim < 1:
            raise ValueError(f"cond_dim must be a positive integer, got {self.cond_dim}")
        for name in ("batch_size", "eval_seqs"):                 # each rank takes an equal share
            if getattr(self.train, name) % self.engine.workers:
                raise ValueError(f"train.{name} ({getattr(self.train, name)}) must be divisible by "
                                 f"engine.workers ({self.engine.workers})")

    def resolved_time_cond(self) -> str:
        """The time-conditioning option this run's model uses (its own, else the family's)."""
        if self.time_cond is not None:
            return self.time_cond
        return FAMILIES[self.noise.family].time_cond_default

    def use_time_cond(self) -> bool:
        """Whether the model reads t (the resolved option is not 'none')."""
        return self.resolved_time_cond() != "none"

    # --- identity -----------------------------------------------------------------------------
    def science(self) -> dict:
        """The fields that determine the result: everything but engine, io and the cache path."""
        d = self.to_dict()
        del d["engine"], d["io"]
        d["data"] = self.data.science()
        # What the model does, not how the default was reached: a family whose default changes
        # gets new run ids instead of resuming (or skipping as finished) the old model's runs.
        d["time_cond"] = self.resolved_time_cond()
        # Fields added with trajectory studies leave a run that does not use them its old id
        # (a store written before them still resumes and skips its finished runs).
        for name in _LATER_TRAIN_FIELDS:
            if d["train"][name] == _TRAIN_DEFAULTS[name]:
                del d["train"][name]
        return d

    def run_id(self) -> str:
        blob = json.dumps(self.science(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    # --- (de)serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        return _build(cls, d, "")

    def with_overrides(self, assignments: list[str]) -> "RunConfig":
        """Apply `a.b=value` overrides (value parsed as JSON, else taken as a string)."""
        d = self.to_dict()
        for item in assignments:
            if "=" not in item:
                raise ValueError(f"override {item!r} must look like field.path=value")
            path, raw = item.split("=", 1)
            try:
                value = json.loads(raw)
            except json.JSONDecodeError:
                value = raw
            node, keys = d, path.split(".")
            for k in keys[:-1]:
                if not isinstance(node.get(k), dict):
                    raise ValueError(f"override {path!r}: {k!r} is not a config section")
                node = node[k]
            if keys[-1] not in node:
                raise ValueError(f"override {path!r}: unknown field {keys[-1]!r}")
            node[keys[-1]] = value
        return RunConfig.from_dict(d)

    def flat(self) -> dict[str, str]:
        """Dotted key -> string value, for MLflow params."""
        out: dict[str, str] = {}

        def walk(prefix, node):
            for k, v in node.items():
                if isinstance(v, dict):
                    walk(f"{prefix}{k}.", v)
                else:
                    out[f"{prefix}{k}"] = json.dumps(v) if isinstance(v, (list, tuple)) else str(v)
        walk("", self.to_dict())
        return out


_LATER_TRAIN_FIELDS = ("warmup_steps", "readoffs", "forks", "trunk_id", "readoff")
_TRAIN_DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrainConfig)}

_SECTIONS = {"noise": NoiseConfig, "data": DataConfig, "train": TrainConfig, "engine": EngineConfig,
             "io": IOConfig}


def _build(cls, d: dict, prefix: str):
    if not isinstance(d, dict):
        raise ValueError(f"{prefix or 'config'} must be a JSON object, got {type(d).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ValueError(f"unknown field(s) {', '.join(prefix + u for u in unknown)}")
    kwargs: dict[str, Any] = {}
    for k, v in d.items():
        if cls is RunConfig and k in _SECTIONS:
            kwargs[k] = _build(_SECTIONS[k], v, f"{k}.")
        elif isinstance(v, list):
            kwargs[k] = tuple(v)                     # JSON arrays -> the tuples the configs use
        else:
            kwargs[k] = v
    check_types(cls, kwargs, prefix)                 # also the sections defined elsewhere
    return cls(**kwargs)


_SCALARS = {"float": (int, float), "int": (int,), "str": (str,), "bool": (bool,)}


def check_types(cls, values: dict, prefix: str) -> None:
    """Each scalar field's value against its annotation (float, int, str, bool, optionally
    `| None`), so that `--set train.weight_decay=abc` says which field wants what instead of a
    TypeError from the first comparison; float fields must also be finite (a NaN compares False
    with everything, e.g. `io.ckpt_every_min=NaN` would silently never checkpoint). An int is a
    valid float; a bool is neither. Sections and tuples are left to their own checks."""
    for f in dataclasses.fields(cls):
        if f.name not in values:
            continue
        kinds = [k.strip() for k in (f.type.__name__ if isinstance(f.type, type) else str(f.type)).split("|")]
        nullable = "None" in kinds
        kinds = [k for k in kinds if k != "None"]
        if len(kinds) != 1 or kinds[0] not in _SCALARS:
            continue
        kind, value = kinds[0], values[f.name]
        if value is None and nullable:
            continue
        if not isinstance(value, _SCALARS[kind]) or (isinstance(value, bool) and kind != "bool"):
            raise ValueError(f"{prefix}{f.name} must be {'an' if kind == 'int' else 'a'} {kind}"
                             f"{' or null' if nullable else ''}, got {value!r}")
        if kind == "float" and not math.isfinite(value):
            raise ValueError(f"{prefix}{f.name} must be finite, got {value!r}")


def _positive(obj, section: str, names) -> None:
    for name in names:
        v = getattr(obj, name)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
            raise ValueError(f"{section}.{name} must be a positive number, got {v!r}")
