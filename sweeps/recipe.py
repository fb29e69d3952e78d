"""Recipes: every opinionated choice of the sweeps, one frozen `Recipe` per preset (RECIPE).

A recipe says *which* runs a study makes and how each trains: FLOP budgets, how many ladder sizes
per budget around the compute-optimal one, families and hybrid knob values, batch,
sequence length, LR (per width), warmup, evaluations, engine settings, vocabulary. Nothing here
counts FLOPs or builds a RunConfig: FLOP arithmetic is core/flops.py (MECHANICS), picking the
sizes around f* and building the configs is sweeps/grid.py (MECHANICS). Every value of a preset
below is a recipe choice; `# RECIPE:` comments give the reason in one line where it is not
obvious, and docs/recipe_calibration.md the measurements and arithmetic behind them. The
dataclasses (Shape, Grid, Search, Sweep, Recipe) only validate; the measured throughput the
presets' time limits are checked with is sweeps/calibration.py's (measurement, not choice).

Presets: LAPTOP (the default: 2 CPU cores, <= 60 min for compute_bound), QUICK (<= 15 min,
autoregressive + masked), CLUSTER (GPUs, budgets 1e17-1e20), and two on LAPTOP's scale under a
paper's definitions (sweeps/definitions.py): VONRUETTE2025 (GIDD's five noise types) and SAHOO2026
(AR, MDLM, Duo). A recipe's sweeps are records
(`Sweep`: name, grid, optional own run shape, optional search); a new sweep is one more record
(every preset has the same sweeps, in the same order: tests/test_sweeps.py checks it).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from trainer.config import EngineConfig
from core.ladder import LADDER
from sweeps.definitions import PROJECT, SAHOO2026, VONRUETTE2025, Definitions
from trainer.families.registry import FAMILIES

ALL_FAMILIES = tuple(FAMILIES)   # every registered family, in registry order (the baseline first)


@dataclass(frozen=True, kw_only=True)
class Shape:
    """How one run trains, apart from its size, family and budget."""
    vocab_size: int
    """BPE vocabulary (tokens, incl. end-of-text). 512: every family learns at ~1e12 FLOPs here."""
    seq_len: int
    """Tokens per sequence."""
    batch_size: int
    """Sequences per optimizer step."""
    lr: float
    """Peak AdamW LR at widths <= lr_ref_width."""
    lr_ref_width: int
    """Above this d_model the LR falls as 1/width (muP-style: Adam's update size per weight is
    ~lr, and a width-d layer sums d of them), so wide models do not need their own tuned LR."""
    warmup_frac: float
    """Fraction of steps of linear warmup."""
    evals: int
    """Evaluations spread over the budget (plus step 0 and the end)."""
    eval_seqs: int
    """Validation windows per evaluation."""
    eval_t_repeats: int
    """(t, z_t) draws per validation window."""
    min_steps: int
    """Every run of the preset's default grids trains at least this many steps (tests check it):
    STACK.md, runs with < 200 steps lose badly and push the isoFLOP minimum to the grid's edge."""
    engine: EngineConfig
    """Device, precision, ZeRO stage, threads per trial."""

    def __post_init__(self):
        for name in ("vocab_size", "seq_len", "batch_size", "lr_ref_width", "evals", "eval_seqs",
                     "eval_t_repeats", "min_steps"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"shape.{name} must be a positive int, got {v!r}")
        if not self.lr > 0:
            raise ValueError(f"shape.lr must be > 0, got {self.lr!r}")

    def lr_for(self, size: str) -> float:
        """Peak LR of a ladder size: `lr` up to `lr_ref_width`, then lr x lr_ref_width / d_model."""
        return self.lr * min(1.0, self.lr_ref_width / LADDER[size].d_model)


