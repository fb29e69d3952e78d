"""FLOP accounting: a hand count, the 6N switch, solvers that invert each other, and analytic
parameter counts against the built model."""

from __future__ import annotations

import dataclasses
import random
import subprocess
import sys

import pytest
import torch

from core import flops
from core.ladder import LADDER, ModelConfig, model_config
from trainer.model.transformer import Transformer

# Tiny configuration counted by hand below: L=2, d=8, T=4, V_out=10 (V_in=11: one mask token),
# GELU ratio 4 -> h=32, 2 heads of width 4.
TINY = ModelConfig(vocab_size=11, out_vocab_size=10, n_layer=2, d_model=8, n_head=2, seq_len=4)


def test_hand_count_forward_gelu() -> None:
    L, d, T, h, V_out = 2, 8, 4, 32, 10
    qkv = 2 * 3 * d * d  # 384
    scores = 2 * T * d  # 64
    values = 2 * T * d  # 64
    out_proj = 2 * d * d  # 128
    mlp = 2 * 2 * d * h  # 1024
    per_layer = qkv + scores + values + out_proj + mlp
    assert per_layer == 1664
    unembed = 2 * d * V_out  # 160
    forward = L * per_layer + unembed
    assert forward == 3488
    assert flops.forward_flops_per_token(TINY) == 3488.0
    assert flops.train_flops_per_token(TINY) == 3 * 3488.0 == 10464.0


def test_hand_count_params_and_6n() -> None:
    d, h = 8, 32
    per_block = 2 * d + 3 * d * d + d * d + 2 * d * h  # 2 norms, qkv, out proj, MLP = 784
    non_emb = 2 * per_block + d  # + final norm = 1576
    total = non_emb + 11 * d + d * 10  # + embedding (V_in=11) + head (V_out=10) = 1744
    assert (non_emb, total) == (1576, 1744)
    assert flops.param_counts(TINY) == (1576, 1744)
    assert flops.train_flops_per_token(TINY, "6N") == 6 * 1576 == 9456.0


def test_hand_count_time_cond_amortised_per_token() -> None:
    cfg = dataclasses.replace(TINY, time_cond=True)
    L, d, T = 2, 8, 4
    per_sequence = 2 * 2 * d * d + L * 2 * 6 * d * d + 2 * 2 * d * d  # 256 + 1536 + 256 = 2048
    assert flops.forward_flops_per_token(cfg) == 3488 + per_sequence / T == 4000.0
    time_params = 2 * (d * d + d) + L * (6 * d * d + 6 * d) + (2 * d * d + 2 * d)  # 1152
    assert flops.param_counts(cfg) == (1576 + time_params, 1744 + time_params)


def test_hand_count_swiglu() -> None:
    cfg = dataclasses.replace(TINY, mlp="swiglu")
    h = 24  # round(4 * 2/3 * 8) = 21, rounded up to a multiple of 8
    assert cfg.mlp_hidden() == h
    per_layer = 2 * 3 * 64 + 2 * 4 * 8 + 2 * 4 * 8 + 2 * 64 + 2 * 3 * 8 * h  # 1792
    assert flops.forward_flops_per_token(cfg) == 2 * per_layer + 2 * 8 * 10 == 3744.0


def test_causal_counts_full_context() -> None:
    # Chinchilla convention: no halving of the attention terms for a causal mask.
    causal = dataclasses.replace(TINY, causal=True)
    assert flops.forward_flops_per_token(causal) == flops.forward_flops_per_token(TINY)


def test_unknown_convention_names_it() -> None:
    with pytest.raises(ValueError, match="bogus"):
        flops.train_flops_per_token(TINY, "bogus")
    with pytest.raises(ValueError, match="bogus"):
        flops.steps_for_budget(1e12, TINY, 64, convention="bogus")


def _random_config(rng: random.Random) -> ModelConfig:
    n_head = rng.choice([1, 2, 4])
    return ModelConfig(
        vocab_size=rng.randint(10, 5000),
        out_vocab_size=rng.randint(2, 10),
        n_layer=rng.randint(1, 12),
        d_model=n_head * 2 * rng.randint(1, 48),
        n_head=n_head,
        seq_len=rng.randint(1, 2048),
        mlp=rng.choice(["gelu", "swiglu"]),
        mlp_ratio=rng.choice([2.0, 4.0, 8 / 3]),
        time_cond=rng.random() < 0.5,
    )


