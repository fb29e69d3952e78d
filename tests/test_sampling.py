"""Samplers (trainer/sampling/samplers.py), the KV cache (trainer/model/transformer.py) and loading a finished run
(trainer/sampling/sample.py). Tiny CPU models on one thread; ~30-40 s in total on an idle AVX-512 machine,
most of it four short trainings on a synthetic Markov chain and one tiny DeepSpeed run.
Untrusted MLflow data and pickles: tests/test_sample_trust.py.
"""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.conftest import REPO, clean_env, tiny_run
from trainer.model.kvcache import KVCache
from core.ladder import ModelConfig
from trainer.model.transformer import Transformer
from trainer.families.registry import FAMILIES, NoiseConfig, build_family
from trainer.job.objective import batch_loss, evaluate
from trainer.sampling.samplers import PosteriorAncestral, Sampler, generate

DIFFUSION = ["masked", "uniform", "hybrid"]
V, T = 8, 32                       # synthetic vocabulary (tokens) and sequence length (tokens)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_model(family_name: str, seed: int = 0, seq_len: int = T) -> tuple[Transformer, object]:
    fam = build_family(NoiseConfig(family=family_name), V)
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=fam.input_vocab_size, out_vocab_size=V, n_layer=2, d_model=32,
                      n_head=4, seq_len=seq_len, causal=fam.causal, time_cond=fam.time_cond_default)
    return Transformer(cfg), fam


# --- a first-order Markov chain over V tokens -------------------------------------------------------

def markov_chain() -> tuple[torch.Tensor, torch.Tensor]:
    """(P (V, V) transition matrix with 3 successors per token, stationary distribution (V,))."""
    g = torch.Generator().manual_seed(0)
    P = torch.zeros(V, V)
    for a in range(V):
        P[a, torch.randperm(V, generator=g)[:3]] = torch.rand(3, generator=g) + 0.2
    P = P / P.sum(1, keepdim=True)
    pi = torch.full((V,), 1.0 / V)
    for _ in range(500):
        pi = pi @ P
    return P, pi


def chains(P, pi, n: int, length: int, gen: torch.Generator) -> torch.Tensor:
    x = torch.empty(n, length, dtype=torch.long)
    x[:, 0] = torch.multinomial(pi, n, replacement=True, generator=gen)
    for i in range(1, length):
        x[:, i] = torch.multinomial(P[x[:, i - 1]], 1, generator=gen)[:, 0]
    return x


def bigram_tv(tokens: torch.Tensor, P: torch.Tensor) -> float:
    """Σ_a visits(a) · TV(P̂(·|a), P(·|a)) / Σ visits over consecutive pairs of `tokens` (n, T)."""
    a, b = tokens[:, :-1].reshape(-1), tokens[:, 1:].reshape(-1)
    counts = torch.zeros(V, V).index_put_((a, b), torch.ones(a.numel()), accumulate=True)
    visits = counts.sum(1)
    tv = 0.5 * (counts / visits.clamp_min(1)[:, None] - P).abs().sum(1)
    return float((visits / visits.sum() * tv).sum())


def window_entropy(P: torch.Tensor, pi: torch.Tensor) -> float:
    """Per-token entropy (nats) of a stationary window of T tokens, (H(pi) + (T - 1) h) / T with h
    the chain's entropy rate Σ_a pi_a H(P(·|a)): the floor of every family's NELBO on such windows
    (1.0645 here: H(pi) 1.943, h 1.036)."""
    h = -(pi[:, None] * P * P.clamp_min(1e-30).log()).sum()
    return float((-(pi * pi.log()).sum() + (T - 1) * h) / T)


@dataclasses.dataclass(frozen=True)
class Recipe:
    """AdamW at peak `lr`, linear warmup over `warmup` steps, then linear decay to 0.1·lr at the
    step cap; the gradient's global norm clipped to `clip` (None: not clipped)."""
    lr: float = 1e-2
    warmup: int = 20
    clip: float | None = None


