"""Issue 13, item 1: N is the same backbone count for every family; time conditioning is a named
per-run choice, counted apart (never in N or a 6N-style FLOP count). CPU, seconds."""
from __future__ import annotations

import dataclasses
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from analysis import schema as S
from analysis.load import final_points
from core import flops
from core.ladder import LADDER, TIME_CONDS, ModelConfig, model_config, takes_t
from trainer.config import RunConfig, TrainConfig
from trainer.families.registry import FAMILIES, FamilySpec, NoiseConfig
from trainer.model.transformer import Transformer, ladder_rows
from trainer.plan import plan

VOCAB = 512
BIG = TrainConfig(budget_flops=1e22)  # enough steps for every ladder size to hit its budget


def _plan(size: str, family: str, **kw):
    return plan(RunConfig(size=size, noise=NoiseConfig(family=family), train=BIG, **kw), VOCAB)


@pytest.mark.parametrize("size", list(LADDER))
def test_every_family_has_the_same_backbone_n_at_every_ladder_size(size):
    plans = {name: _plan(size, name) for name in FAMILIES}
    backbone = {p.n_backbone for p in plans.values()}
    assert len(backbone) == 1, {n: p.n_backbone for n, p in plans.items()}
    assert backbone == {flops.backbone_params(plans["masked"].model_cfg)}
    for name, p in plans.items():
        # conditioning is reported apart and is exactly the model's own layers
        assert p.n_time_cond == flops.time_cond_params(p.model_cfg), name
        assert p.n_nonembed == p.n_backbone + p.n_time_cond
        assert p.n_total == p.n_nonembed + flops.embedding_params(p.model_cfg)
        assert (p.n_time_cond > 0) == (FAMILIES[name].time_cond_default != "none"), name


def test_the_uniform_over_masked_n_ratio_of_the_issue_is_one_now():
    # issue 13: uniform N / masked N was 1.29 / 1.40 / 1.50 (total) and 1.68 / 1.67 / 1.59
    # (non-embedding) at L2-d32 / L2-d64 / L4-d128 with full-width adaLN.
    for size in ("L2-d32", "L2-d64", "L4-d128"):
        n = {f: _plan(size, f) for f in ("uniform", "masked")}
        assert n["uniform"].n_backbone == n["masked"].n_backbone
        legacy = dataclasses.replace(n["uniform"].model_cfg, time_cond="adaln_full")
        old_ratio = flops.param_counts(legacy).nonembed / n["masked"].n_nonembed
        assert old_ratio > 1.5                                   # the bug the issue measured


@pytest.mark.parametrize("option", list(TIME_CONDS))
@pytest.mark.parametrize("size", ["L1-d8", "L2-d64", "L6-d256", "L18-d768"])
def test_built_model_splits_into_backbone_time_cond_and_embedding(option, size):
    cfg = model_config(size, vocab_size=VOCAB + 1, out_vocab_size=VOCAB, seq_len=128,
                       time_cond=option)
    with torch.device("meta"):
        model = Transformer(cfg)
    groups = model.param_groups()
    counts = flops.param_counts(cfg)
    assert groups == {"backbone": counts.backbone, "time_cond": counts.time_cond,
                      "embedding": counts.embedding}
    assert sum(p.numel() for p in model.parameters()) == counts.total == sum(groups.values())
    assert (counts.time_cond > 0) == takes_t(cfg) == (option != "none")


def test_adaln_mirrors_the_papers_dit_shapes():
    # 2602.15014's DiT (scaling-dllms models/dit.py): TimestepEmbedder(cond_dim) = sinusoid 256 ->
    # Linear(256, c), SiLU, Linear(c, c); adaLN_modulation = Linear(c, 6·dim) per block and
    # Linear(c, 2·dim) in the final layer, all with biases.
    cfg = ModelConfig(vocab_size=33, out_vocab_size=32, n_layer=2, d_model=64, n_head=4,
                      seq_len=16, time_cond="adaln")
    model = Transformer(cfg)
    assert cfg.cond_dim == 128
    assert [tuple(m.weight.shape) for m in (model.time_mlp[0], model.time_mlp[2], model.ada_f)] \
        == [(128, 256), (128, 128), (128, 128)]
    assert all(tuple(b.ada.weight.shape) == (6 * 64, 128) for b in model.blocks)
    assert model(torch.zeros(2, 16, dtype=torch.long), torch.rand(2)).shape == (2, 16, 32)
    narrow = Transformer(dataclasses.replace(cfg, cond_dim=16))
    assert tuple(narrow.blocks[0].ada.weight.shape) == (6 * 64, 16)


def test_adaln_full_is_the_pre_issue_13_model():
    # The old full-width layout's shapes (sinusoid d -> d -> d, adaLN from d), kept by name so
    # that the runs made before issue 13 can be reproduced.
    cfg = ModelConfig(vocab_size=33, out_vocab_size=32, n_layer=2, d_model=32, n_head=4,
                      seq_len=16, time_cond="adaln_full")
    torch.manual_seed(0)
    model = Transformer(cfg)
    assert [tuple(m.weight.shape) for m in (model.time_mlp[0], model.time_mlp[2], model.ada_f)] \
        == [(32, 32), (32, 32), (64, 32)]


