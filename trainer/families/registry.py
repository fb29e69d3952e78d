"""The family registry: one `FamilySpec` line per noise family, and `NoiseConfig`. Torch-free.

A family is one class (trainer/families/<name>.py: the corruption, the NELBO, its sampler) and one
line here: the facts that configs, sweeps, tags and tables need *without* importing torch (its
attention mask, mask token, time-conditioning default, training losses, knob), and a lazy
"module:Class" reference to the class, imported by `build_family` only. Callers never branch on a
family's name: they read its spec (`FAMILIES[name]`) or the built family. Adding a family = its
file, its line in `FAMILIES`, its tests; nothing else. The recipe then chooses where to sweep it;
its `ALL_FAMILIES` (sweeps/recipe.py) is every registered family, in this order.

A knob is a `NoiseConfig` field the family reads and a sweep varies (`Knob`): the sweeps set it
(sweeps/grid.py), the trial tags it (`dlm.knob`), the dry-run table shows it, all through
`NoiseConfig.knob()` / `with_knob()`; `NoiseConfig.knob_label()` names the value with its derived
value where the knob has one (hybrid: 'b=-2 p_u=0.119'; the dlm.knob_label tag, the dry-run table).
A family with a new *kind* of knob needs a new `NoiseConfig` field, and a new field changes every
run id (`RunConfig.science` hashes every field): reuse a field where the meaning fits.
"""
from __future__ import annotations

import importlib
import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Callable

from core.ladder import TIME_CONDS

if TYPE_CHECKING:
    from trainer.families.base import NoiseFamily


@dataclass(frozen=True, kw_only=True)
class Knob:
    """The one continuous `NoiseConfig` field a family is swept along."""
    field: str
    """The NoiseConfig field (a float) the family reads; a sweep's `knobs` set it, one run each."""
    lo: float
    hi: float
    """Closed range of valid values, [lo, hi]."""
    label: str
    """What the value means, in a few words (`python -m trainer.families.registry`)."""
    symbol: str = ""
    """Its short name in `show` (the dry-run table, the dlm.knob_label tag); "" = the field name."""
    derived: Callable[[float], float] | None = None
    """A function of the value on a more readable scale, shown beside it (never read by the family)."""
    derived_symbol: str = ""
    """The derived value's short name in `show`."""

    def accepts(self, value: float) -> bool:
        return self.lo <= value <= self.hi                    # False for NaN

    def show(self, value: float) -> str:
        """The value as tables and tags name it: 'b=-2 p_u=0.119' (derived value to 3 digits)."""
        text = f"{self.symbol or self.field}={value:g}"
        if self.derived is not None:
            text += f" {self.derived_symbol}={self.derived(value):.3g}"
        return text

    def check(self, value: float) -> None:
        if not self.accepts(value):
            raise ValueError(f"noise.{self.field} must be in [{self.lo:g}, {self.hi:g}], got {value}")


@dataclass(frozen=True, kw_only=True)
class FamilySpec:
    """What the rest of the code may know about a family without importing it (or torch)."""
    name: str
    """Registered name: NoiseConfig.family, the dlm.family tag, the MLflow run name's prefix."""
    impl: str
    """"module:Class" of the NoiseFamily subclass; imported only by `load` / `build_family`."""
    causal: bool = False
    """Causal attention (the autoregressive baseline); no diffusion time, so no time conditioning."""
    uses_mask_token: bool = False
    """The model's input vocabulary is V + 1 (mask id = V); the output is always the V real tokens."""
    time_cond_default: str = "none"
    """Time conditioning (a key of core.ladder.TIME_CONDS) unless RunConfig.time_cond says
    otherwise; each family's choice follows the paper that defines it (see FAMILIES)."""
    train_losses: tuple[str, ...] = ("elbo",)
    """NoiseConfig.train_loss values the family implements."""
    default_train_loss: str = "elbo"
    """What train_loss='auto' resolves to."""
    knob: Knob | None = None
    """The field a sweep varies for this family, or None (one run per grid cell)."""
    train_requires: tuple[tuple[str, float], ...] = ()
    """(NoiseConfig field, value) pairs training needs; evaluation and sampling take any valid
    value (trainer/plan.py rejects other values, naming the field; the reason is at the line)."""

    def __post_init__(self):
        if ":" not in self.impl:
            raise ValueError(f"family {self.name!r}: impl must be 'module:Class', got {self.impl!r}")
        if self.default_train_loss not in self.train_losses:
            raise ValueError(f"family {self.name!r}: default_train_loss {self.default_train_loss!r} "
                             f"is not one of its train_losses {self.train_losses}")
        if self.time_cond_default not in TIME_CONDS:
            raise ValueError(f"family {self.name!r}: time_cond_default must be one of "
                             f"{sorted(TIME_CONDS)}, got {self.time_cond_default!r}")
        if self.causal and self.time_cond_default != "none":
            raise ValueError(f"family {self.name!r}: a causal family has no diffusion time")

    def input_vocab_size(self, vocab_size: int) -> int:
        """Rows of the model's input embedding for V = vocab_size real tokens."""
        return vocab_size + 1 if self.uses_mask_token else vocab_size

    def load(self) -> type[NoiseFamily]:
        """The family's class (imports its module, hence torch)."""
        module, _, name = self.impl.partition(":")
        return getattr(importlib.import_module(module), name)