@dataclass(frozen=True, kw_only=True)
class Grid:
    """Which runs one sweep makes: budgets x (family, knob) x sizes, in that nesting order."""
    budgets: tuple[float, ...]
    """Training FLOP budgets (under the recipe's Definitions.flop_convention), in run order."""
    families: tuple[str, ...]
    """Noise families (trainer.families.registry.FAMILIES), in run order."""
    knobs: tuple[float, ...] = (0.0,)
    """Values of the knob (FamilySpec.knob) of each family that has one, one run per value: the
    hybrid family's mixing shift b (−1000 = masked noise, 0 = half uniform at log-SNR 0, 1000 =
    uniform)."""
    sizes_per_budget: int = 4
    """Ladder sizes per budget, centred on the compute-optimal FLOPs/token f*: k // 2 below it,
    the rest above (shifted inwards at the ends of the ladder)."""
    family_sizes_per_budget: tuple[tuple[str, int], ...] = ()
    """(family, k) pairs: that family's curves get k sizes instead of `sizes_per_budget` (a family
    whose measured minimum is flat or noisy needs a wider curve to show it)."""
    sizes: tuple[str, ...] = ()
    """Non-empty: exactly these sizes at every budget, instead of centring on f*."""
    pool_tokens: int | None = None
    """Data-bound grids: train on only the first this-many training tokens, repeated in epochs."""
    tokens_per_param: tuple[tuple[str, float], ...] = ()
    """(family, D/N) pairs: that family's sizes are centred on the compute-optimal size of this
    tokens-per-parameter ratio instead of the recipe's (core.flops.compute_optimal_flops_per_token).
    Chinchilla's 20 is an autoregressive rule; where a family's isoFLOP minimum sits at a preset's
    scale is a measurement (LAPTOP_TOKENS_PER_PARAM)."""

    readoff: str | None = None
    """None: one run per point (each its own cosine schedule). 'constant' | 'branches': one
    trajectory trunk per (family, knob, size) serves all its budgets (sweeps/trajectory.py)."""
    seeds: int = 1
    """Trajectory studies: K > 1 repeats one trunk per (family, knob) with K − 1 other seeds."""

    def ratio_for(self, family: str, default: float) -> float:
        """Tokens per parameter the family's sizes are centred on (the recipe's `default` if unset)."""
        return dict(self.tokens_per_param).get(family, default)

    def k_for(self, family: str) -> int:
        """Sizes per budget of the family's curves."""
        return dict(self.family_sizes_per_budget).get(family, self.sizes_per_budget)

    def _per_family(self, name: str, valid, what: str, cast=lambda v: v) -> None:
        """Normalise a (family, value) pairs field to a tuple; ValueError naming the field, an
        unknown family or a bad value."""
        pairs = tuple((str(f), cast(v)) for f, v in dict(getattr(self, name)).items())
        object.__setattr__(self, name, pairs)
        for f, v in pairs:
            if f not in FAMILIES:
                raise ValueError(f"{name}: family {f!r} is unknown; known: {', '.join(sorted(FAMILIES))}")
            if not valid(v):
                raise ValueError(f"{name}: {v!r} for {f!r} must be {what}")

    def __post_init__(self):
        object.__setattr__(self, "budgets", tuple(float(b) for b in self.budgets))
        self._per_family("tokens_per_param", lambda x: x > 0 and math.isfinite(x),
                         "a positive finite number", cast=float)
        self._per_family("family_sizes_per_budget",
                         lambda k: isinstance(k, int) and not isinstance(k, bool) and k >= 2,
                         "an int >= 2 (sizes on both sides of f*)")
        for name in ("families", "knobs", "sizes"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if not self.budgets:
            raise ValueError("budgets: at least one FLOP budget is needed")
        for b in self.budgets:
            if not (b > 0 and math.isfinite(b)):
                raise ValueError(f"budgets: {b!r} is not a positive finite number of FLOPs")
        if not self.families:
            raise ValueError("families: at least one family is needed")
        for f in self.families:
            if f not in FAMILIES:
                raise ValueError(f"family {f!r} is unknown; known: {', '.join(sorted(FAMILIES))}")
        for s in self.sizes:
            if s not in LADDER:
                raise ValueError(f"size {s!r} is not in the ladder; known: {', '.join(LADDER)}")
        # each value against the range of every knob it sets (of any family's, if none here has one)
        ranges = ([FAMILIES[f].knob for f in self.families if FAMILIES[f].knob]
                  or [spec.knob for spec in FAMILIES.values() if spec.knob])
        for k in self.knobs:
            for r in ranges:
                if not r.accepts(k):
                    raise ValueError(f"knobs: {k!r} is outside noise.{r.field}'s range "
                                     f"[{r.lo:g}, {r.hi:g}]")
        if not self.knobs:
            raise ValueError("knobs: at least one knob value is needed")
        for name in ("budgets", "families", "knobs", "sizes"):
            values = getattr(self, name)
            if len(set(values)) != len(values):
                raise ValueError(f"{name} must not repeat: {values}")
        if not self.sizes and self.sizes_per_budget < 2:
            raise ValueError("sizes_per_budget must be >= 2 to put sizes on both sides of f*")
        if self.readoff not in (None, "constant", "branches"):
            raise ValueError(f"readoff must be 'constant', 'branches' or None, got {self.readoff!r}")
        if isinstance(self.seeds, bool) or not isinstance(self.seeds, int) or self.seeds < 1:
            raise ValueError(f"seeds must be a positive int, got {self.seeds!r}")
        if self.seeds > 1 and self.readoff is None:
            raise ValueError("seeds: repeats with other seeds are a trajectory study's (set readoff)")
        if self.pool_tokens is not None and self.pool_tokens < 1:
            raise ValueError(f"pool_tokens must be positive, got {self.pool_tokens!r}")


@dataclass(frozen=True, kw_only=True)
class Search:
    """An LR x batch search (Optuna through Ray Tune) around each base config of a sweep."""
    lr: tuple[float, float]
    """Log-uniform range of the peak LR."""
    batch_sizes: tuple[int, ...]
    """Batch sizes (sequences) to choose from; the budget fixes the steps of each."""
    num_samples: int
    """Trials per base config (size x budget x family)."""
    metric: str = "val_nelbo"
    mode: str = "min"


@dataclass(frozen=True, kw_only=True)
class Sweep:
    """One sweep of a recipe: its runs (grid), how they train, an optional search around them."""
    name: str
    """The sweep's name: RunConfig.sweep and the MLflow experiment of its runs."""
    grid: Grid
    shape: Shape | None = None
    """How its runs train; None = the recipe's shape."""
    search: Search | None = None
    """Set: the grid's runs are base configs whose points an optimiser proposes
    (catalog.SearchSpace)."""

    def __post_init__(self):
        if not self.name:
            raise ValueError("sweep name must be non-empty")


@dataclass(frozen=True, kw_only=True)
class Recipe:
    name: str
    shape: Shape
    tokens_per_param: float = 20.0
    """RECIPE: Chinchilla's D = 20 N, applied to all training FLOPs (f* = 6 sqrt(C / 120))."""
    sweeps: tuple[Sweep, ...]
    """The preset's sweeps, in the order `sweeps.SWEEPS` lists them."""
    definitions: Definitions = PROJECT
    """Whose FLOP convention, training losses and time conditioning the runs use."""

    def __post_init__(self):
        object.__setattr__(self, "sweeps", tuple(self.sweeps))
        names = [s.name for s in self.sweeps]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"recipe {self.name!r}: sweeps must be non-empty and distinct: "
                             f"{names}")

    def sweep(self, name: str) -> Sweep:
        """The named sweep; ValueError naming an unknown one."""
        for s in self.sweeps:
            if s.name == name:
                return s
        known = ", ".join(s.name for s in self.sweeps)
        raise ValueError(f"sweep {name!r} is unknown; known: {known}")

    def shape_of(self, name: str) -> Shape:
        """How the runs of sweep `name` train: its own shape, else the recipe's."""
        return self.sweep(name).shape or self.shape

    def with_sweeps(self, *sweeps: Sweep, **changes) -> "Recipe":
        """This recipe with `changes` to its fields and these sweeps replacing its sweeps of the
        same name (in place; a new name is appended)."""
        new = {s.name: s for s in sweeps}
        kept = tuple(new.pop(s.name, s) for s in self.sweeps)
        return dataclasses.replace(self, sweeps=kept + tuple(new.values()), **changes)


