"""How every sampler turns a prediction into tokens (issue 14, item 3): float64 categorical draws,
nucleus (top-p) truncation, a greedy final denoising step, and the sampler's label in MLflow."""
from __future__ import annotations

import pytest
import torch

from tests.test_sampling import tiny_model
from trainer.sampling.samplers import (Draw, MaskedAncestral, PosteriorAncestral, _call, cdf64,
                                       generate, nucleus)


def _law(cdf: torch.Tensor) -> torch.Tensor:
    """The probabilities an inverse-CDF draw realises: the widths of its CDF's steps, over the
    total (what u ~ U(0, total) hitting each step gives, up to u's own resolution)."""
    c = cdf.double()
    return torch.diff(c, prepend=c.new_zeros(1)) / c[-1]


def test_float64_cdf_keeps_a_near_flat_vocabulary_of_131072_exact():
    # (an exactly flat 1/V = 2^-17 is dyadic, and its float32 CDF exact: jitter the logits)
    V = 131_072
    g = torch.Generator().manual_seed(0)
    p = torch.softmax(0.01 * torch.randn(V, generator=g), -1)       # float32, as samplers hold it
    q = p.double() / p.double().sum()
    tv32 = 0.5 * (_law(p.cumsum(-1)) - q).abs().sum().item()        # a float32 CDF
    tv64 = 0.5 * (_law(cdf64(p)) - q).abs().sum().item()
    assert tv32 > 5e-4                                              # measured 8.7e-4
    assert tv64 < 1e-9
    print(f"\nflat V={V}: TV of the draw's law vs p: float32 CDF {tv32:.2e}, float64 {tv64:.2e}")


def test_float64_cdf_reaches_the_tail_of_a_peaked_vocabulary_of_32768():
    V = 32_768
    logits = torch.zeros(V)
    logits[0] = 25.0                                                # one token holds ~1 - 2.3e-7
    p = torch.softmax(logits, -1)
    tail = p[1:] > 0
    dead32 = int(((_law(p.cumsum(-1))[1:] == 0) & tail).sum())
    dead64 = int(((_law(cdf64(p))[1:] == 0) & tail).sum())
    assert dead32 > V // 2                                          # most tail tokens unreachable
    assert dead64 == 0
    law = _law(cdf64(p))
    assert torch.allclose(law[1:], p[1:].double() / p.double().sum(), rtol=1e-6)


def test_nucleus_keeps_the_smallest_set_reaching_top_p():
    p = torch.tensor([[0.15, 0.5, 0.05, 0.3], [0.25, 0.25, 0.25, 0.25]])
    out = nucleus(p, 0.8)
    assert torch.allclose(out[0], torch.tensor([0.0, 0.625, 0.0, 0.375]))
    assert torch.allclose(out[1], p[1])                     # 3 tokens hold 0.75 < 0.8: all 4 kept
    assert torch.allclose(nucleus(p, 0.7)[1], torch.tensor([1 / 3, 1 / 3, 1 / 3, 0.0]))  # ties: by index
    assert torch.allclose(nucleus(p, 0.81)[0], torch.tensor([0.15, 0.5, 0.0, 0.3]) / 0.95)
    assert torch.equal(nucleus(p, 1e-6)[0], torch.tensor([0.0, 1.0, 0.0, 0.0]))  # top-1 kept
    assert torch.allclose(nucleus(p, 1.0), p)


@pytest.mark.parametrize("family", ["masked", "uniform", "hybrid", "autoregressive"])
def test_top_p_truncates_every_familys_draws(family):
    # at top_p 1e-6 every draw is the most likely token of its row, so sampling is deterministic:
    # two seeds give the same tokens; without truncation they differ
    model, fam = tiny_model(family, seq_len=16)
    kw = dict(n=4, seq_len=16, steps=8, start_id=0)
    a = generate(model, fam, seed=1, top_p=1e-6, **kw).tokens
    b = generate(model, fam, seed=2, top_p=1e-6, **kw).tokens
    if family in ("autoregressive", "masked"):      # no noise left once each draw is an argmax
        assert torch.equal(a, b)
    assert not torch.equal(generate(model, fam, seed=1, **kw).tokens,
                           generate(model, fam, seed=2, **kw).tokens)


def test_greedy_final_step_takes_the_argmax():
    model, fam = tiny_model("masked", seq_len=16)
    one = generate(model, fam, n=3, seq_len=16, steps=1, seed=0, greedy_final=True).tokens
    z = torch.full((3, 16), fam.mask_id)
    with torch.no_grad():
        assert torch.equal(one, _call(model.eval(), z, 1.0).argmax(-1))
    model, fam = tiny_model("uniform", seq_len=16)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        chunk = PosteriorAncestral().sample(model.eval(), fam, n=3, seq_len=16, steps=1,
                                            draw=Draw(greedy_final=True), gen=gen, start_id=None)
        gen = torch.Generator().manual_seed(0)
        prior = torch.full((fam.V,), 1.0)
        from trainer.sampling.samplers import _draw
        z1 = _draw(prior.expand(3, 16, -1), gen)                   # the sampler's z_1 draw
        post = PosteriorAncestral.unnormalised(fam, Draw().probs(_call(model, z1, 1.0)), z1, 1.0, 0.0)
    assert torch.equal(chunk.tokens, post.argmax(-1)) and int(chunk.tokens.max()) < fam.V


def test_draw_settings_are_validated_and_labelled():
    with pytest.raises(ValueError, match="top_p"):
        Draw(top_p=0.0)
    with pytest.raises(ValueError, match="temperature"):
        Draw(temperature=-1.0)
    assert Draw().label("masked-ancestral-cached") == "masked-ancestral-cached"
    assert (Draw(temperature=0.9, top_p=0.9, greedy_final=True).label(MaskedAncestral.name)
            == "masked-ancestral-cached[T=0.9,top_p=0.9,greedy_final]")
    model, fam = tiny_model("masked", seq_len=16)
    with pytest.raises(ValueError, match="top_p"):
        generate(model, fam, n=1, seq_len=8, steps=4, seed=0, top_p=1.5)
