"""The validated records a recipe is made of (Shape, Grid, Search, Sweep, Recipe): they only check
their fields (ValueError naming the field); every choice is sweeps/recipe.py's."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from core.ladder import LADDER
from sweeps.definitions import PROJECT, Definitions
from trainer.config import EngineConfig
from trainer.families.registry import FAMILIES


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
    pool_tokens: int | tuple[int, ...] | None = None
    """Data-bound grids: train on only the first this-many training tokens, repeated in epochs;
    a tuple: every point at each pool size (analysis/data_constrained.py needs >= 2 to separate
    R* from the data exponent)."""
    tokens_per_param: tuple[tuple[str, float], ...] = ()
    """(family, D/N) pairs: that family's sizes are centred on the compute-optimal size of this
    tokens-per-parameter ratio instead of the recipe's (core.flops.compute_optimal_flops_per_token).
    Chinchilla's 20 is an autoregressive rule; where a family's isoFLOP minimum sits at a preset's
    scale is a measurement (LAPTOP_TOKENS_PER_PARAM)."""

    batch_sizes: tuple[int, ...] = ()
    """Hyper-parameter grid (the hparams_grid sweep): non-empty, every point is run at each of
    these batch sizes (sequences per step) ..."""
    lrs: tuple[float, ...] = ()
    """... and each of these peak LRs (a log grid; replaces Shape.lr_for), so analysis/hp_laws.py
    can fit the loss surface over (log B, log eta) per (N, D). Both or neither."""

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
        if isinstance(self.pool_tokens, list):
            object.__setattr__(self, "pool_tokens", tuple(self.pool_tokens))
        object.__setattr__(self, "batch_sizes", tuple(self.batch_sizes))
        object.__setattr__(self, "lrs", tuple(float(x) for x in self.lrs))
        if bool(self.batch_sizes) != bool(self.lrs):
            raise ValueError("batch_sizes and lrs: a hyper-parameter grid needs both (or neither)")
        for b in self.batch_sizes:
            if isinstance(b, bool) or not isinstance(b, int) or b < 1:
                raise ValueError(f"batch_sizes: {b!r} is not a positive int")
        for x in self.lrs:
            if not (x > 0 and math.isfinite(x)):
                raise ValueError(f"lrs: {x!r} is not a positive finite learning rate")
        for name in ("batch_sizes", "lrs"):
            if len(set(getattr(self, name))) != len(getattr(self, name)):
                raise ValueError(f"{name} must not repeat: {getattr(self, name)}")
        for pool in self.pools():
            if pool is None:
                continue
            if isinstance(pool, bool) or not isinstance(pool, int) or pool < 1:
                raise ValueError(f"pool_tokens must be positive ints, got {self.pool_tokens!r}")
        if len(set(self.pools())) != len(self.pools()):
            raise ValueError(f"pool_tokens must not repeat: {self.pool_tokens}")

    def pools(self) -> tuple[int | None, ...]:
        """The pool sizes every point is run at ((None,): the whole corpus)."""
        if isinstance(self.pool_tokens, (tuple, list)):
            return tuple(self.pool_tokens)
        return (self.pool_tokens,)


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