# ------------------------------------------------------------------------------------------------
# LAPTOP: 2 CPU cores, two one-thread trials at a time.
# ------------------------------------------------------------------------------------------------
CPU_ENGINE = EngineConfig(device="cpu", precision="fp32", threads=1,  # RECIPE: 2 slots x 1 thread
                          zero_stage=0)  # RECIPE: 1 rank per trial; ZeRO-3 costs 1.43x (see docs/)

LAPTOP_SHAPE = Shape(
    vocab_size=512,            # RECIPE: 2048 barely lets diffusion learn at laptop budgets (STACK)
    seq_len=128,               # RECIPE
    batch_size=8,              # RECIPE: 8 x 128 was cheaper per token and better per FLOP (STACK)
    lr=3e-3,                   # RECIPE: what tests/test_learning.py trains every family with
    lr_ref_width=128,          # RECIPE: constant LR over the laptop widths
    warmup_frac=0.05,          # RECIPE
    evals=8, eval_seqs=64, eval_t_repeats=2,   # RECIPE: ~1-5% of a run's time
    min_steps=300,             # RECIPE (STACK)
    engine=CPU_ENGINE,
)

SMOKE_SHAPE = dataclasses.replace(   # RECIPE: seconds per run (tests, end-to-end checks)
    LAPTOP_SHAPE, seq_len=64, evals=4, eval_seqs=16, eval_t_repeats=1, min_steps=30)

