"""--set train.batch_size=law:FITS (sweeps/from_law.py): each run's batch and LR come from the
fitted laws of its own group; a bad file or a group without a law fails naming it."""
import json

import pytest

import sweeps
from orchestrator.cli import read_laws
from trainer.plan import plan


def _expand(name, override):
    return sweeps.expand(name, overrides=(override,), law_files=read_laws([override]))


def _fits(tmp_path, groups):
    p = tmp_path / "fits.json"
    p.write_text(json.dumps({"groups": groups}))
    return str(p)


def _law(k, e):
    return {"coefficient": {"value": k}, "exponent": {"value": e}}


def test_batch_and_lr_follow_each_groups_law(tmp_path):
    path = _fits(tmp_path, {"autoregressive": {"batch_law": _law(3.3e-3, 0.8225),
                                               "lr_law": _law(2e-4, 0.341)},
                            "masked": {"batch_law": _law(1e-3, 0.9), "lr_law": _law(1e-4, 0.4)}})
    runs = _expand("smoke", f"train.batch_size=law:{path}")
    base = {(r.noise.family, r.size): r for r in sweeps.expand("smoke")}
    assert runs
    for r in runs:
        k, b, kl, c = ((3.3e-3, 0.8225, 2e-4, 0.341) if r.noise.family == "autoregressive"
                       else (1e-3, 0.9, 1e-4, 0.4))
        b0 = base[(r.noise.family, r.size)]
        p = plan(b0, b0.data.vocab_size)
        tokens = b0.train.budget_flops * b0.train.batch_size * b0.train.seq_len / p.flops_per_step
        assert r.train.batch_size == max(1, round(k * tokens ** b / r.train.seq_len))
        assert r.train.lr == pytest.approx(kl * (r.train.batch_size * r.train.seq_len) ** c)
    assert len({r.train.batch_size for r in runs}) > 1      # D differs, so B* does


def test_lr_alone_keeps_the_batch(tmp_path):
    path = _fits(tmp_path, {f: {"lr_law": _law(2e-4, 0.341)} for f in ("autoregressive", "masked")})
    runs = _expand("smoke", f"train.lr=law:{path}")
    assert {r.train.batch_size for r in runs} == {8}
    for r in runs:
        assert r.train.lr == pytest.approx(2e-4 * (8 * 64) ** 0.341)


def test_missing_file_or_group_is_named(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        _expand("smoke", f"train.batch_size=law:{tmp_path}/nope.json")
    path = _fits(tmp_path, {"autoregressive": {"batch_law": _law(1e-3, 0.8), "lr_law": _law(1e-4, 0.3)}})
    with pytest.raises(ValueError, match="group 'masked' has no batch_law"):
        _expand("smoke", f"train.batch_size=law:{path}")
    with pytest.raises(ValueError, match="only train.batch_size, train.lr"):
        _expand("smoke", f"train.seed=law:{path}")
