"""Refitting a study under another FLOP convention (issue 13, item 2): every convention per run,
recomputed for runs logged before they were, and the laws' C under the chosen one."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from analysis import conventions, synthetic
from analysis.load import table_from_frame
from analysis.study import fit_study
from core import schema as M
from core.flops import CONVENTIONS, train_flops_per_token
from core.ladder import model_config


def _legacy_params(size: str, family: str, time_cond: str, *, vocab=512, seq_len=128,
                   mlp="gelu", convention="matmul", logged_layout=None) -> tuple[dict, dict]:
    """Params and tags as a run logged them before flops_per_token.<name> existed: its own
    convention's count only, and (before issue 13) a bool-or-None time_cond."""
    layout = logged_layout or {"True": "adaln_full", "False": "none"}.get(
        time_cond, "adaln_full" if family in ("uniform", "interpolating") else "none")
    cfg = model_config(size, vocab_size=vocab, out_vocab_size=vocab, seq_len=seq_len,
                       time_cond=layout, mlp=mlp)
    params = {"mlp": mlp, "time_cond": time_cond, "data.vocab_size": str(vocab),
              "train.seq_len": str(seq_len), "train.flop_convention": convention,
              M.PARAM_FLOPS_PER_TOKEN: repr(train_flops_per_token(cfg, convention))}
    return params, {M.TAG_SIZE: size, M.TAG_FAMILY: family}


@pytest.mark.parametrize("size,family,time_cond", [
    ("L2-d32", "uniform", "None"),          # the family default then: full-width adaLN
    ("L2-d32", "masked", "None"),
    ("L4-d128", "interpolating", "False"),   # legacy runs: the hybrid family's name then
    ("L3-d80", "uniform", "True"),
    ("L2-d48", "autoregressive", "None"),
])
def test_legacy_runs_get_every_convention_from_their_config(size, family, time_cond):
    params, tags = _legacy_params(size, family, time_cond)
    got = conventions.per_token(params, tags)
    layout = {"True": "adaln_full", "False": "none"}.get(
        time_cond, "adaln_full" if family in ("uniform", "interpolating") else "none")
    cfg = model_config(size, vocab_size=512, out_vocab_size=512, seq_len=128, time_cond=layout)
    assert set(got) == set(CONVENTIONS)
    for name in CONVENTIONS:
        assert got[name] == pytest.approx(train_flops_per_token(cfg, name), rel=1e-12), name
    if size == "L2-d32":           # hand count of M = 72·L·d² + 12·L·d·T (no head, no adaLN)
        assert got["vonruette2025"] == 72 * 2 * 32 ** 2 + 12 * 2 * 32 * 128 == 245_760


def test_a_recomputation_that_does_not_reproduce_the_logged_count_says_nothing():
    params, tags = _legacy_params("L2-d32", "uniform", "None", logged_layout="none")
    got = conventions.per_token(params, tags)         # logged without adaLN, recomputed with it
    assert all(math.isnan(v) for v in got.values())
    params, tags = _legacy_params("L2-d32", "masked", "None")
    assert all(math.isnan(v) for v in conventions.per_token(params, {**tags, M.TAG_SIZE: "s0"}).values())


def test_logged_counts_win_over_recomputation():
    params, tags = _legacy_params("L2-d32", "masked", "None")
    logged = {M.flops_per_token_param(name): repr(float(i + 1)) for i, name in enumerate(CONVENTIONS)}
    got = conventions.per_token({**params, **logged}, tags)
    assert list(got.values()) == [float(i + 1) for i in range(len(CONVENTIONS))]


def _size_dependent(raw: pd.DataFrame, gamma: float) -> pd.DataFrame:
    """The same runs with C counted by a convention whose FLOPs/token is ∝ N^(1+gamma) instead
    of ∝ N: C_X = C · (N/N0)^gamma (N0 fixed), budgets (the grouping) unchanged."""
    out = raw.copy()
    out["C"] = raw["C"] * (raw["N"] / 1e8) ** gamma
    return out


def test_allocation_law_takes_c_at_the_minimum_in_the_tables_convention():
    # N*(C) ∝ C^a under the training count; under C_X = C·(N/N0)^γ the same minima sit at
    # C_X* = C·(N*/N0)^γ, so N* ∝ C_X^(a/(1+γa)). A law fitted at the budget tag would keep a.
    budgets = np.logspace(18, 22, 5)
    raw = synthetic.isoflop_table(budgets=budgets, sizes=9, span=30.0, noise=0.0)
    base = fit_study(table_from_frame(raw)[0], n_boot=0).groups[0].law("allocation")
    a = base.params["a"].value
    assert a == pytest.approx(0.28 / 0.62, abs=0.01)          # β/(α+β) of the planted law
    for gamma in (-0.3, 0.4):
        fit = fit_study(table_from_frame(_size_dependent(raw, gamma))[0],
                        n_boot=0).groups[0].law("allocation")
        assert fit.params["a"].value == pytest.approx(a / (1 + gamma * a), rel=0.02), gamma


def test_isoflop_minimum_compute_is_the_budget_under_the_training_convention():
    raw = synthetic.isoflop_table(budgets=np.logspace(18, 21, 4), sizes=7, noise=0.0)
    g = fit_study(table_from_frame(raw)[0], n_boot=0).groups[0]
    for c in g.isoflops:
        assert c.c_opt == pytest.approx(c.budget, rel=1e-9)
        assert c.c_level == pytest.approx(c.budget, rel=1e-9)