def train_on_chain(family_name: str, cap: int, margin: float | None = None, every: int = 25,
                   recipe: Recipe = Recipe()) -> tuple[Transformer, object, int, float | None]:
    """A 2-layer d32 model trained on chain windows with the family's own loss (plain PyTorch,
    `recipe`, LR decaying over `cap` steps): `cap` steps, or with `margin` until the held-out NELBO
    (256 chains, fixed noise, every `every` steps) is within `margin` nats/token of the chain's
    window entropy. (model, family, steps, gap or None). Fails the test, with the curve, if `cap`
    steps do not get there."""
    P, pi = markov_chain()
    floor = window_entropy(P, pi)
    held = chains(P, pi, 256, T + 1, torch.Generator().manual_seed(12345)).numpy()
    model, fam = tiny_model(family_name)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / recipe.warmup) * max(0.1, 1 - s / cap))
    gen = torch.Generator().manual_seed(1)
    curve = []
    for step in range(1, cap + 1):
        loss = batch_loss(model, fam, chains(P, pi, 64, T + 1, gen), gen)
        opt.zero_grad()
        loss.backward()
        if recipe.clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), recipe.clip)
        opt.step()
        sched.step()
        if margin is not None and step % every == 0:
            curve.append(evaluate(model, fam, held, seed=0, batch_size=256, t_repeats=2) - floor)
            if curve[-1] <= margin:
                return model.eval(), fam, step, curve[-1]
    if margin is None:
        return model.eval(), fam, cap, None
    pytest.fail(f"{family_name}: held-out NELBO still {curve[-1]:+.3f} nats/token above the chain's "
                f"{floor:.4f} after {cap} steps (target +{margin}); every {every} steps: "
                + " ".join(f"{g:+.3f}" for g in curve))


# Why train to a loss, not a step count: at lr 1e-2 the loss spikes now and then, and the float
# rounding of one CPU's kernels vs another's decides where a fixed step count lands. 600 steps gave
# hybrid bigram TV (64 sampling steps) 0.110 on an AVX-512 machine, 0.214 on an AVX2 one
# (bound 0.2). A model that has reached a stated held-out NELBO has learnt the chain to a stated
# degree on any machine.
# Measured on the AVX2 machine (1 thread; training seeds s = 0..4: model seed s, data seed
# 1 + 1000 s; the test runs s = 0 with data seed 1): bigram TV at 64 steps when the gap to the floor
# first reaches the margin, checking every 25 steps:
#   hybrid, +0.15, cap 1200: 0.128 0.120 0.135 0.097 0.114 (mean 0.119, max 0.135) after
#       600 600 425 600 700 steps. At a fixed 600 steps the same seeds gave up to 0.180 (seed 4
#       sat on a spike, gap +0.293; it reached +0.15 at step 700 with TV 0.114).
#   masked, +0.07, cap 800 (seeds 0..2): 0.069 0.062 0.075 (max 0.075) after 350 725 500 steps.
#       Its margin is tighter: at +0.15 masked models gave 0.130 and 0.103, at +0.10 0.081 0.077.
#   uniform, +0.15, cap 900, its own recipe (peak LR 5e-3, warmup 50, gradient norm clipped at
#       1.0), seeds 0..9: 0.077 0.101 0.113 0.098 0.118 0.118 0.096 0.076 0.108 0.108 (mean 0.101,
#       max 0.118, SD 0.015) after 350 525 350 625 425 450 400 525 325 675 steps; 1 step 0.524-0.551
#       (ratio >= 4.5). With the others' recipe (LR 1e-2, warmup 20, no clipping) uniform was the
#       machine-dependent one: 600 steps gave 0.103 (AVX2) and 0.143 (AVX-512) for the test's
#       seed, seeds 0..4 0.144 0.207 0.108 0.106 0.112 (LR decaying over 900 steps), and at +0.15
#       seeds 0 and 1 were still at +0.183 and +0.466 after 900 steps (seed 1 on a plateau from
#       step ~450, TV 0.192-0.211 there). The lower LR is what removes the plateau (LR 5e-3 without
#       clipping: seed 1 reaches +0.15 at step 575, TV 0.098; clipping alone at 1e-2: still +0.29
#       at step 600, TV 0.169); clipping speeds it up (seed 0: +0.15 at 350 steps, not 500). The
#       cap is 900 since the slowest of the ten seeds took 675 steps; +0.12 would cost 475-850
#       steps for TV 0.071-0.096, over the CPU time this test has (~25-30 CPU-s).
# Bounds: max TV at 64 steps is kept (0.1 masked, 0.2 hybrid and uniform): 3.8, 4.5 and 5.4
# standard deviations of the seed spread (SD 0.0065 masked, 0.0145 hybrid, 0.015 uniform)
# above the worst seed.
# At 1 step every position is drawn independently (the unigram): TV 0.510-0.551 in all of them.
# 256 true chains of this length give TV 0.017 (the finite-sample floor). The uniform/hybrid
# reverse step that averaged exact posteriors over x̂ (the first version of trainer/sampling/samplers.py)
# gave 0.297 and 0.250 on 600-step models: the 0.2 bound separates the two; the oracle tests below
# pin the sampler exactly.
# family -> (NELBO margin over the floor, step cap, max TV at 64 steps, min TV at 1 step,
#            min ratio 1 step / 64 steps)
CHAIN_BOUNDS = {"masked": (0.07, 800, 0.1, 0.3, 3.0), "uniform": (0.15, 900, 0.2, 0.4, 2.5),
                "hybrid": (0.15, 1200, 0.2, 0.4, 2.5)}
