"""Transformer behaviour: shapes, causality, time conditioning, init loss, overfitting, ladder,
config validation. Tiny CPU models only (seconds in total)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from core.ladder import LADDER, ModelConfig, model_config
from trainer.model.transformer import Transformer, ladder_rows

BASE = ModelConfig(vocab_size=33, out_vocab_size=32, n_layer=2, d_model=32, n_head=4, seq_len=16)


def _tokens(seed: int, B: int = 3, T: int = 16, V: int = 32) -> torch.Tensor:
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("mlp", ["gelu", "swiglu"])
@pytest.mark.parametrize("time_cond", ["none", "adaln", "adaln_full"])
def test_output_shape(mlp: str, time_cond: str) -> None:
    torch.manual_seed(0)
    model = Transformer(dataclasses.replace(BASE, mlp=mlp, time_cond=time_cond, cond_dim=16))
    idx = _tokens(0, B=3, T=10)  # shorter than seq_len is allowed
    t = torch.rand(3) if time_cond != "none" else None
    out = model(idx, t)
    assert out.shape == (3, 10, 32)
    positions = torch.rand(3, 10, generator=torch.Generator().manual_seed(1)) < 0.4
    # logits at selected positions only: the same rows as the full forward's, in row-major order
    torch.testing.assert_close(model(idx, t, positions), out[positions], rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="positions must have shape"):
        model(idx, t, positions[:, :5])


def test_t_required_iff_time_cond() -> None:
    idx = _tokens(0)
    with pytest.raises(ValueError, match="time_cond"):
        Transformer(BASE)(idx, torch.rand(3))
    for option in ("adaln", "adaln_full"):
        with pytest.raises(ValueError, match="time_cond"):
            Transformer(dataclasses.replace(BASE, time_cond=option))(idx)
    with pytest.raises(ValueError, match="time_cond"):   # the pre-issue-13 bool is not a name
        dataclasses.replace(BASE, time_cond=True)
    with pytest.raises(ValueError, match="seq_len"):
        Transformer(BASE)(_tokens(0, T=17))


@pytest.mark.parametrize("causal", [True, False])
def test_causality(causal: bool) -> None:
    torch.manual_seed(0)
    model = Transformer(dataclasses.replace(BASE, causal=causal)).eval()
    idx = _tokens(1)
    k = 9
    changed = idx.clone()
    changed[:, k] = (changed[:, k] + 1) % 32
    with torch.no_grad():
        a, b = model(idx), model(changed)
    past_diff = (a[:, :k] - b[:, :k]).abs().max().item()
    if causal:
        assert past_diff == 0.0
    else:
        assert past_diff > 1e-4
    assert (a[:, k:] - b[:, k:]).abs().max().item() > 1e-4  # the changed position and later


def test_rotary_makes_bidirectional_model_position_aware() -> None:
    # Without positions a bidirectional model is permutation-equivariant; rotary breaks that.
    torch.manual_seed(0)
    model = Transformer(BASE).eval()
    idx = _tokens(2, B=1)
    perm = torch.randperm(16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert not torch.allclose(model(idx)[:, perm], model(idx[:, perm]), atol=1e-4)


@pytest.mark.parametrize("option", ["adaln", "adaln_full"])
def test_time_cond_zero_init_then_depends_on_t(option: str) -> None:
    torch.manual_seed(0)
    cfg = dataclasses.replace(BASE, time_cond=option)
    model = Transformer(cfg).eval()
    idx = _tokens(3)
    t0, t1 = torch.full((3,), 0.1), torch.full((3,), 0.9)
    with torch.no_grad():
        assert torch.equal(model(idx, t0), model(idx, t1))
        # Same weights without time conditioning: identical function at init.
        plain = Transformer(BASE).eval()
        plain.load_state_dict(model.state_dict(), strict=False)
        assert torch.allclose(plain(idx), model(idx, t0), atol=1e-6)
        for block in model.blocks:
            block.ada.weight.normal_(0.0, 0.02)
        model.ada_f.weight.normal_(0.0, 0.02)
        assert (model(idx, t0) - model(idx, t1)).abs().max().item() > 1e-4


def test_initial_loss_is_log_vocab() -> None:
    torch.manual_seed(0)
    cfg = dataclasses.replace(BASE, out_vocab_size=32, vocab_size=33)
    model = Transformer(cfg)
    idx, targets = _tokens(4, B=8), _tokens(5, B=8)
    with torch.no_grad():
        loss = F.cross_entropy(model(idx).flatten(0, 1), targets.flatten()).item()
    assert abs(loss - math.log(32)) < 0.1


def test_tiny_model_overfits_fixed_batch() -> None:
    torch.manual_seed(0)
    model = Transformer(BASE)
    idx, targets = _tokens(6, B=4), _tokens(7, B=4)  # random labels: pure memorisation
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    losses = []
    for _ in range(100):
        loss = F.cross_entropy(model(idx).flatten(0, 1), targets.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], (losses[0], losses[-1])


def test_residual_projection_init_scaled() -> None:
    torch.manual_seed(0)
    cfg = model_config("L8-d320", vocab_size=64, out_vocab_size=64, seq_len=8)
    model = Transformer(cfg)
    proj_std = model.blocks[0].mlp.proj.weight.std().item()
    qkv_std = model.blocks[0].attn.qkv.weight.std().item()
    assert proj_std == pytest.approx(0.02 / math.sqrt(16), rel=0.05)
    assert qkv_std == pytest.approx(0.02, rel=0.05)


def test_ladder_spans_1k_to_20m_plus_cluster_rows() -> None:
    rows = ladder_rows(vocab=512, seq_len=128)
    non_emb = [r[4] for r in rows]
    assert non_emb == sorted(non_emb)  # the table is ordered by size
    assert all(1.4 <= b / a <= 3.0 for a, b in zip(non_emb, non_emb[1:]))  # no gaps, no near-dups
    laptop = [n for n in non_emb if n <= 25_000_000]  # the CPU rows
    assert 14 <= len(laptop) <= 16
    # L1-d8: 792. The laptop diffusion isoFLOP minima at 6e11-2.7e12 FLOPs sit at ~6e4-2e5 FLOPs
    # per token (sweeps/recipe.py), so the ladder reaches below L2-d24 (13,944) to bracket them.
    assert 500 <= laptop[0] <= 1_000
    assert 15_000_000 <= laptop[-1] <= 25_000_000  # L12-d384: 21,243,264
    # The cluster preset's budgets (1e17-1e20 FLOPs, sweeps/recipe.py) need compute-optimal models
    # up to ~1B parameters with sizes above them: the ladder goes on to the billions.
    assert 1_000_000_000 <= non_emb[-1] <= 4_000_000_000  # L36-d2560: 2,831,342,080
    assert len(LADDER) <= 24
    for name, s in LADDER.items():
        assert name == f"L{s.n_layer}-d{s.d_model}"
        assert s.d_model // s.n_head >= 8


def test_model_config_unknown_size_lists_names() -> None:
    with pytest.raises(ValueError, match="L2-d64"):
        model_config("huge", vocab_size=10, out_vocab_size=10, seq_len=8)
    cfg = model_config("L2-d64", vocab_size=10, out_vocab_size=9, seq_len=8, mlp="swiglu")
    assert (cfg.n_layer, cfg.d_model, cfg.n_head, cfg.mlp) == (2, 64, 4, "swiglu")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("vocab_size", 0),
        ("out_vocab_size", 34),  # > vocab_size
        ("n_layer", 0),
        ("d_model", 30),  # not divisible by n_head=4
        ("n_head", 8),  # head_dim 4 fine; see odd case below
        ("seq_len", -1),
        ("mlp", "relu"),
        ("mlp_ratio", 0.0),
        ("rope_base", -1.0),
        ("init_std", 0.0),
        ("causal", 1),
    ],
)
def test_bad_config_names_field(field: str, value: object) -> None:
    if field == "n_head":  # d_model 24, 4 heads -> head_dim 6 is even; 8 heads -> 3 is odd
        with pytest.raises(ValueError, match="n_head"):
            dataclasses.replace(BASE, d_model=24, n_head=8)
        return
    with pytest.raises(ValueError, match=field):
        dataclasses.replace(BASE, **{field: value})


def test_config_is_frozen_and_keyword_only() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        BASE.n_layer = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        ModelConfig(33, 32, 2, 32, 4, 16)  # type: ignore[misc]
