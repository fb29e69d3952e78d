"""Eso-LM (trainer/families/esolm.py, trainer/sampling/esolm.py): its NELBO against ground truth,
its knob's endpoints against masked and autoregressive, its ordered attention against the
reference's sorted formulation, and its sampler's KV cache against the uncached forward."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from core.ladder import model_config
from trainer.families.base import NoisyBatch
from trainer.families.esolm import (diffusion_ranks, ordered_attention, sequential_ranks,
                                    two_stream_attention)
from trainer.families.registry import NoiseConfig, build_family
from trainer.job.objective import evaluate, loss
from trainer.model.transformer import Transformer
from trainer.sampling.esolm import reveal_counts
from trainer.sampling.samplers import generate
from tests.test_noise import V, entropy, p  # noqa: F401  (p: the unigram fixture over V tokens)




def exact_esolm_nelbo(fam, p, n_t=4000):
    """Diffusion part ∫ Σ_x p(x) Σ_z q_t(z|x) w d dt on a t = u² grid, plus the sequential part
    Σ_x p(x) Σ_z q_0(z|x) w d (t None), for the unigram prediction x̂ = p; both exact in z."""
    S = fam.input_vocab_size
    logp = p.log()
    u = (torch.arange(n_t, dtype=torch.float64) + 0.5) / n_t
    t, dt = u ** 2, 2 * u / n_t
    x = torch.arange(V)[None, :, None].expand(n_t, V, S)
    z = torch.arange(S)[None, None, :].expand(n_t, V, S)
    q = fam.marginal(torch.arange(V)[None, :].expand(n_t, V), t[:, None])
    f = fam.nelbo_from_logprobs(logp.expand(n_t, V, S, V), x, z, t[:, None, None].expand(n_t, V, S))
    diffusion = (((q * f).sum(-1) * p).sum(-1) * dt).sum().item()
    q0 = fam.marginal(torch.arange(V), torch.zeros(V, dtype=torch.float64))       # (V, S)
    f0 = fam.nelbo_from_logprobs(logp.expand(V, S, V), x[0], z[0], None)
    return diffusion + ((q0 * f0).sum(-1) * p).sum().item()


@pytest.mark.parametrize("alpha_0", [0.0, 0.5, 1.0])
def test_unigram_prediction_nelbo_is_entropy(alpha_0, p):
    eps = 1e-5
    fam = build_family(NoiseConfig(family="esolm", eps=eps, alpha_0=alpha_0), V)
    got, H = exact_esolm_nelbo(fam, p), entropy(p)
    print(f"alpha_0={alpha_0}: NELBO(x̂=p) = {got:.7f}, (1 − α₀ε)H = {(1 - alpha_0 * eps) * H:.7f}")
    assert got == pytest.approx((1 - alpha_0 * eps) * H, abs=1e-7)


class Unigram(nn.Module):
    """Predicts log p at every input, whatever the input, attention or positions."""
    def __init__(self, p):
        super().__init__()
        self.logp = p.log().float()
        self.cfg = model_config("L1-d8", vocab_size=V + 1, out_vocab_size=V, seq_len=64)

    def forward(self, idx, t=None, positions=None, **layout):
        out = self.logp.expand(*idx.shape, V)
        return out if positions is None else out[positions]


@pytest.mark.parametrize("alpha_0", [0.0, 0.5, 1.0])
def test_validation_nelbo_of_both_passes_estimates_entropy(alpha_0, p):
    """The objective's two-pass evaluation (diffusion + sequential) on sampled i.i.d. tokens."""
    fam = build_family(NoiseConfig(family="esolm", alpha_0=alpha_0), V)
    g = torch.Generator().manual_seed(1)
    windows = torch.multinomial(p.float(), 256 * 33, replacement=True, generator=g).view(256, 33)
    got = evaluate(Unigram(p), fam, windows.numpy(), seed=2, t_repeats=4)
    emp = -(p.log().float()[windows[:, :32]]).mean().item()      # the sample's own entropy
    print(f"alpha_0={alpha_0}: estimated NELBO {got:.4f} vs sample entropy {emp:.4f}")
    assert got == pytest.approx(emp * (1 - alpha_0 * 1e-3), abs=0.03)