CHAIN_RECIPES = {"uniform": Recipe(lr=5e-3, warmup=50, clip=1.0)}     # the others: Recipe()


@pytest.mark.parametrize("family_name", sorted(CHAIN_BOUNDS))
def test_diffusion_learns_markov_chain_and_more_steps_help(family_name):
    P, _ = markov_chain()
    margin, cap, max_many, min_one, ratio = CHAIN_BOUNDS[family_name]
    model, fam, steps, gap = train_on_chain(family_name, cap, margin,
                                            recipe=CHAIN_RECIPES.get(family_name, Recipe()))
    trained = f"{steps} steps" + ("" if gap is None else f", held-out NELBO {gap:+.3f} over the floor")
    many = generate(model, fam, n=256, seq_len=T, steps=64, seed=0)
    one = generate(model, fam, n=256, seq_len=T, steps=1, seed=0)
    tv_many, tv_one = bigram_tv(many.tokens, P), bigram_tv(one.tokens, P)
    print(f"\n{family_name} ({trained}) bigram TV: 64 steps {tv_many:.3f} ({many.seconds:.2f} s), "
          f"1 step {tv_one:.3f}")
    assert tv_many < max_many
    assert tv_one > min_one and tv_one > ratio * tv_many


def test_autoregressive_kv_cache_sampling_learns_chain_and_matches_uncached():
    P, _ = markov_chain()
    model, fam, *_ = train_on_chain("autoregressive", 300)
    res = generate(model, fam, n=256, seq_len=T, steps=5, seed=0, start_id=0)
    tv = bigram_tv(res.tokens, P)
    print(f"\nautoregressive bigram TV {tv:.3f} ({res.seconds:.2f} s)")
    assert tv < 0.1
    assert res.steps == res.nfe == T                               # `steps` is ignored for AR
    # the same draws without a cache: full causal forward over the prefix at every position
    from trainer.sampling.samplers import _draw
    gen = torch.Generator().manual_seed(0)
    seq = torch.zeros(8, 1, dtype=torch.long)
    with torch.no_grad():
        for _ in range(T):
            p = F.softmax(model(seq)[:, -1].float(), -1)
            seq = torch.cat([seq, _draw(p, gen)[:, None]], 1)       # the sampler's own draw
    assert torch.equal(seq[:, 1:], generate(model, fam, n=8, seq_len=T, steps=1, seed=0,
                                            start_id=0).tokens)