# 2512.10858's five noise types: mixing shift b in {-1000, -2, 0, 2, 1000}, i.e. uniform shares
# sigmoid(b) = 0, 0.119, 0.5, 0.881, 1 at log-SNR 0 (b = -1000 is masked noise, 1000 uniform, exactly).
GIDD_SHIFTS = (-1000.0, -2.0, 0.0, 2.0, 1000.0)

# RECIPE: tokens per parameter where each family's isoFLOP minimum sat in three real laptop
# studies and probes at the grid ends (docs/recipe_calibration.md); masked and esolm (MDLM's
# loss at alpha_0 = 1) get 6 sizes, uniform / hybrid 5: a flat bottom has a higher point each side.
LAPTOP_TOKENS_PER_PARAM = (("autoregressive", 40.0), ("masked", 600.0), ("uniform", 400.0),
                           ("hybrid", 400.0), ("esolm", 600.0))
LAPTOP_SIZES_PER_BUDGET = (("masked", 6), ("uniform", 5), ("hybrid", 5), ("esolm", 6))

LAPTOP_BUDGETS = (1.33e11, 2.37e11, 4.21e11, 7.49e11, 1.33e12)   # RECIPE: 1.33e11 x 1.778^k

LAPTOP = Recipe(
    name="laptop",
    shape=LAPTOP_SHAPE,
    sweeps=(
        # IsoFLOP study, one run per (family, size) read off at every budget it serves
        # (readoff "constant": constant LR, a cooled branch per budget measures each family's
        # cooldown factor). RECIPE: 5 budgets 1.78x apart spanning 10x from 1.5e11, 3 sizes per
        # budget centred per family (each trunk also read off at the study's lower budgets it
        # reaches in >= min_steps), every family (the hybrid at b = 0, p_u = 0.5): ~50 min on
        # the slower 2-core machine (AVX2, ~143 GFLOP/s), as its dry run measures (57 from 1.5e11).
        Sweep(name="compute_bound",
              grid=Grid(budgets=LAPTOP_BUDGETS, families=ALL_FAMILIES, knobs=(0.0,),
                        sizes_per_budget=3, tokens_per_param=LAPTOP_TOKENS_PER_PARAM,
                        readoff="constant")),
        # Token-bound regime (2512.10858): a fixed pool of unique tokens (train.data_pool_tokens),
        # repeated for as many epochs as the budget needs, the model size growing with the budget.
        # RECIPE: 131,072 unique tokens (~270 KB of text), 8-31 epochs; 1 size below f*, 2 above.
        Sweep(name="data_bound",
              grid=Grid(budgets=(1e12, 2e12, 4e12),
                        families=("autoregressive", "masked", "uniform"),
                        sizes_per_budget=3, pool_tokens=2**17)),
        # The hybrid's mixing shift b from masked (-1000) to uniform (1000) at fixed sizes and
        # budgets. RECIPE: one budget, 3 sizes, 2512.10858's five noise types; esolm at its trained
        # alpha_0 = 1 alongside (one run per size, no knob).
        Sweep(name="noise_sweep",
              grid=Grid(budgets=(1.6e12,), families=("hybrid", "esolm"), knobs=GIDD_SHIFTS,
                        sizes_per_budget=3)),
        # Base configs (size x budget x family) of the LR x batch search; the points come from
        # Optuna over `sweeps.search_space("hparams")` (the orchestrator applies them).
        Sweep(name="hparams",
              grid=Grid(budgets=(1e12,), families=("autoregressive", "masked"), sizes_per_budget=2),
              search=Search(lr=(1e-3, 3e-2), batch_sizes=(4, 8, 16, 32), num_samples=8)),
        # Seconds per run, for tests and end-to-end checks. RECIPE: 1.65e11 = 3-8 s of training,
        # enough that the slots' ~4-5 s fixed start-up does not dominate (bench/bench_sweep.py).
        Sweep(name="smoke",
              grid=Grid(budgets=(1.65e11,), families=("autoregressive", "masked"),
                        sizes=("L2-d24", "L2-d32", "L2-d48")),
              shape=SMOKE_SHAPE),
    ),
)

