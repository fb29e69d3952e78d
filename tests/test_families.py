"""The family registry's contract (trainer/families/registry.py): every registered family builds, is
its registered class and samples; a new family is one class and one registry line, and flows
through config validation, the sweeps' knob expansion, the trial tags and the dry-run table with no
other file touched; nothing outside the registry branches on a family's name. CPU, seconds."""
from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path

import pytest
import torch

import sweeps
from core.ladder import ModelConfig
from orchestrator.estimate import estimate, table
from trainer.config import RunConfig
from trainer.families.masked import Masked
from trainer.families.registry import FAMILIES, FamilySpec, Knob, NoiseConfig, build_family
from trainer.job.objective import batch_loss
from trainer.job.train import _tags
from trainer.model.transformer import Transformer
from trainer.plan import plan
from trainer.sampling.samplers import Sampler, generate

REPO = Path(__file__).resolve().parents[1]
V = 12


def tiny_model(fam) -> Transformer:
    torch.manual_seed(0)
    return Transformer(ModelConfig(vocab_size=fam.input_vocab_size, out_vocab_size=V, n_layer=1,
                                   d_model=16, n_head=2, seq_len=8, causal=fam.causal,
                                   time_cond=fam.time_cond_default))


@pytest.mark.parametrize("name", list(FAMILIES))
def test_every_registered_family_builds_is_its_class_and_samples(name):
    spec = FAMILIES[name]
    fam = build_family(NoiseConfig(family=name), V)
    assert type(fam) is spec.load() and fam.spec is spec and fam.name == name
    assert (fam.causal, fam.uses_mask_token, fam.time_cond_default) == (
        spec.causal, spec.uses_mask_token, spec.time_cond_default)
    assert fam.input_vocab_size == spec.input_vocab_size(V) == V + spec.uses_mask_token
    assert isinstance(fam.sampler, Sampler)
    model = tiny_model(fam)
    window = torch.randint(0, V, (3, 9), generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(batch_loss(model, fam, window, torch.Generator().manual_seed(1)))
    out = generate(model, fam, n=2, seq_len=8, steps=4, seed=0, start_id=0)
    assert out.tokens.shape == (2, 8) and 0 <= out.tokens.min() and out.tokens.max() < V


def test_every_knob_is_a_float_field_of_noise_config_whose_default_it_accepts():
    hints = typing.get_type_hints(NoiseConfig)
    defaults = NoiseConfig()
    for spec in FAMILIES.values():
        if spec.knob is not None:
            assert hints[spec.knob.field] is float, spec.knob
            assert spec.knob.accepts(getattr(defaults, spec.knob.field)), spec.knob


def test_a_family_object_is_only_its_registered_class():
    with pytest.raises(ValueError, match="trainer.families.uniform:Uniform"):
        Masked(NoiseConfig(family="uniform"), V)
    with pytest.raises(ValueError, match="default_train_loss"):
        FamilySpec(name="x", impl="m:X", train_losses=("elbo",), default_train_loss="ce")


# --- a new family: one class and one registry line ---------------------------------------------------

class Toy(Masked):
    """Masked noise under another name, with a knob of its own range: the smallest new family."""


TOY = FamilySpec(name="toy", impl=f"{__name__}:Toy", uses_mask_token=True,
                 train_losses=("elbo", "ce"), default_train_loss="ce",
                 knob=Knob(field="mixing_shift", lo=0.0, hi=0.5, label="a toy shift"))


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setitem(FAMILIES, "toy", TOY)        # the registry line, for this test only


def test_a_registered_toy_family_flows_through_configs_sweeps_tags_and_table(toy):
    # config validation: the knob's range is the spec's, with the same message as before
    with pytest.raises(ValueError, match=re.escape("noise.mixing_shift must be in [0, 0.5], got 0.7")):
        NoiseConfig(family="toy", mixing_shift=0.7)
    assert NoiseConfig(family="masked", mixing_shift=0.7).knob() is None   # hybrid's range
    with pytest.raises(ValueError, match=re.escape("noise.mixing_shift must be in [-1000, 1000], got 1500")):
        NoiseConfig(family="masked", mixing_shift=1500.0)
    assert NoiseConfig(family="toy", mixing_shift=0.2).knob() == 0.2
    with pytest.raises(ValueError, match="no knob"):
        NoiseConfig(family="masked").with_knob(0.2)
    assert RunConfig(noise=NoiseConfig(family="toy")).use_time_cond() is False
    assert NoiseConfig(family="toy").resolved_train_loss() == "ce"

    # the sweeps: one run per knob value for the toy, none for a family without a knob
    runs = sweeps.expand("smoke", families=("toy", "masked"), knobs=(0.1, 0.4))
    by_family = {f: [r for r in runs if r.noise.family == f] for f in ("toy", "masked")}
    assert sorted({r.noise.mixing_shift for r in by_family["toy"]}) == [0.1, 0.4]
    assert len(by_family["toy"]) == 2 * len(by_family["masked"]) > 0
    with pytest.raises(ValueError, match="hybrid, toy"):
        sweeps.expand("smoke", families=("masked",), knobs=(0.1,))

    # the trial tags and the dry-run table read the knob through the spec
    toy_run, masked_run = by_family["toy"][0], by_family["masked"][0]
    p = plan(toy_run, toy_run.data.vocab_size)
    assert p.model_cfg.vocab_size == toy_run.data.vocab_size + 1 and not p.model_cfg.causal
    assert _tags(p)["dlm.family"] == "toy" and _tags(p)["dlm.knob"] == "0.1"
    assert _tags(plan(masked_run, masked_run.data.vocab_size))["dlm.knob"] == ""
    rows = estimate([toy_run, masked_run], progress=lambda line: None,
                    tokens_per_s=lambda c, p: 1e5)
    lines = table(rows, 1).splitlines()
    assert re.search(r"\btoy\s+mixing_shift=0\.1\s", lines[2]) and re.search(r"\bmasked\s+L", lines[3])
    assert _tags(p)["dlm.knob_label"] == "mixing_shift=0.1"              # no symbol, no derived value

    # the trainer: built from its line, trains and samples with the sampler it inherits
    fam = build_family(dataclasses.replace(toy_run.noise), V)
    assert isinstance(fam, Toy) and fam.name == "toy"
    model = tiny_model(fam)
    window = torch.randint(0, V, (3, 9), generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(batch_loss(model, fam, window, torch.Generator().manual_seed(1)))
    assert generate(model, fam, n=2, seq_len=8, steps=4, seed=0).tokens.shape == (2, 8)


# --- nothing outside the registry branches on a family's name ---------------------------------------

PACKAGES = ("core", "trainer", "sweeps", "orchestrator", "analysis")
# Known, owned elsewhere in issue #12 (the sampling job's gen-PPL judge is "the autoregressive run"):
# remove the entry when that line reads a family fact instead.
ALLOWED: set[str] = set()


def test_no_code_outside_the_registry_compares_a_family_name():
    names = "|".join(map(re.escape, FAMILIES))
    lit = rf"""["'](?:{names})["']"""
    compare = re.compile(rf"""(?:==|!=|\bin|\bis)\s*\(?\s*{lit}|{lit}\s*(?:==|!=|\bin\b|\bnot in\b)""")
    hits = []
    for pkg in PACKAGES:
        for path in sorted((REPO / pkg).rglob("*.py")):
            rel = path.relative_to(REPO).as_posix()
            if rel == "trainer/families/registry.py" or rel in ALLOWED:
                continue
            for i, line in enumerate(path.read_text().splitlines(), 1):
                if compare.search(line.split("#")[0]):
                    hits.append(f"{rel}:{i}: {line.strip()}")
    assert not hits, "branch on the family's spec (FAMILIES[name]) instead:\n" + "\n".join(hits)