# --- exactness of the reverse process -----------------------------------------------------------

@pytest.mark.parametrize("T_new", [1, 3])
def test_kv_cache_decoding_equals_full_causal_forward(T_new):
    model, _ = tiny_model("autoregressive", seq_len=16)
    idx = torch.randint(0, V, (3, 16), generator=torch.Generator().manual_seed(2))
    cache = KVCache(model.cfg, 3)
    with torch.no_grad():
        full = model(idx)
        inc = torch.cat([model.decode(idx[:, i:i + T_new], cache) for i in range(0, 16, T_new)], 1)
    assert cache.length == 16
    assert (full - inc).abs().max().item() < 1e-5
    with pytest.raises(ValueError, match="seq_len"):
        model.decode(idx[:, :1], cache)
    with pytest.raises(ValueError, match="causal"):
        KVCache(dataclasses.replace(model.cfg, causal=False), 3)


@pytest.mark.parametrize("family_name", DIFFUSION)
def test_posterior_inverts_the_forward_process(family_name):
    """With x̂ = δ_x the sampler's p(z_s | z_t) is q(z_s | z_t, x), so Σ_{z_t} q_t(z_t|x) p(z_s|z_t)
    must give back q_s(z_s | x) exactly."""
    fam = build_family(NoiseConfig(family=family_name), V)
    S = fam.input_vocab_size
    x = torch.arange(V)                                            # every clean token
    for t, s in [(1.0, 0.75), (0.5, 0.3), (0.1, 0.05)]:
        z_t = torch.arange(S).repeat(V, 1)                         # (V, S): every z_t per x
        x_hat = F.one_hot(x, V).float()[:, None, :].expand(V, S, V)
        post = PosteriorAncestral.posterior(fam, x_hat, z_t, t, s)  # (V, S, S)
        q_t = fam.marginal(x, torch.tensor(t)).float()              # (V, S)
        back = (q_t[:, :, None] * torch.nan_to_num(post)).sum(1)   # z_t impossible given x: weight 0
        assert torch.allclose(back, fam.marginal(x, torch.tensor(s)).float(), atol=1e-5), (t, s)


def test_posterior_reduces_to_mdlm_for_masked_noise():
    fam = build_family(NoiseConfig(family="masked"), V)
    x_hat = F.softmax(torch.randn(2, 5, V, generator=torch.Generator().manual_seed(0)), -1)
    z = torch.tensor([[V, 3, V, V, 0], [1, V, V, 2, V]])
    t, s = 0.6, 0.4
    post = PosteriorAncestral.posterior(fam, x_hat, z, t, s)
    a_t, a_s = 1 - (1 - fam.cfg.eps) * t, 1 - (1 - fam.cfg.eps) * s
    masked = z == V
    expect = torch.cat([x_hat * (a_s - a_t) / (1 - a_t),
                        torch.full((2, 5, 1), (1 - a_s) / (1 - a_t))], -1)
    assert torch.allclose(post[masked], expect[masked], atol=1e-6)
    assert torch.equal(post[~masked], F.one_hot(z[~masked], V + 1).float())


class IIDOracle(nn.Module):
    """The optimal denoiser for i.i.d. tokens from p under the families' mean parameterisation:
    x̂ = p at every position and time (its NELBO is exactly H(p), tests/test_noise.py); the
    evidence of z_t enters the reverse step through q(z_t | z_s), not through x̂."""

    def __init__(self, fam, p: torch.Tensor, time_cond: bool):
        super().__init__()
        self.fam, self.logp = fam, p.log()
        self.cfg = SimpleNamespace(time_cond=time_cond, seq_len=T, causal=False)

    def forward(self, z, t=None):
        return self.logp.expand(*z.shape, V)


