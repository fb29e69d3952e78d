"""The seed-to-seed noise floor: how far the loss of one configuration moves when only the seed does.

A configuration is one (group, N, budget) point of a study; it is repeated when the study holds it
under >= 2 distinct ``train.seed`` values (the ``seed`` column of a ``schema.FINAL_COLUMNS``
table; a constant-mode trunk repeated with another seed repeats every one of its read-offs). The
spread is what a fitted interval should be read against: a difference between groups smaller than
it is not measured by one run per point.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

CONFIG = ["group", "N", "budget"]
"""What one configuration is: the same group (family, knob), size and budget."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class SeedSpread:
    """The loss spread of one group's repeated configurations (losses in nats/token)."""

    group: str
    n_configs: int
    """Configurations run under >= 2 seeds."""
    n_points: int
    """Points in those configurations."""
    std: float
    """Pooled within-configuration standard deviation, sqrt(Σ (n_i − 1)·s_i² / Σ (n_i − 1))."""
    range: float
    """Largest max − min loss of one configuration."""

    def fmt(self) -> str:
        return (f"{self.group}: seed-to-seed std {self.std:.3g}, max-min {self.range:.3g} "
                f"nats/token ({self.n_configs} configuration(s) repeated, {self.n_points} points)")


def seed_spread(final: pd.DataFrame) -> tuple[SeedSpread, ...]:
    """One :class:`SeedSpread` per group with a repeated configuration, in group order; () for a
    table without seeds."""
    if "seed" not in final or final.empty:
        return ()
    t = final[np.isfinite(final["seed"].astype(float))]
    keys = t[CONFIG].assign(budget=t["budget"].fillna(-1.0))        # NaN budget: one bin
    stats = (t.assign(budget=keys["budget"]).groupby(CONFIG, sort=True)
              .agg(n=("loss", "size"), seeds=("seed", "nunique"), var=("loss", "var"),
                   lo=("loss", "min"), hi=("loss", "max")).reset_index())
    stats = stats[stats["seeds"] >= 2]
    out = []
    for group, s in stats.groupby("group", sort=True):
        dof = (s["n"] - 1).sum()
        out.append(SeedSpread(group=str(group), n_configs=len(s), n_points=int(s["n"].sum()),
                              std=float(np.sqrt(((s["n"] - 1) * s["var"]).sum() / dof)),
                              range=float((s["hi"] - s["lo"]).max())))
    return tuple(out)