def test_sahoo2026_with_adaln_is_their_json_without_fudge():
    # scaling-dllms configs/flops/113M.json: 449.41e9 forward FLOPs per 2048-token sequence. Its
    # DiT has adaLN with cond_dim 128; with time_cond "adaln" the only difference left is the two
    # SiLUs (2 x 128) and the rotary table's einsum (T x head_dim / 2), ~1e-6 of the total.
    T = 2048
    cfg = ModelConfig(vocab_size=32001, out_vocab_size=32001, n_layer=12, d_model=768, n_head=12,
                      seq_len=T, time_cond="adaln")
    forward_seq = flops.train_flops_per_token(cfg, "sahoo2026") / 3 * T
    assert forward_seq + 2 * 128 + T * (768 // 12 // 2) == pytest.approx(449.41e9, rel=2e-5)


def test_run_config_time_cond_is_a_named_option_with_family_defaults():
    defaults = {name: RunConfig(noise=NoiseConfig(family=name)).resolved_time_cond()
                for name in FAMILIES}
    assert defaults == {"autoregressive": "none", "masked": "none", "uniform": "adaln",
                        "hybrid": "none", "esolm": "none"}
    cfg = RunConfig(noise=NoiseConfig(family="masked"), time_cond="adaln", cond_dim=64)
    p = plan(cfg, VOCAB)
    assert (p.model_cfg.time_cond, p.model_cfg.cond_dim) == ("adaln", 64)
    assert p.n_time_cond == flops.time_cond_params(p.model_cfg) > 0
    for bad, field in ((True, "time_cond"), ("adaLN", "time_cond"), (0, "cond_dim")):
        with pytest.raises(ValueError, match=field):
            RunConfig(**{field: bad})
    with pytest.raises(ValueError, match="no diffusion time"):
        RunConfig(noise=NoiseConfig(family="autoregressive"), time_cond="adaln")
    RunConfig(noise=NoiseConfig(family="autoregressive"), time_cond="none")   # explicit is fine
    with pytest.raises(ValueError, match="time_cond_default"):
        FamilySpec(name="toy", impl="m:C", time_cond_default=True)        # type: ignore[arg-type]


def test_run_id_hashes_the_resolved_option_not_how_it_was_reached():
    uniform = RunConfig(noise=NoiseConfig(family="uniform"))
    assert uniform.run_id() == RunConfig(noise=NoiseConfig(family="uniform"),
                                         time_cond="adaln").run_id()
    assert uniform.run_id() != RunConfig(noise=NoiseConfig(family="uniform"),
                                         time_cond="none").run_id()
    assert uniform.run_id() != dataclasses.replace(uniform, cond_dim=64).run_id()


def test_ladder_cli_prints_backbone_time_cond_and_embedding():
    out = subprocess.run([sys.executable, "-m", "trainer.model.transformer", "--time-cond",
                          "adaln"], check=True, capture_output=True, text=True).stdout
    assert "N (backbone)" in out and "t-cond" in out and "embedding" in out
    rows = {r[0]: r for r in ladder_rows(VOCAB, 128, "adaln")}
    name, _, _, _, backbone, tc, emb, total = rows["L2-d64"]
    line = next(ln for ln in out.splitlines() if ln.startswith("L2-d64 "))
    assert line.split()[4:] == [f"{backbone:,}", f"{tc:,}", f"{emb:,}", f"{total:,}"]
    assert backbone == ladder_rows(VOCAB, 128, "none")[7][4]       # the same N without t-cond


def test_laws_fit_on_the_backbone_n_by_default():
    def run(rid, family, n_backbone, n_total):
        return {"run_id": rid, "mlflow_run_id": rid, "family": family, "knob": np.nan,
                "budget": 1e18, "step": 10, "n_backbone": n_backbone, "n_time_cond": 0.0,
                "n_nonembed": n_backbone, "n_total": n_total, "tokens": 1e4, "flops": 1e10,
                "val_nelbo": 3.0, "is_final": True, "status": "FINISHED"}

    runs = pd.DataFrame([run("a", "masked", 1e5, 3e5), run("b", "uniform", 1e5, 5e5)])
    assert S.DEFAULT_N_COLUMN == "n_backbone" and set(S.N_COLUMNS) <= set(S.RUN_COLUMNS)
    final, _ = final_points(runs)
    assert final["N"].tolist() == [1e5, 1e5]
    assert final_points(runs, n_column="n_total")[0]["N"].tolist() == [3e5, 5e5]


def test_old_runs_get_their_backbone_n_from_their_config():
    # A run logged before n_params_backbone existed: N is recomputed from its size and MLP (the
    # backbone depends on nothing else), so an existing study can be refitted on the corrected N.
    from analysis.conventions import backbone as _backbone

    for size, mlp in (("L2-d64", "gelu"), ("L4-d128", "swiglu")):
        expect = flops.backbone_params(model_config(size, vocab_size=9, out_vocab_size=9,
                                                    seq_len=8, mlp=mlp))
        assert _backbone({"mlp": mlp}, size) == expect
        assert _backbone({"mlp": mlp, "n_params_backbone": "123"}, size) == 123.0  # logged wins
    assert np.isnan(_backbone({}, "s0"))                           # not a ladder size: unknown