class PosteriorOracle(IIDOracle):
    """x̂(x | z_t) ∝ p(x) q_t(z_t | x): the true posterior, which the mean parameterisation does
    NOT use as x̂ (it would count z_t twice); samples drift away from p (the test's negative)."""

    def forward(self, z, t=None):
        t = torch.full((z.shape[0],), 0.5) if t is None else t
        x = torch.arange(V).expand(z.shape[0], V)
        q = self.fam.marginal(x, t.double()[:, None]).float()                      # (B, V, S)
        q_z = torch.gather(q.transpose(1, 2), 1, z[..., None].expand(*z.shape, V))  # (B, T, V)
        return self.logp + q_z.log()


@pytest.mark.parametrize("family_name", DIFFUSION)
@pytest.mark.parametrize("steps", [2, 16])
def test_exact_denoiser_samples_have_the_data_marginal(family_name, steps):
    """With the exact denoiser the reverse chain is exact at any step count: the samples' token
    frequencies equal p (here 8,000 tokens: sampling TV ~0.01; measured <= 0.016)."""
    fam = build_family(NoiseConfig(family=family_name), V)
    p = torch.tensor([0.4, 0.2, 0.15, 0.1, 0.06, 0.05, 0.03, 0.01])
    oracle = IIDOracle(fam, p, time_cond=fam.time_cond_default)
    res = generate(oracle, fam, n=1000, seq_len=8, steps=steps, seed=3)
    freq = torch.bincount(res.tokens.reshape(-1), minlength=V).float() / res.tokens.numel()
    tv = 0.5 * (freq - p).abs().sum().item()
    assert tv < 0.035
    if family_name != "masked":          # masked: x̂ only matters where z_t = mask, both coincide
        wrong = generate(PosteriorOracle(fam, p, fam.time_cond_default), fam, n=1000, seq_len=8,
                         steps=steps, seed=3).tokens.reshape(-1)
        tv_wrong = 0.5 * (torch.bincount(wrong, minlength=V).float() / wrong.numel() - p).abs().sum()
        print(f"\n{family_name} {steps} steps: TV {tv:.3f}, posterior-as-x_hat {tv_wrong:.3f}")
        assert tv_wrong > 2 * tv and tv_wrong > 0.05


# --- the contract of generate ---------------------------------------------------------------------

class Counter:
    """Model calls: forwards and KV-cached decodes (Eso-LM)."""
    def __init__(self, model):
        self.calls = 0
        model.register_forward_hook(lambda *_: setattr(self, "calls", self.calls + 1))
        decode = model.decode

        def counted(*args, **kw):
            self.calls += 1
            return decode(*args, **kw)
        model.decode = counted


