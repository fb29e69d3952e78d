"""ReMDM remasking (trainer/sampling/remasking.py) and choosing a sampler by name (issue 14, item 3):
σ = 0 is MDLM ancestral sampling token for token; with σ > 0 the chain keeps MDLM's marginals (the
masked share at every step is 1 − α_t, which a remasking step without compensation misses by
> 0.1 here), the exact denoiser's samples have the data marginal, no mask survives, and a remasked
token forces a fresh forward pass. Tiny CPU models and stand-ins on one thread, a few seconds."""
from __future__ import annotations

import pytest
import torch

from tests.test_sampling import IIDOracle, V, one_thread, tiny_model  # noqa: F401 (autouse)
from trainer.families.registry import NoiseConfig, build_family
from trainer.sampling.remasking import SCHEDULES, MaskedRemdm, sigma_max
from trainer.sampling.samplers import MaskedAncestral, generate

REMDM = MaskedRemdm.name
P = torch.tensor([0.4, 0.2, 0.15, 0.1, 0.06, 0.05, 0.03, 0.01])
# one strong setting per schedule: remasking is frequent enough to matter at 16 steps
STRONG = {"cap": {"schedule": "cap", "eta": 0.3}, "rescale": {"schedule": "rescale", "eta": 0.8},
          "loop": {"schedule": "loop", "eta": 0.1, "t_on": 0.7, "t_off": 0.2, "alpha_on": 0.5}}


class Recorder(IIDOracle):
    """x̂ = p whatever the input (the exact denoiser of i.i.d. tokens), recording every input z."""

    def __init__(self, fam, p, time_cond: str):
        super().__init__(fam, p, time_cond)
        self.inputs: list[torch.Tensor] = []

    def forward(self, z, t=None):
        self.inputs.append(z.clone())
        return super().forward(z, t)


def masked_family():
    return build_family(NoiseConfig(family="masked"), V)


@pytest.mark.parametrize("schedule", ["cap", "rescale"])
@pytest.mark.parametrize("steps,n,batch,greedy", [(1, 3, None, False), (7, 5, 2, True),
                                                  (40, 4, None, False)])
def test_sigma_zero_is_mdlm_ancestral_token_for_token(schedule, steps, n, batch, greedy):
    model, fam = tiny_model("masked", seq_len=16)
    kw = dict(n=n, seq_len=12, steps=steps, seed=4, batch_size=batch, greedy_final=greedy)
    base = generate(model, fam, **kw)
    zero = generate(model, fam, sampler=REMDM, sampler_settings={"schedule": schedule, "eta": 0.0}, **kw)
    assert torch.equal(base.tokens, zero.tokens) and base.nfe == zero.nfe
    assert base.sampler.startswith(MaskedAncestral.name)
    assert zero.sampler.startswith(f"{REMDM}[{schedule},eta=0")
    some = generate(model, fam, sampler=REMDM, sampler_settings={"schedule": schedule, "eta": 0.5}, **kw)
    if steps == 40:                                   # remasking changes the chain
        assert not torch.equal(base.tokens, some.tokens)


def _masked_share(fam, settings: dict, steps: int, n: int) -> tuple[torch.Tensor, torch.Tensor, list]:
    """(masked share of the model's input at each step, 1 − α_t of the plan, plan)."""
    rec = Recorder(fam, P, time_cond="adaln")               # time-conditioned: one call per step
    res = generate(rec, fam, n=n, seq_len=8, steps=steps, seed=11, sampler=REMDM,
                   sampler_settings=settings)
    assert len(rec.inputs) == steps == res.nfe
    plan = MaskedRemdm(**settings).plan(fam, steps)
    share = torch.stack([(z == fam.mask_id).float().mean() for z in rec.inputs])
    return share, torch.tensor([1.0 - st.a_t for st in plan]), plan


@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
def test_remasking_keeps_mdlm_marginals_at_every_step(schedule):
    """ReMDM's Thm. 3.1: q_σ has MDLM's marginals, so the masked share entering step k is 1 − α_t
    (16,000 positions: SD <= 0.004, bound 0.02). A remasking step that kept MDLM's unmasking
    probability (α_s − α_t)/(1 − α_t) would be off by more than 0.1 (the recursion below)."""
    fam = masked_family()
    settings = STRONG[schedule]
    share, expect, plan = _masked_share(fam, settings, steps=16, n=2000)
    assert (share - expect).abs().max() < 0.02, (share, expect)
    assert sum(st.sigma > 0 for st in plan) >= 4                  # it did remask, at many steps
    for st in plan:
        assert 0.0 <= st.sigma <= sigma_max(st.a_t, st.a_s) + 1e-12
    unmasked, naive = 0.0, []                                     # the negative control
    for st in plan:
        naive.append(1.0 - unmasked)
        unmasked = unmasked * (1 - st.sigma) + (1 - unmasked) * (st.a_s - st.a_t) / (1 - st.a_t)
    assert (torch.tensor(naive) - expect).abs().max() > 0.1


@pytest.mark.parametrize("settings", [{"schedule": "cap", "eta": 0.02}, *STRONG.values()],
                         ids=["cap-0.02", *STRONG])