MIXING_SHIFT_END = 1000.0
"""|b| of the hybrid family's pure ends, 2512.10858's b = ±1000: sigmoid(λ ± 1000) is exactly 1 / 0
in float32 and float64 at every log-SNR the schedule reaches (logit(eps) <= λ <= 13.8), so b = −1000
*is* masked noise and b = 1000 uniform (tests/test_noise.py). Finite, unlike ±inf: the run-id JSON,
the saved config and `--set` stay standard JSON (config.check_types refuses a non-finite float)."""


def sigmoid(x: float) -> float:
    """σ(x) = 1 / (1 + e^−x) without overflow: exactly 0.0 at x = −1000 and 1.0 at x = 1000."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


# Time-conditioning defaults, each from the code of the paper the family reproduces:
#  - autoregressive "none": causal, no diffusion time. (2602.15014's AR runs its DiT with adaLN on
#    and a dummy t = 0: scaling-dllms algo.py AR.nll; a constant input makes adaLN a learned
#    per-layer affine, not conditioning.)
#  - masked "none": MDLM in 2602.15014 (scaling-dllms configs/algo/mdlm.yaml time_conditioning:
#    False; trainer_base.Diffusion._process_sigma zeroes sigma) — its adaLN layers likewise only
#    ever see t = 0, so "none" is the same model up to those constant affines.
#  - uniform "adaln" (cond_dim 128): Duo in 2602.15014 (configs/algo/duo_base.yaml
#    time_conditioning: True, asserted by trainer_base.UniformState; configs/model/*.yaml
#    cond_dim: 128; models/dit.py TimestepEmbedder + adaLN_modulation = Linear(cond_dim, 6·dim)).
#  - hybrid "none": GIDD in 2512.10858 (erfanzar/EasyDeL easydel/modules/gidd/
#    modeling_gidd.py GiddModel.__call__ takes log_snr and never uses it; gidd-easydel's PyTorch
#    port gidd_easydel/model/modeling_gidd_hf.py has no time input at all).
FAMILIES: dict[str, FamilySpec] = {spec.name: spec for spec in (
    # The baseline first: registry order is ALL_FAMILIES' run order (sweeps/recipe.py).
    FamilySpec(name="autoregressive", impl="trainer.families.autoregressive:Autoregressive",
               causal=True, train_losses=("elbo", "ce")),
    # MDLM: no time conditioning (above); 2602.15014's "low_var" CE by default.
    FamilySpec(name="masked", impl="trainer.families.masked:Masked", uses_mask_token=True,
               train_losses=("elbo", "ce", "gidd"), default_train_loss="ce"),
    FamilySpec(name="uniform", impl="trainer.families.uniform:Uniform", time_cond_default="adaln",
               train_losses=("elbo", "gidd"), default_train_loss="gidd"),
    FamilySpec(name="hybrid", impl="trainer.families.hybrid:Hybrid",
               uses_mask_token=True, time_cond_default="none",
               train_losses=("elbo", "gidd"), default_train_loss="gidd",
               knob=Knob(field="mixing_shift", lo=-MIXING_SHIFT_END, hi=MIXING_SHIFT_END, symbol="b",
                         derived=sigmoid, derived_symbol="p_u",
                         label="log-SNR mixing shift b (-1000 = masked, 1000 = uniform); "
                               "p_u = sigmoid(b) the uniform share at log-SNR 0")),
    # Eso-LM (2602.15014): no time conditioning (configs/algo/esolm.yaml time_conditioning:
    # False; its adaLN sees t = 0 only), low_var CE by default (loss_type: low_var). No sweep
    # knob: the paper trains at alpha_0 = 1 (scripts/esolm/train.sh) and varies alpha_0 when
    # sampling (gen_ppl.sh), so NoiseConfig.alpha_0 is fixed, not swept (families/esolm.py).
    # Training at alpha_0 < 1 adds a 2T-token sequential pass per sequence that core/flops.py
    # does not count, so it is refused (trainer/plan.py); the paper does not train there.
    FamilySpec(name="esolm", impl="trainer.families.esolm:EsoLM", uses_mask_token=True,
               train_losses=("elbo", "ce"), default_train_loss="ce",
               train_requires=(("alpha_0", 1.0),)),
)}


@dataclass(frozen=True, kw_only=True)
class NoiseConfig:
    family: str = "masked"
    """A registered family name: a key of FAMILIES (`python -m trainer.families.registry` lists them)."""
    eps: float = 1e-3
    """Schedule floor: α_1 = eps (log-linear α_t = 1 − (1 − eps)·t). Bias of the NELBO is O(eps)."""
    mixing_shift: float = 0.0
    """Hybrid knob b ∈ [−1000, 1000], 2512.10858's log-SNR mixing shift: the uniform fraction of the
    noise is σ_t = sigmoid(λ_t + b) at log-SNR λ_t. b = −1000 is masked noise and b = 1000 uniform,
    exactly (MIXING_SHIFT_END); 0 = half uniform at λ = 0 (`uniform_share()` = sigmoid(b))."""
    alpha_0: float = 1.0
    """Eso-LM's α₀ ∈ [0, 1]: 1 = masked diffusion, 0 = left-to-right sequential; the share of
    tokens generated by diffusion (trainer/families/esolm.py). Other families ignore it."""
    train_loss: str = "auto"
    """The training loss (validation is always the exact NELBO, trainer/job/objective.evaluate):
    'elbo'  the NELBO integrand itself, per position (what validation estimates);
    'ce'    2602.15014's "low_var" (masked, autoregressive): unweighted cross-entropy summed over the
            masked positions and divided by *all* loss positions (scaling-dllms algo.py
            MDLM.nll_per_token(low_var=True) + trainer_base.py TrainerBase._loss);
    'gidd'  2512.10858's weighting: the ELBO integrand × α_t(1 − α_t)/|α'_t|, i.e. the integrand per
            unit log-SNR, weight clipped at `weight_clip` (default GIDD_WEIGHT_CLIP) (gidd-easydel
            diffusion_trainer/loss.py GiddLoss, schedule.py MixingSchedule.get_loss_weights);
    'auto'  the family's default (FAMILIES[family].default_train_loss; `python -m
            trainer.families.registry` lists them)."""
    weight_clip: float | None = None
    """Clip the training weight at this value: the ELBO weight w_t(z, x) for 'elbo', the GIDD weight
    for 'gidd' (None there = GIDD_WEIGHT_CLIP, gidd-easydel's 1e3). Never in the NELBO."""
    t_min: float = 0.0
    """Training t floor: t = t_min + (1 − t_min)·u with u stratified on [0, 1) (scaling-dllms
    trainer_base.py Diffusion._sample_t with training.sampling_eps = 1e-3; gidd-easydel samples t
    uniform on [t(λ_max), t(λ_min)], log-SNR λ in [−9, 9]: `t_min_for_log_snr(9, eps)` ≈ 1.23e-4).
    0 = no floor (t is still clamped at families.base.T_MIN = 1e-6). Training only: validation
    integrates over all of [0, 1]."""
    p_independent: float = 0.0
    """Share of training sequences whose t is drawn independently per token instead of once per
    sequence (gidd-easydel DiffusionTrainer._sample_log_snr, `noise_p_independent`; its train.py
    passes args.max_empty_token_frac = 0.2 there). A time-conditioned model is given the sequence's
    mean t (as scaling-dllms' Diffusion._process_sigma averages σ over positions)."""
    p_prompt: float = 0.0
    """Share of training sequences with a clean prefix ("prompt") of fraction arccos(1 − 2r)/π,
    r ~ U(0, 1): left uncorrupted and out of the loss and its normaliser (gidd-easydel
    DiffusionTrainer._sample_noise_mask, `noise_mask_p_prompt` = 0.2). Unlike gidd-easydel the
    prompt tokens still attend to the noisy ones (no block attention mask)."""

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"noise.family: unknown family {self.family!r}; known: {sorted(FAMILIES)}")
        if not 0.0 < self.eps < 0.5:
            raise ValueError(f"noise.eps must be in (0, 0.5), got {self.eps}")
        floats = {spec.knob.field for spec in FAMILIES.values() if spec.knob is not None}
        floats |= {field for spec in FAMILIES.values() for field, _ in spec.train_requires}
        for name in floats:
            value = getattr(self, name)       # `--set noise.mixing_shift=-2` parses as an int:
            if isinstance(value, int) and not isinstance(value, bool):   # the run of -2.0
                object.__setattr__(self, name, float(value))
        self._check_knobs()
        allowed = FAMILIES[self.family].train_losses
        if self.train_loss != "auto" and self.train_loss not in allowed:
            why = ("; cross-entropy of x given z_t double-counts z_t under the uniform/hybrid "
                   "parameterisation (see STACK.md)") if self.train_loss == "ce" else ""
            raise ValueError(f"noise.train_loss={self.train_loss!r} is not supported by family "
                             f"{self.family!r} (supported: {allowed}){why}")
        if self.weight_clip is not None and self.weight_clip <= 0:
            raise ValueError(f"noise.weight_clip must be > 0 or None, got {self.weight_clip}")
        if not 0.0 <= self.t_min < 1.0:
            raise ValueError(f"noise.t_min must be in [0, 1), got {self.t_min}")
        if not 0.0 <= self.alpha_0 <= 1.0:
            raise ValueError(f"noise.alpha_0 must be in [0, 1], got {self.alpha_0}")
        for name in ("p_independent", "p_prompt"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"noise.{name} must be in [0, 1], got {getattr(self, name)}")
        if FAMILIES[self.family].causal and (self.t_min or self.p_independent or self.p_prompt):
            raise ValueError(f"noise.t_min / p_independent / p_prompt: the {self.family} family "
                             "has no diffusion time")

    def _check_knobs(self) -> None:
        """Each knob field against the range of the family that reads it: this config's family's
        own range; a field this family ignores (it still enters the run id) must be a value that
        some family declaring it accepts."""
        own = FAMILIES[self.family].knob
        declared: dict[str, list[Knob]] = {}
        for spec in FAMILIES.values():
            if spec.knob is not None:
                declared.setdefault(spec.knob.field, []).append(spec.knob)
        for name, knobs in declared.items():
            value = getattr(self, name)
            if own is not None and own.field == name:
                own.check(value)
            elif not any(k.accepts(value) for k in knobs):
                knobs[0].check(value)

    def resolved_train_loss(self) -> str:
        return FAMILIES[self.family].default_train_loss if self.train_loss == "auto" else self.train_loss

    def knob(self) -> float | None:
        """The value of this family's knob, or None if the family has none."""
        k = FAMILIES[self.family].knob
        return None if k is None else getattr(self, k.field)

    def knob_label(self) -> str:
        """This family's knob value as tables and the dlm.knob_label tag name it ('b=-2 p_u=0.119'),
        or "" if the family has none."""
        k = FAMILIES[self.family].knob
        return "" if k is None else k.show(getattr(self, k.field))

    def uniform_share(self) -> float:
        """Hybrid's p_u = sigmoid(mixing_shift): the uniform share of its noise at log-SNR 0 (a
        label for b; the family reads b)."""
        return sigmoid(self.mixing_shift)

    def with_knob(self, value: float) -> NoiseConfig:
        """This config with the family's knob set to `value` (ValueError if it has no knob)."""
        k = FAMILIES[self.family].knob
        if k is None:
            raise ValueError(f"noise.family {self.family!r} has no knob to set to {value!r}")
        return replace(self, **{k.field: value})


GIDD_WEIGHT_CLIP = 1e3
"""gidd-easydel diffusion_trainer/loss.py: `loss_weights.clip(0, 1e3)`."""


def t_min_for_log_snr(max_log_snr: float, eps: float) -> float:
    """The t floor at which the log-linear schedule α_t = 1 − (1 − eps)·t reaches log-SNR
    λ = log(α/(1 − α)) = max_log_snr: a `NoiseConfig.t_min` for a log-SNR limit (gidd-easydel
    args.py max_log_snr = 9). Its lower limit (−9) needs nothing here: α_1 = eps bounds
    λ >= logit(eps) (−6.9 at eps = 1e-3)."""
    return (1.0 - 1.0 / (1.0 + math.exp(-max_log_snr))) / (1.0 - eps)


def build_family(cfg: NoiseConfig, vocab_size: int, eot_id: int | None = None) -> NoiseFamily:
    """The family object of `cfg` for V = vocab_size real tokens (imports its module: torch).
    `eot_id`: the corpus's document separator (None: the trained BPE's, 0), the token an
    autoregressive window is read after; a user tokenizer's differs (GPT-2's is 50256)."""
    family = FAMILIES[cfg.family].load()(cfg, vocab_size)
    if eot_id is not None:
        if not 0 <= eot_id < vocab_size:
            raise ValueError(f"eot_id {eot_id} is not a token of a {vocab_size}-token vocabulary")
        family.start_id = eot_id
    return family


def describe() -> str:
    """The registry as a table (`python -m trainer.families.registry`)."""
    rows = [f"{'family':<15} {'causal':<7} {'mask':<5} {'t-cond':<10} {'losses (default)':<22} knob"]
    for s in FAMILIES.values():
        losses = f"{','.join(s.train_losses)} ({s.default_train_loss})"
        knob = "-" if s.knob is None else f"{s.knob.field} in [{s.knob.lo:g}, {s.knob.hi:g}]: {s.knob.label}"
        rows.append(f"{s.name:<15} {s.causal!s:<7} {s.uses_mask_token!s:<5} "
                    f"{s.time_cond_default:<10} {losses:<22} {knob}")
    return "\n".join(rows)


if __name__ == "__main__":
    print(describe())