# ------------------------------------------------------------------------------------------------
# QUICK: <= 15 minutes on the laptop; autoregressive and masked, budgets below LAPTOP's.
# ------------------------------------------------------------------------------------------------
QUICK = LAPTOP.with_sweeps(
    Sweep(name="compute_bound",     # RECIPE: LAPTOP's design, its 4 lower budgets, AR + MDLM
          grid=Grid(budgets=LAPTOP_BUDGETS[:4], families=("autoregressive", "masked"),
                    sizes_per_budget=3, tokens_per_param=LAPTOP_TOKENS_PER_PARAM,
                    readoff="constant")),
    Sweep(name="data_bound",
          grid=Grid(budgets=(3.2e11, 6.4e11, 1.28e12), families=("autoregressive", "masked"),
                    sizes_per_budget=3, pool_tokens=2**17)),
    Sweep(name="noise_sweep",
          grid=Grid(budgets=(6.4e11,), families=("hybrid",),
                    knobs=(-1000.0, 0.0, 1000.0), sizes_per_budget=2)),   # masked, p_u 0.5, uniform
    Sweep(name="hparams",
          grid=Grid(budgets=(3.2e11,), families=("autoregressive", "masked"), sizes_per_budget=2),
          search=Search(lr=(1e-3, 3e-2), batch_sizes=(4, 8, 16), num_samples=4)),
    name="quick",
)   # smoke: LAPTOP's

# ------------------------------------------------------------------------------------------------
# CLUSTER: GPUs, budgets 1e17-1e20. Needs a real corpus: --set 'data.paths=["/data/..."]' (the
# packaged ~26 MB would be repeated thousands of times at these budgets).
# ------------------------------------------------------------------------------------------------
GPU_ENGINE = EngineConfig(device="auto", precision="bf16", zero_stage=3)   # RECIPE

CLUSTER_SHAPE = Shape(
    vocab_size=32768,          # RECIPE: a standard LM vocabulary once data is plentiful
    seq_len=1024,              # RECIPE
    batch_size=256,            # RECIPE: 262,144 tokens per step; >= 500 steps at 1e17
    lr=3e-3, lr_ref_width=256,  # RECIPE: 1.5e-3 at d512 ... 3e-4 at d2560
    warmup_frac=0.02,          # RECIPE: thousands of steps; 2% is still hundreds
    evals=10, eval_seqs=512, eval_t_repeats=4,   # RECIPE: 0.5M validation tokens per evaluation
    min_steps=500,
    engine=GPU_ENGINE,
)