@pytest.mark.parametrize("family_name", sorted(FAMILIES))
def test_steps_nfe_shapes_and_vocabulary(family_name):
    model, fam = tiny_model(family_name, seq_len=16)
    assert isinstance(fam.sampler, Sampler)
    for steps, n, batch in [(1, 3, None), (7, 5, 2), (40, 1, None)]:
        calls = Counter(model) if not fam.causal else None
        res = generate(model, fam, n=n, seq_len=12, steps=steps, seed=0, batch_size=batch,
                       start_id=0)
        assert res.tokens.shape == (n, 12) and res.tokens.dtype == torch.long
        assert 0 <= res.tokens.min() and res.tokens.max() < V      # real tokens: never the mask
        assert res.seconds > 0
        chunks = -(-n // (batch or n))
        if fam.causal:                                              # one position per forward
            assert res.steps == 12 and res.nfe == 12 * chunks
            continue
        assert res.steps == steps and res.nfe == calls.calls
        if family_name == "esolm":                                  # one call per step revealing tokens
            assert chunks <= res.nfe <= (steps + 1) * chunks         # (+1: the schedule's ε remainder)
        elif family_name == "masked":                               # logits reused when z is unchanged
            assert chunks <= res.nfe <= steps * chunks
            if steps == 40:
                assert res.nfe <= 12 < steps             # <= 1 + changing steps (<= 11 of them)
        else:
            assert res.nfe == steps * chunks


@pytest.mark.parametrize("family_name", sorted(FAMILIES))
def test_same_seed_same_tokens(family_name):
    model, fam = tiny_model(family_name, seq_len=16)

    def run(seed: int) -> torch.Tensor:
        return generate(model, fam, n=4, seq_len=16, steps=8, seed=seed, start_id=0).tokens

    assert torch.equal(run(5), run(5))
    assert not torch.equal(run(5), run(6))


def test_generate_rejects_bad_arguments():
    model, fam = tiny_model("masked", seq_len=16)
    with pytest.raises(ValueError, match="seq_len"):
        generate(model, fam, n=1, seq_len=17, steps=4, seed=0)
    with pytest.raises(ValueError, match="steps"):
        generate(model, fam, n=1, seq_len=8, steps=0, seed=0)
    with pytest.raises(ValueError, match="temperature"):
        generate(model, fam, n=1, seq_len=8, steps=4, seed=0, temperature=0.0)
    ar, ar_fam = tiny_model("autoregressive", seq_len=16)
    with pytest.raises(ValueError, match="start_id"):
        generate(ar, ar_fam, n=1, seq_len=8, steps=4, seed=0)


# --- a finished run: model.pt, load_run, the CLI --------------------------------------------------

def test_finished_run_exports_weights_and_samples_from_the_cli(tmp_path):
    from mlflow.tracking import MlflowClient

    from trainer.config import RunConfig
    from trainer.sampling.sample import find_run, load_run
    from trainer.job.train import train

    cfg = RunConfig.from_dict(tiny_run(tmp_path))
    res = train(cfg, progress=False)
    run_dir = tmp_path / "runs" / cfg.run_id()
    tags = MlflowClient(cfg.io.tracking_uri).get_run(res.mlflow_run_id).data.tags
    assert tags["dlm.weights"] == str((run_dir / "model.pt").resolve())
    assert find_run(tmp_path / "runs", cfg.run_id()[:5]) == run_dir
    model, fam, loaded, corpus = load_run(run_dir)
    assert loaded == cfg and fam.name == cfg.noise.family and not model.training
    out = subprocess.run([sys.executable, "-m", "trainer.sampling.sample", "--run", cfg.run_id()[:6],
                          "--out-dir", str(tmp_path / "runs"), "--steps", "8", "--n", "2",
                          "--threads", "1"],
                         cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    header, *body = out.stdout.splitlines()
    assert "family masked" in header and "steps 8" in header and "tokens/s" in header
    assert sum(line.startswith("--- sample") for line in body) == 2
    assert sum(len(line) for line in body if not line.startswith("---")) > 20   # decoded text
    # a run that has not finished has no weights: a clear error naming the file
    unfinished = tmp_path / "runs" / "0123456789abcdef"
    unfinished.mkdir()
    (unfinished / "config.json").write_text(json.dumps(cfg.to_dict()))
    with pytest.raises(FileNotFoundError, match="0123456789abcdef has no model.pt"):
        load_run(unfinished)
    # a run that finished before model.pt existed: its final (ZeRO-3) checkpoint gives the weights
    exported = {k: v.clone() for k, v in model.state_dict().items()}
    (run_dir / "model.pt").unlink()
    from trainer.sampling.sample import has_weights
    assert has_weights(run_dir) and not has_weights(unfinished)
    again, *_ = load_run(run_dir)
    assert all(torch.equal(again.state_dict()[k], v) for k, v in exported.items())


def test_inverse_cdf_draw_matches_the_distribution_and_never_picks_zero_mass():
    from trainer.sampling.samplers import _draw
    p = torch.tensor([0.0, 0.5, 0.0, 0.3, 0.2, 0.0])
    gen = torch.Generator().manual_seed(0)
    ids = _draw(p.expand(200_000, -1) * 3.0, gen)                  # unnormalised rows are fine
    freq = torch.bincount(ids, minlength=6).float() / ids.numel()
    assert freq[p == 0].sum() == 0
    assert (freq - p).abs().max() < 0.005                          # 5 sigma at n = 200k