def test_alpha_0_one_is_masked_to_float_precision():
    g = torch.Generator().manual_seed(3)
    eso = build_family(NoiseConfig(family="esolm", alpha_0=1.0), V)
    masked = build_family(NoiseConfig(family="masked"), V)
    x = torch.randint(0, V, (4, 16), generator=g)
    t = torch.rand(4, generator=g)
    z = masked.corrupt(x, t, g)
    log_probs = torch.log_softmax(torch.randn(4, 16, V, generator=g), -1)
    a = eso.nelbo_from_logprobs(log_probs, x, z, t[:, None])
    b = masked.nelbo_from_logprobs(log_probs, x, z, t[:, None])
    assert torch.equal(a, b)
    assert eso.prepare(torch.randint(0, V, (4, 17), generator=g), g).seq is None


def test_alpha_0_zero_is_autoregressive_on_the_same_tokens():
    """α₀ = 0: the diffusion part weighs nothing, the sequential pass masks every token, orders
    them left to right, and z_i reads exactly x_{<i} and itself: the AR family's NLL given the
    same per-position predictions."""
    g = torch.Generator().manual_seed(4)
    eso = build_family(NoiseConfig(family="esolm", alpha_0=0.0), V)
    ar = build_family(NoiseConfig(family="autoregressive"), V)
    window = torch.randint(0, V, (3, 17), generator=g)
    batch = eso.prepare(window, g, training=False)
    w, _ = eso.elbo_terms(torch.zeros(3, 16, V), batch.targets, batch.inputs, batch.t[:, None])
    assert float(w.abs().max()) == 0.0
    seq, T = batch.seq, 16
    assert bool((seq.inputs[:, :T] == eso.mask_id).all()) and torch.equal(seq.inputs[:, T:], window[:, :T])
    before = torch.arange(T)[None, :] < torch.arange(T)[:, None]            # [query i, key j]: j < i
    assert torch.equal(seq.attend[:, :T, T:], before.expand(3, T, T))
    assert torch.equal(seq.attend[:, :T, :T], torch.eye(T, dtype=torch.bool).expand(3, T, T))
    assert not bool(seq.attend[:, T:, :T].any())
    logits = torch.randn(3, T, V, generator=g)               # the prediction for each position i
    positions = eso.scored_positions(seq)
    eso_nll = eso.nelbo(torch.cat([logits, logits], 1)[positions], seq, positions).sum()
    ar_nll = ar.nelbo(logits, ar.prepare(window)).sum()
    assert eso_nll.item() == pytest.approx(ar_nll.item(), rel=1e-6)


def test_ranks_put_clean_tokens_first():
    g = torch.Generator().manual_seed(5)
    masked = torch.rand(8, 32, generator=g) < 0.4
    for ranks in (diffusion_ranks(masked, g), sequential_ranks(masked, g)):
        assert torch.equal(ranks.sort(-1).values, torch.arange(32).expand(8, 32))    # permutations
        n_clean = (~masked).sum(1, keepdim=True)
        assert bool(((ranks < n_clean) == ~masked).all())
    seq = sequential_ranks(masked, g)
    for row in range(8):                                          # masked ones left to right
        r = seq[row][masked[row]]
        assert bool((r[1:] > r[:-1]).all())


def small_model(seq_len=24, vocab=V):
    torch.manual_seed(0)
    return Transformer(model_config("L2-d32", vocab_size=vocab + 1, out_vocab_size=vocab,
                                    seq_len=seq_len)).eval()


def test_ordered_attention_equals_the_sorted_causal_forward():
    """Attending with key rank <= query rank on the unsorted sequence = the reference's sorting
    (tokens and rotary positions gathered by the sort index) with a causal mask."""
    model = small_model()
    g = torch.Generator().manual_seed(6)
    z = torch.randint(0, V + 1, (3, 24), generator=g)
    ranks = diffusion_ranks(z == V, g)
    ours = model(z, attend=ordered_attention(ranks))
    order = ranks.argsort(-1)                                     # slot -> position
    causal = torch.ones(24, 24, dtype=torch.bool).tril().expand(3, 24, 24)
    ref = model(z.gather(1, order), attend=causal, pos=order)
    assert torch.allclose(ours.gather(1, order[..., None].expand(-1, -1, V)), ref, atol=1e-5)


def test_two_stream_pass_trains_and_sums_into_the_loss():
    fam = build_family(NoiseConfig(family="esolm", alpha_0=0.5, train_loss="elbo"), V)
    model = small_model(seq_len=16)
    model.train()
    g = torch.Generator().manual_seed(7)
    batch = fam.prepare(torch.randint(0, V, (4, 17), generator=g), g)
    both = loss(model, fam, batch)
    diffusion = loss(model, fam, NoisyBatch(batch.inputs, batch.targets, batch.t,
                                           attend=batch.attend))
    assert both.item() > diffusion.item() > 0
    both.backward()
    assert all(torch.isfinite(q.grad).all() for q in model.parameters() if q.grad is not None)