CLUSTER = Recipe(
    name="cluster",
    shape=CLUSTER_SHAPE,
    sweeps=(
        # RECIPE: a decade apart, 5 sizes each (2 below f*, 3 above): f* = 1.7e8 ... 5.5e9
        # FLOPs/token, L6-d256 .. L36-d2560 at vocab 32768, T 1024.
        Sweep(name="compute_bound",
              grid=Grid(budgets=(1e17, 1e18, 1e19, 1e20), families=ALL_FAMILIES,
                        knobs=(0.0,), sizes_per_budget=5)),
        Sweep(name="data_bound",
              grid=Grid(budgets=(1e18, 1e19, 1e20),
                        families=("autoregressive", "masked", "uniform"),
                        sizes_per_budget=3, pool_tokens=2**30)),   # RECIPE: 1.07B unique tokens
        Sweep(name="noise_sweep",
              grid=Grid(budgets=(1e19,), families=("hybrid", "esolm"), knobs=GIDD_SHIFTS,
                        sizes_per_budget=3)),
        Sweep(name="hparams",
              grid=Grid(budgets=(1e17,), families=("autoregressive", "masked"), sizes_per_budget=2),
              search=Search(lr=(1e-4, 1e-2), batch_sizes=(64, 128, 256, 512), num_samples=24)),
        dataclasses.replace(LAPTOP.sweep("smoke"),   # the GPU path, in seconds
                            shape=dataclasses.replace(SMOKE_SHAPE, engine=GPU_ENGINE)),
    ),
)

# ------------------------------------------------------------------------------------------------
# The papers' definitions at LAPTOP's scale. Their budgets count FLOPs their way, which buys more
# tokens per budget than LAPTOP's (neither convention counts attention and the head as ours does):
# RECIPE: vonruette2025's 5 noise types x 3 budgets from 4e11 and sahoo2026's 3 families x LAPTOP's
# budgets stay within LAPTOP's hour (tests/test_sweeps.py estimates them like LAPTOP).
# ------------------------------------------------------------------------------------------------
VONRUETTE2025_RECIPE = LAPTOP.with_sweeps(
    Sweep(name="compute_bound",
          grid=Grid(budgets=(4e11, 5.33e11, 7.1e11), families=("autoregressive", "hybrid"),
                    knobs=GIDD_SHIFTS, sizes_per_budget=4,
                    tokens_per_param=LAPTOP_TOKENS_PER_PARAM)),
    name="vonruette2025", definitions=VONRUETTE2025)   # noise_sweep: LAPTOP's, the same five b

# RECIPE: its four families at LAPTOP's sizes; budgets 4/3 apart from 5e11 of its FLOPs (LAPTOP's
# 6e11 ... 1.43e12 with Eso-LM added would estimate 54 min against the 48 allowed).
SAHOO2026_RECIPE = LAPTOP.with_sweeps(
    Sweep(name="compute_bound",
          grid=Grid(budgets=(5e11, 6.67e11, 8.89e11, 1.185e12),
                    families=("autoregressive", "masked", "uniform", "esolm"), sizes_per_budget=4,
                    family_sizes_per_budget=LAPTOP_SIZES_PER_BUDGET,
                    tokens_per_param=LAPTOP_TOKENS_PER_PARAM)),
    name="sahoo2026", definitions=SAHOO2026)

PRESETS: dict[str, Recipe] = {r.name: r for r in (LAPTOP, QUICK, CLUSTER, VONRUETTE2025_RECIPE,
                                                  SAHOO2026_RECIPE)}
DEFAULT_PRESET = "laptop"


def preset(name: str | None) -> Recipe:
    """The named recipe; ValueError naming an unknown one."""
    name = DEFAULT_PRESET if name is None else name
    if name not in PRESETS:
        raise ValueError(f"preset {name!r} is unknown; known: {', '.join(PRESETS)}")
    return PRESETS[name]