@pytest.mark.parametrize("convention", ["matmul", "6N"])
def test_steps_and_budget_invert(convention: str) -> None:
    rng = random.Random(1234)
    for _ in range(300):
        cfg = _random_config(rng)
        tokens = rng.choice([1, 64, 1024, 8 * 128, 256 * 2048])
        steps = rng.randint(1, 100_000)
        budget = flops.flops_for_steps(steps, cfg, tokens, convention)
        assert flops.steps_for_budget(budget, cfg, tokens, convention) == steps
        # An arbitrary budget of >= 50 steps is hit within 1% after rounding.
        step = flops.flops_for_steps(1, cfg, tokens, convention)
        budget = step * rng.uniform(50, 1e5)
        n = flops.steps_for_budget(budget, cfg, tokens, convention)
        achieved = flops.flops_for_steps(n, cfg, tokens, convention)
        assert abs(achieved - budget) <= 0.01 * budget
        assert flops.tokens_for_budget(budget, cfg, convention) == pytest.approx(
            budget / step * tokens, rel=1e-12
        )


def test_compute_optimal_flops_per_token() -> None:
    # STACK.md's form: f* = 6 sqrt(C / 120) at 20 tokens per parameter.
    for budget in (1e10, 1e12, 3.7e15, 1e20):
        f = flops.compute_optimal_flops_per_token(budget)
        assert f == pytest.approx(6 * (budget / 120) ** 0.5, rel=1e-12)
        # Inverts: D* = C / f* is 20 x the equivalent parameter count N* = f* / 6.
        assert budget / f == pytest.approx(20 * f / 6, rel=1e-12)
    assert flops.compute_optimal_flops_per_token(1e12) == pytest.approx(5.477e5, rel=1e-3)
    # More tokens per parameter -> a smaller model at the same budget.
    assert flops.compute_optimal_flops_per_token(1e12, 80) == pytest.approx(
        flops.compute_optimal_flops_per_token(1e12) / 2, rel=1e-12)
    for bad in (0.0, -1.0):
        with pytest.raises(ValueError, match="budget_flops"):
            flops.compute_optimal_flops_per_token(bad)
        with pytest.raises(ValueError, match="tokens_per_param"):
            flops.compute_optimal_flops_per_token(1e12, bad)


def test_impossible_budgets_raise() -> None:
    step = flops.flops_for_steps(1, TINY, 64)  # 64 tokens x 10464 = 669,696 FLOPs
    assert step == 64 * 10464
    with pytest.raises(ValueError, match=r"smaller than one step \(6\.697e\+05 FLOPs"):
        flops.steps_for_budget(0.5 * step, TINY, 64)
    with pytest.raises(ValueError, match="within 1%"):
        flops.steps_for_budget(1.5 * step, TINY, 64)  # 1 or 2 steps: 33% off either way
    assert flops.steps_for_budget(100.4 * step, TINY, 64) == 100


def test_mfu() -> None:
    assert flops.mfu(117e9, 234e9) == 0.5
    with pytest.raises(ValueError, match="peak"):
        flops.mfu(1.0, 0.0)


def _numel(cfg: ModelConfig) -> tuple[int, int]:
    with torch.device("meta"):  # builds the real module tree without allocating memory
        model = Transformer(cfg)
    return model.num_params(non_embedding=True), sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("size", list(LADDER))
def test_param_counts_match_built_model(size: str) -> None:
    for mlp in ("gelu", "swiglu"):
        for time_cond in (False, True):
            cfg = model_config(
                size, vocab_size=261, out_vocab_size=260, seq_len=128, mlp=mlp, time_cond=time_cond
            )
            assert flops.param_counts(cfg) == _numel(cfg), (size, mlp, time_cond)


def test_param_counts_match_on_cpu_build() -> None:
    cfg = dataclasses.replace(TINY, time_cond=True, mlp="swiglu")
    model = Transformer(cfg)
    assert flops.param_counts(cfg)[1] == sum(p.numel() for p in model.parameters())


def test_flops_module_does_not_import_torch() -> None:
    code = "import sys, core.flops; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
