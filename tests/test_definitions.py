"""Presets per paper (issue 13, item 5): each run trains under its paper's FLOP convention, loss,
time conditioning and training noise; the study's parent run records whose definitions."""
from __future__ import annotations

import math

import pytest

import sweeps
from core import schema as M
from core.flops import backbone_params, param_counts
from sweeps.definitions import DEFINITIONS, PROJECT, Definitions
from sweeps.recipe import GIDD_SHIFTS, PRESETS
from trainer.families.registry import FAMILIES, NoiseConfig, t_min_for_log_snr
from trainer.plan import plan


def test_gidd_shares_are_sigmoid_of_the_papers_mixing_shifts():
    assert GIDD_SHIFTS == (-1000.0, -2.0, 0.0, 2.0, 1000.0)
    shares = [NoiseConfig(family="hybrid", mixing_shift=b).uniform_share() for b in GIDD_SHIFTS]
    sig = [1 / (1 + math.exp(-b)) for b in (-2.0, 0.0, 2.0)]
    assert shares[0] == 0.0 and shares[-1] == 1.0
    assert shares[1:4] == pytest.approx(sig, abs=1e-6)
    assert shares[1] == pytest.approx(0.119, abs=5e-4) and shares[3] == pytest.approx(0.881, abs=5e-4)


def test_vonruette2025_runs_train_as_gidd_easydel():
    runs = sweeps.expand("compute_bound", preset="vonruette2025")
    assert {r.noise.family for r in runs} == {"autoregressive", "hybrid"}
    assert {r.noise.mixing_shift for r in runs if r.noise.family == "hybrid"} == set(GIDD_SHIFTS)
    for r in runs:
        assert r.train.flop_convention == "vonruette2025"
        p = plan(r, r.data.vocab_size)
        assert p.n_time_cond == 0 and p.model_cfg.time_cond == "none"
        if r.noise.family == "hybrid":
            assert r.noise.resolved_train_loss() == "gidd"
            assert r.noise.t_min == pytest.approx(t_min_for_log_snr(9.0, r.noise.eps))
            assert (r.noise.p_independent, r.noise.p_prompt) == (0.2, 0.2)
        else:
            assert (r.noise.t_min, r.noise.p_independent, r.noise.p_prompt) == (0.0, 0.0, 0.0)
        # the budget is counted their way: M per token x tokens
        assert abs(p.steps * p.flops_per_step - r.train.budget_flops) <= 0.01 * r.train.budget_flops
        assert p.flops_per_step == pytest.approx(
            p.flops_per_token["vonruette2025"] * r.train.batch_size * r.train.seq_len)


def test_sahoo2026_runs_train_as_scaling_dllms():
    runs = sweeps.expand("compute_bound", preset="sahoo2026")
    assert {r.noise.family for r in runs} == {"autoregressive", "masked", "uniform", "esolm"}
    for r in runs:
        assert r.train.flop_convention == "sahoo2026"
        p = plan(r, r.data.vocab_size)
        fam = r.noise.family
        if fam in ("masked", "esolm"):    # MDLM and Eso-LM: low_var CE, no time conditioning
            assert r.noise.resolved_train_loss() == "ce" and p.model_cfg.time_cond == "none"
        if fam == "esolm":
            assert r.noise.alpha_0 == 1.0          # scripts/esolm/train.sh algo.alpha_0=1.0
        if fam == "uniform":             # Duo: its ELBO, adaLN from a 128-wide condition
            assert r.noise.resolved_train_loss() == "elbo"
            assert (p.model_cfg.time_cond, p.model_cfg.cond_dim) == ("adaln", 128)
            assert p.n_time_cond > 0
        if fam != "autoregressive":
            assert r.noise.t_min == 1e-3
        assert p.n_backbone == backbone_params(p.model_cfg) == param_counts(p.model_cfg).backbone


def test_project_definitions_change_nothing():
    # the default presets' runs are what they were before definitions existed: default noise
    # fields, the matmul convention, the family's own time conditioning
    for preset in ("laptop", "quick", "cluster"):
        assert PRESETS[preset].definitions is PROJECT
        for r in sweeps.expand("compute_bound", preset=preset):
            assert r.train.flop_convention == "matmul" and r.time_cond is None
            assert (r.noise.train_loss, r.noise.t_min, r.noise.p_independent,
                    r.noise.p_prompt) == ("auto", 0.0, 0.0, 0.0)


def test_bad_definitions_are_named():
    with pytest.raises(ValueError, match="flop_convention 'flops' is unknown"):
        Definitions(name="x", flop_convention="flops")
    with pytest.raises(ValueError, match="train_loss 'ce' for family 'uniform'"):
        Definitions(name="x", train_loss=(("uniform", "ce"),))
    with pytest.raises(ValueError, match="time_cond 'film' for family 'masked'"):
        Definitions(name="x", time_cond=(("masked", "film"),))
    assert set(DEFINITIONS) == {"project", "vonruette2025", "sahoo2026"}
    assert all(d.noise_fields(f) == {} for d in DEFINITIONS.values()
               for f, spec in FAMILIES.items() if spec.causal)


def test_parent_run_records_the_definitions(tmp_path):
    from orchestrator.tracking import SweepTracking

    t = SweepTracking(f"sqlite:///{tmp_path / 'mlflow.db'}", "compute_bound")
    parent = t.parent_run("compute_bound", "abc123", 3, "sahoo2026", run_ids=["a", "b", "c"],
                          definitions=PRESETS["sahoo2026"].definitions.name)
    tags = t.client.get_run(parent).data.tags
    assert tags[M.TAG_DEFINITIONS] == "sahoo2026" and tags[M.TAG_PRESET] == "sahoo2026"