@pytest.mark.parametrize("alpha_0", [1.0, 0.5, 0.0])
def test_kv_cached_sampler_draws_what_the_full_forward_draws(alpha_0):
    fam = build_family(NoiseConfig(family="esolm"), V)
    model = small_model()
    runs = {}
    for cache in (True, False):
        runs[cache] = generate(model, fam, n=4, seq_len=24, steps=8, seed=9,
                               sampler_settings={"alpha_0": alpha_0, "kv_cache": cache})
    a, b = runs[True], runs[False]
    assert torch.equal(a.tokens, b.tokens)
    assert b.sampler == ("esolm-ancestral[no_kv_cache]" if alpha_0 == 1.0
                         else f"esolm-ancestral[alpha_0={alpha_0:g},no_kv_cache]")
    assert int(a.tokens.max()) < V and a.tokens.shape == (4, 24)
    counts, diffused = reveal_counts(alpha_0, 1e-3, 8, 24, torch.Generator().manual_seed(0))
    assert sum(counts) == 24
    assert counts[len(counts) - (24 - diffused):] == [1] * (24 - diffused)   # sequential: 1 per call
    if alpha_0 == 1.0:
        assert a.nfe <= 8 + 1
    if alpha_0 == 0.0:
        assert a.nfe == 24                                        # one token per call, in order


def test_sampler_reaches_the_unigram_marginal(p):
    """With the exact (unigram) model, sampled tokens have the marginal p."""
    fam = build_family(NoiseConfig(family="esolm"), V)
    out = generate(Unigram(p), fam, n=400, seq_len=32, steps=8, seed=10,
                   sampler="esolm-ancestral", sampler_settings={"alpha_0": "0.5", "kv_cache": "false"})
    assert out.sampler == "esolm-ancestral[alpha_0=0.5,no_kv_cache]"
    freq = torch.bincount(out.tokens.flatten(), minlength=V).double() / out.tokens.numel()
    tv = 0.5 * (freq - p).abs().sum().item()
    print(f"TV(sampled, p) = {tv:.4f} over {out.tokens.numel()} tokens")
    assert tv < 0.02


def test_training_needs_alpha_0_one_and_bad_values_are_named():
    from trainer.config import RunConfig
    from trainer.plan import plan
    with pytest.raises(ValueError, match="noise.alpha_0"):
        NoiseConfig(family="esolm", alpha_0=1.5)
    cfg = RunConfig.from_dict({"size": "L1-d8", "noise": {"family": "esolm", "alpha_0": 0.5}})
    with pytest.raises(ValueError, match="noise.alpha_0"):
        plan(cfg, 512)
    ok = RunConfig.from_dict({"size": "L1-d8", "noise": {"family": "esolm"}})
    assert plan(ok, 512).steps > 0
    as_int = RunConfig.from_dict({"size": "L1-d8", "noise": {"family": "esolm", "alpha_0": 1}})
    assert as_int.run_id() == ok.run_id()               # `--set noise.alpha_0=1` is the same run


def test_trains_through_the_deepspeed_engine_zero3(tmp_path):
    """The ordered attention reaches the model through the real ZeRO-3 engine (keyword inputs),
    and the run logs an evaluated NELBO and its own family's FLOPs (masked's: same matmuls)."""
    from mlflow.tracking import MlflowClient

    from tests.conftest import tiny_run
    from trainer.config import RunConfig
    from trainer.job.train import train
    from trainer.plan import plan
    cfg = RunConfig.from_dict(tiny_run(tmp_path, noise={"family": "esolm"},
                                       engine={"zero_stage": 3}))
    assert train(cfg, progress=False).status == "FINISHED"
    client = MlflowClient(cfg.io.tracking_uri)
    run = client.search_runs([client.get_experiment_by_name("test").experiment_id])[0]
    vals = [m.value for m in client.get_metric_history(run.info.run_id, "val_nelbo")]
    assert len(vals) >= 2 and all(math.isfinite(v) for v in vals) and vals[-1] < vals[0]
    masked = RunConfig.from_dict(tiny_run(tmp_path, noise={"family": "masked"}))
    assert plan(cfg, 512).flops_per_token == plan(masked, 512).flops_per_token
