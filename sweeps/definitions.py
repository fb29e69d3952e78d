"""Whose definitions a recipe's runs use: the FLOP convention that sets each run's steps, each
family's training loss and time conditioning, and the training-noise options (issue 13, item 5).

A `Definitions` is data, applied by sweeps/grid.py `make_run`; a recipe names one
(`Recipe.definitions`) and the study's parent run records its name (tag ``dlm.definitions``).
Validation is always the exact NELBO, and N is always the backbone count (core.flops), whichever
definitions trained the runs, so studies under different definitions are compared on one scale.

  project        the project's defaults: matmul FLOPs, each family's default loss and time
                 conditioning (trainer/families/registry.py), no t floor.
  vonruette2025  arXiv 2512.10858 (dvruette/gidd-easydel): FLOP "method 1" M = 72·L·d² + 12·L·d·T
                 (notebooks/scaling_laws_run_bootstrap.ipynb), the GIDD-weighted loss
                 (diffusion_trainer/loss.py), no time conditioning (model/modeling_gidd_hf.py has
                 no time input), log-SNR in [−9, 9] (args.py min/max_log_snr), independent
                 per-token noise on 20% of sequences and a clean prompt on 20% (train.py passes
                 args.max_empty_token_frac = 0.2 as noise_p_independent; args.py
                 noise_mask_p_prompt = 0.2).
  sahoo2026      arXiv 2602.15014 (s-sahoo/scaling-dllms): calflops FLOPs × 3
                 (configs/flops/*.json, utils.flops_to_max_steps), masked diffusion on the
                 "low_var" cross-entropy (trainer_base._loss), Duo (uniform) on its ELBO with adaLN
                 from cond_dim 128 (models/dit.py), t floored at sampling_eps = 1e-3
                 (trainer_base.Diffusion._sample_t).
"""
from __future__ import annotations

from dataclasses import dataclass

from core.flops import CONVENTIONS
from core.ladder import COND_DIM, TIME_CONDS
from trainer.families.registry import FAMILIES, t_min_for_log_snr

_EPS = 1e-3   # NoiseConfig.eps default: the schedule floor the log-SNR bound is converted with


@dataclass(frozen=True, kw_only=True)
class Definitions:
    """One paper's (or the project's) definitions for the runs of a recipe."""
    name: str
    flop_convention: str = "matmul"
    """core.flops.CONVENTIONS key: counts the budget, so it sets every run's step count."""
    train_loss: tuple[tuple[str, str], ...] = ()
    """(family, NoiseConfig.train_loss) pairs; a family not listed trains on its default."""
    time_cond: tuple[tuple[str, str], ...] = ()
    """(family, core.ladder.TIME_CONDS key) pairs; a family not listed uses its default."""
    cond_dim: int = COND_DIM
    t_min: float = 0.0
    """Training t floor of the diffusion families (NoiseConfig.t_min)."""
    p_independent: float = 0.0
    p_prompt: float = 0.0
    source: str = ""

    def __post_init__(self):
        for name in ("train_loss", "time_cond"):
            object.__setattr__(self, name, tuple(tuple(p) for p in getattr(self, name)))
        if self.flop_convention not in CONVENTIONS:
            raise ValueError(f"definitions {self.name!r}: flop_convention "
                             f"{self.flop_convention!r} is unknown; known: {sorted(CONVENTIONS)}")
        for family, loss in self.train_loss:
            if family not in FAMILIES or loss not in FAMILIES[family].train_losses:
                raise ValueError(f"definitions {self.name!r}: train_loss {loss!r} for family "
                                 f"{family!r} is not a registered family's loss")
        for family, option in self.time_cond:
            if family not in FAMILIES or option not in TIME_CONDS:
                raise ValueError(f"definitions {self.name!r}: time_cond {option!r} for family "
                                 f"{family!r}: unknown family or option")

    def noise_fields(self, family: str) -> dict[str, object]:
        """NoiseConfig fields these definitions set for `family` (none for a causal family)."""
        if FAMILIES[family].causal:
            return {}
        out: dict[str, object] = {"t_min": self.t_min, "p_independent": self.p_independent,
                                  "p_prompt": self.p_prompt}
        loss = dict(self.train_loss).get(family)
        if loss is not None:
            out["train_loss"] = loss
        return {k: v for k, v in out.items() if v not in (0.0, None)}

    def time_cond_for(self, family: str) -> str | None:
        """RunConfig.time_cond for `family`: None = the family's default."""
        return dict(self.time_cond).get(family)


PROJECT = Definitions(name="project", source="this project's defaults (README, Definitions)")

VONRUETTE2025 = Definitions(
    name="vonruette2025", flop_convention="vonruette2025",
    train_loss=(("masked", "gidd"), ("uniform", "gidd"), ("hybrid", "gidd")),
    time_cond=(("masked", "none"), ("uniform", "none"), ("hybrid", "none")),
    t_min=t_min_for_log_snr(9.0, _EPS), p_independent=0.2, p_prompt=0.2,
    source="arXiv 2512.10858, dvruette/gidd-easydel")

SAHOO2026 = Definitions(
    name="sahoo2026", flop_convention="sahoo2026",
    # Eso-LM: configs/algo/esolm.yaml loss_type low_var, time_conditioning False
    train_loss=(("masked", "ce"), ("uniform", "elbo"), ("esolm", "ce")),
    time_cond=(("masked", "none"), ("uniform", "adaln"), ("esolm", "none")), cond_dim=128,
    t_min=1e-3,
    source="arXiv 2602.15014, s-sahoo/scaling-dllms")

DEFINITIONS: dict[str, Definitions] = {d.name: d for d in (PROJECT, VONRUETTE2025, SAHOO2026)}