@pytest.mark.parametrize("steps", [2, 16])
def test_exact_denoiser_samples_have_the_data_marginal_and_no_mask(settings, steps):
    """8,000 tokens from the exact denoiser x̂ = p: TV to p ~0.01 (bound 0.035, as for
    MaskedAncestral in tests/test_sampling.py); every token real."""
    fam = masked_family()
    res = generate(IIDOracle(fam, P, time_cond="none"), fam, n=1000, seq_len=8, steps=steps,
                   seed=3, sampler=REMDM, sampler_settings=settings)
    assert int(res.tokens.max()) < V and int(res.tokens.min()) >= 0     # no mask survives
    freq = torch.bincount(res.tokens.reshape(-1), minlength=V).float() / res.tokens.numel()
    tv = 0.5 * (freq - P).abs().sum().item()
    print(f"\n{settings} {steps} steps: TV {tv:.4f}")
    assert tv < 0.035


@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
def test_nfe_counts_a_forward_after_every_change_remasks_included(schedule):
    """The cached run calls the model exactly when z_t changed since its last call (a remasked
    token included), as read off the uncached (time-conditioned) run of the same seed: x̂ does not
    depend on t here, so both runs draw the same chain."""
    fam = masked_family()
    kw = dict(n=1, seq_len=8, steps=40, seed=2, sampler=REMDM, sampler_settings=STRONG[schedule])
    every, cached = Recorder(fam, P, "adaln"), Recorder(fam, P, "none")
    full, res = generate(every, fam, **kw), generate(cached, fam, **kw)
    assert torch.equal(full.tokens, res.tokens) and full.nfe == 40
    chain = every.inputs                                         # z_t entering each step
    expected = [chain[0]] + [z for prev, z in zip(chain, chain[1:]) if not torch.equal(prev, z)]
    assert res.nfe == len(cached.inputs) == len(expected) < 40
    assert all(torch.equal(a, b) for a, b in zip(cached.inputs, expected))
    remasked = sum(int(((prev != fam.mask_id) & (z == fam.mask_id)).sum())
                   for prev, z in zip(chain, chain[1:]))
    assert remasked > 0
    plain = generate(Recorder(fam, P, "none"), fam, **{**kw, "sampler": None, "sampler_settings": None})
    assert plain.nfe <= 1 + 8 < res.nfe                  # MDLM: a call after each of <= 8 reveals


def test_samplers_are_chosen_by_name_and_settings_validated():
    model, fam = tiny_model("masked", seq_len=16)
    assert list(fam.samplers()) == [MaskedAncestral.name, REMDM]
    assert fam.pick_sampler() is fam.sampler
    assert fam.pick_sampler(REMDM, {"eta": "0.02", "schedule": "rescale"}) == MaskedRemdm(
        schedule="rescale", eta=0.02)
    kw = dict(n=1, seq_len=8, steps=2, seed=0)
    with pytest.raises(ValueError, match=f"'nosuch'.*{MaskedAncestral.name}, {REMDM}"):
        generate(model, fam, sampler="nosuch", **kw)
    with pytest.raises(ValueError, match="no setting 'beta'.*schedule, eta"):
        generate(model, fam, sampler=REMDM, sampler_settings={"beta": 1}, **kw)
    with pytest.raises(ValueError, match="no setting 'eta'.*none"):
        generate(model, fam, sampler=MaskedAncestral.name, sampler_settings={"eta": 1}, **kw)
    with pytest.raises(ValueError, match="eta='abc' is not a float"):
        fam.pick_sampler(REMDM, {"eta": "abc"})
    for bad, needle in [({"schedule": "nope"}, "schedule"), ({"eta": 1.5}, "eta"),
                        ({"schedule": "loop", "t_on": 0.1, "t_off": 0.2}, "t_off"),
                        ({"schedule": "loop", "alpha_on": 1.0}, "alpha_on")]:
        with pytest.raises(ValueError, match=needle):
            MaskedRemdm(**bad)
    ar, ar_fam = tiny_model("uniform", seq_len=16)
    with pytest.raises(ValueError, match=f"family 'uniform': no sampler '{REMDM}'"):
        generate(ar, ar_fam, sampler=REMDM, **kw)
    assert MaskedRemdm().settings() == ("cap", "eta=0.008")
    labels = generate(model, fam, sampler=REMDM, top_p=0.9, sampler_settings={
        "schedule": "loop", "eta": 0.02}, **kw).sampler
    assert labels == f"{REMDM}[loop,eta=0.02,t_on=0.55,t_off=0.05,alpha_on=0.9,top_p=0.9]"


def test_loop_plan_has_three_phases_and_ends_unmasked():
    fam = masked_family()
    r = MaskedRemdm(schedule="loop", eta=0.02)
    plan = r.plan(fam, 100)
    on = [st for st in plan if st.sigma > 0]
    assert all(st.a_t == st.a_s == r.alpha_on for st in on)
    assert 48 <= len(on) <= 50                 # t in [0.06, 0.55]: both ends inside (rounding aside)
    assert plan[0].a_t == pytest.approx(float(fam.alpha(torch.tensor(1.0, dtype=torch.float64))))
    assert plan[-1].a_s == 1.0 and plan[-1].sigma == 0.0
    assert all(b.a_t == a.a_s for a, b in zip(plan, plan[1:]))     # a continuous chain of α
    # the time a time-conditioned model sees is the family's t at the loop's α
    for st in plan[::7]:
        assert float(fam.alpha(torch.tensor(st.t, dtype=torch.float64))) == pytest.approx(st.a_t, abs=1e-9)

