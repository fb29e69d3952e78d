"""Ground-truth tests of the noise families' NELBO.

On i.i.d. tokens from a known unigram distribution p, a denoiser that predicts p at every position
makes the reverse process exact, so its NELBO per token must equal the entropy H(p) (up to the O(eps)
of the schedule). We integrate the NELBO exactly: a midpoint rule in t (substituting t = u² to resolve
the log-singular integrand near t = 0) and the exact expectation over x ~ p and z_t ~ q_t(·|x).
"""
import json
import math

import pytest
import torch

from trainer.families.base import NoisyBatch, stratified_t
from trainer.families.registry import FAMILIES, NoiseConfig, build_family

V = 6
# hybrid at uniform shares p_u = sigmoid(b) = 0.3 and 0.7 at log-SNR 0
DIFFUSION = [("masked", {}), ("uniform", {}), ("hybrid", {"mixing_shift": math.log(0.3 / 0.7)}),
             ("hybrid", {"mixing_shift": math.log(0.7 / 0.3)})]


@pytest.fixture(scope="module")
def p():
    """A random, clearly non-uniform unigram distribution over V tokens."""
    g = torch.Generator().manual_seed(0)
    return torch.softmax(torch.randn(V, generator=g, dtype=torch.float64), 0)


def entropy(p):
    return -(p * p.log()).sum().item()


def exact_nelbo(fam, p, predictor, n_t=4000):
    """∫_0^1 Σ_x p(x) Σ_z q_t(z|x) · integrand(x̂(z, t), x, z, t) dt, integrated on a grid."""
    S = fam.input_vocab_size
    u = (torch.arange(n_t, dtype=torch.float64) + 0.5) / n_t
    t, dt = u ** 2, 2 * u / n_t                                   # t = u², dt = 2u du
    x = torch.arange(V)[None, :, None].expand(n_t, V, S)
    z = torch.arange(S)[None, None, :].expand(n_t, V, S)
    tt = t[:, None, None].expand(n_t, V, S)
    q = fam.marginal(torch.arange(V)[None, :].expand(n_t, V), t[:, None])      # (n_t, V, S)
    f = fam.nelbo_from_logprobs(predictor(fam, p, z, tt), x, z, tt)
    f = torch.where(q > 0, f, torch.zeros_like(f))               # impossible z_t contribute nothing
    return (((q * f).sum(-1) * p).sum(-1) * dt).sum().item()


def unigram(fam, p, z, t):
    return p.log().expand(*z.shape, V)


def uniform_pred(fam, p, z, t):
    return torch.full((*z.shape, V), -math.log(V), dtype=torch.float64)


def posterior(fam, p, z, t):
    """x̂_y ∝ p(y)·q_t(z|y): the per-position posterior, which double-counts z_t."""
    ys = torch.arange(V).expand(*z.shape, V)
    qz = fam.marginal(ys, t[..., None]).gather(-1, z[..., None, None].expand(*z.shape, V, 1))[..., 0]
    w = p * qz
    return (w / w.sum(-1, keepdim=True)).log()


@pytest.mark.parametrize("name,kw", DIFFUSION)
def test_unigram_predictor_nelbo_equals_entropy(name, kw, p):
    eps = 1e-5
    fam = build_family(NoiseConfig(family=name, eps=eps, **kw), V)
    got, H = exact_nelbo(fam, p, unigram), entropy(p)
    print(f"{name} {kw}: NELBO(x̂=p) = {got:.6f}, H(p) = {H:.6f}")
    assert abs(got - H) < 1e-4 + eps * H
    if name == "masked":                                          # exactly (1 − eps)·H for log-linear
        assert got == pytest.approx((1 - eps) * H, abs=1e-7)


@pytest.mark.parametrize("name,kw", DIFFUSION)
def test_other_predictors_score_strictly_higher(name, kw, p):
    fam = build_family(NoiseConfig(family=name, eps=1e-5, **kw), V)
    H = entropy(p)
    # predicting uniform everywhere: NELBO = cross-entropy of p against uniform = log V
    assert exact_nelbo(fam, p, uniform_pred) == pytest.approx(math.log(V), abs=1e-4)
    assert math.log(V) > H + 0.05
    if name != "masked":                                          # masked: posterior given a mask is p
        post = exact_nelbo(fam, p, posterior)
        print(f"{name} {kw}: NELBO(posterior) = {post:.4f} vs H(p) = {H:.4f}")
        assert post > H + 0.3


def test_masked_weight_is_one_over_t():
    fam = build_family(NoiseConfig(family="masked", eps=1e-3), V)
    t = torch.tensor([[0.1], [0.5], [0.9]])
    z = torch.full((3, 1), fam.mask_id)
    w, _ = fam.elbo_terms(torch.log_softmax(torch.randn(3, 1, V), -1), torch.zeros(3, 1, dtype=torch.long), z, t)
    assert torch.allclose(w, 1 / t)


@pytest.mark.parametrize("name,kw", DIFFUSION)
def test_perfect_predictor_has_zero_nelbo(name, kw):
    fam = build_family(NoiseConfig(family=name, **kw), V)
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, V, (64, 32), generator=g)
    batch = fam.prepare(torch.cat([x, x[:, :1]], 1), g)
    logits = 60.0 * torch.nn.functional.one_hot(x, V).float()     # x̂ = x (to float precision)
    assert fam.nelbo(logits, batch).abs().max().item() < 1e-4
    assert (batch.inputs != x).any()                               # there was noise to undo


@pytest.mark.parametrize("shift,other", [(-1000.0, "masked"), (1000.0, "uniform")])
def test_hybrid_ends_reproduce_masked_and_uniform(shift, other):
    g = torch.Generator().manual_seed(2)
    hyb = build_family(NoiseConfig(family="hybrid", mixing_shift=shift), V)
    ref = build_family(NoiseConfig(family=other), V)
    x = torch.randint(0, V, (256, 16), generator=g)
    t = torch.rand(256, generator=g).clamp_min(1e-3)
    # same corruption draw for both (identical random streams)
    z_h = hyb.corrupt(x, t, torch.Generator().manual_seed(3))
    z_r = ref.corrupt(x, t, torch.Generator().manual_seed(3))
    assert torch.equal(z_h, z_r)
    assert torch.allclose(hyb.marginal(x, t[:, None])[..., :ref.input_vocab_size],
                          ref.marginal(x, t[:, None]), atol=1e-7)
    # float64: the two closed forms agree to 1e-12; in float32 they differ by ~2e-5 nats from
    # cancellation inside the KL at small t, which is irrelevant to training
    lp = torch.log_softmax(torch.randn(256, 16, V, generator=g, dtype=torch.float64), -1)
    a = hyb.nelbo_from_logprobs(lp, x, z_h, t[:, None].double())
    b = ref.nelbo_from_logprobs(lp, x, z_r, t[:, None].double())
    assert torch.allclose(a, b, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name,kw", DIFFUSION)
def test_corrupt_matches_marginal(name, kw):
    fam = build_family(NoiseConfig(family=name, **kw), V)
    g = torch.Generator().manual_seed(4)
    x = torch.full((200_000, 1), 2)
    t = torch.full((200_000,), 0.6)
    z = fam.corrupt(x, t, g)[:, 0]
    emp = torch.bincount(z, minlength=fam.input_vocab_size).double() / z.numel()
    want = fam.marginal(torch.tensor([2]), torch.tensor([0.6]))[0].double()
    assert torch.allclose(emp, want, atol=4e-3)


@pytest.mark.parametrize("name,kw", DIFFUSION)
def test_monte_carlo_estimator_matches_exact(name, kw, p):
    """The batch estimator (stratified t, sampled z_t) is unbiased: with importance-sampled t it
    lands within 4 standard errors of the exact integral."""
    fam = build_family(NoiseConfig(family=name, eps=1e-3, **kw), V)
    exact = exact_nelbo(fam, p.float().double(), unigram)
    g = torch.Generator().manual_seed(5)
    x = torch.multinomial(p.float(), 4096 * 65, replacement=True, generator=g).view(4096, 65)
    batch = fam.prepare(x, g, t_power=2.0)
    logits = p.float().log().expand(4096, 64, V)
    per_seq = fam.nelbo(logits, batch).mean(1).double()
    mean, se = per_seq.mean().item(), per_seq.std().item() / math.sqrt(per_seq.numel())
    print(f"{name} {kw}: MC {mean:.4f} ± {se:.4f}, exact {exact:.4f}")
    assert abs(mean - exact) < 4 * se + 1e-3


def test_stratified_t_importance_weights_integrate():
    for power in (1.0, 2.0, 3.0):
        t, w = stratified_t(100_000, torch.Generator().manual_seed(6), power=power)
        assert 0 < t.min() and t.max() <= 1
        assert (w * t).mean().item() == pytest.approx(0.5, abs=1e-3)       # ∫ t dt
        assert (w * t.sqrt()).mean().item() == pytest.approx(2 / 3, abs=1e-3)


def test_autoregressive_unigram_nll_is_entropy(p):
    fam = build_family(NoiseConfig(family="autoregressive"), V)
    window = torch.arange(V).repeat(2)[None, :V + 1]              # targets = 1..5, 0 -> weight by p
    targets = torch.arange(V)[None]
    batch = NoisyBatch(inputs=targets, targets=targets, t=None)
    nll = fam.nelbo(p.log().float().expand(1, V, V), batch)[0].double()
    assert (nll * p).sum().item() == pytest.approx(entropy(p), abs=1e-6)
    b2 = fam.prepare(window)
    # issue 13: the same T tokens as diffusion (window[:, :T]), read after <|endoftext|> (id 0)
    assert torch.equal(b2.targets, window[:, :-1])
    assert torch.equal(b2.inputs, torch.cat([torch.zeros_like(window[:, :1]), window[:, :-2]], 1))
    assert fam.causal and not any(FAMILIES[n].causal for n in FAMILIES if n != "autoregressive")


def test_every_registered_family_builds_and_trains_a_step():
    g = torch.Generator().manual_seed(7)
    window = torch.randint(0, V, (8, 17), generator=g)
    for name in FAMILIES:
        fam = build_family(NoiseConfig(family=name), V)
        batch = fam.prepare(window, g)
        logits = torch.randn(8, 16, V, requires_grad=True)
        loss = fam.loss(logits, batch)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(logits.grad).all(), name
        assert batch.inputs.max() < fam.input_vocab_size


@pytest.mark.parametrize("shift", [-1000.0, 0.0, 1000.0])
def test_hybrid_gradients_finite_at_and_between_ends(shift):
    fam = build_family(NoiseConfig(family="hybrid", mixing_shift=shift), V)
    g = torch.Generator().manual_seed(8)
    batch = fam.prepare(torch.randint(0, V, (16, 33), generator=g), g)
    logits = torch.randn(16, 32, V, requires_grad=True)
    fam.loss(logits, batch).backward()
    assert torch.isfinite(logits.grad).all()


def test_training_loss_options():
    with pytest.raises(ValueError, match="train_loss"):
        NoiseConfig(family="uniform", train_loss="ce")
    with pytest.raises(ValueError, match="train_loss"):
        NoiseConfig(family="hybrid", train_loss="ce")
    with pytest.raises(ValueError, match="noise.family"):
        NoiseConfig(family="gaussian")
    with pytest.raises(ValueError, match="mixing_shift"):
        NoiseConfig(family="hybrid", mixing_shift=1500.0)
    assert NoiseConfig(family="masked").resolved_train_loss() == "ce"
    assert NoiseConfig(family="uniform").resolved_train_loss() == "gidd"      # issue 13: was "elbo"
    # CE on masked positions only: with the masked ELBO weight 1/t removed it is the NLL there,
    # summed and divided by all positions (issue 13: 2602.15014's low_var; was nll[m].mean())
    fam = build_family(NoiseConfig(family="masked"), V)
    g = torch.Generator().manual_seed(9)
    batch = fam.prepare(torch.randint(0, V, (32, 65), generator=g), g)
    logits = torch.randn(32, 64, V, generator=g)
    lp = torch.log_softmax(logits, -1)
    nll = -lp.gather(-1, batch.targets[..., None])[..., 0]
    m = batch.inputs == fam.mask_id
    assert fam.loss(logits, batch, "ce").item() == pytest.approx(nll[m].sum().item() / m.numel(), rel=1e-5)
    # weight clipping lowers the ELBO training loss (weights 1/t > 1 are cut to 1)
    clipped = build_family(NoiseConfig(family="masked", train_loss="elbo", weight_clip=1.0), V)
    assert clipped.loss(logits, batch).item() < fam.loss(logits, batch, "elbo").item()


def test_fused_log_qhat_matches_autograd_and_survives_a_zero_prior():
    """trainer/families/qhat.py's closed-form backward equals autograd through the plain formula, and a
    zero prior mass (hybrid at mixing_shift −1000) with an underflowed x̂ stays finite."""
    from trainer.families.qhat import log_qhat_stats
    g = torch.Generator().manual_seed(3)
    B, T, V = 3, 5, 11
    s = torch.randn(B, T, V, generator=g, dtype=torch.float64, requires_grad=True)
    a = torch.rand(B, 1, generator=g, dtype=torch.float64)
    b = (1 - a) / V * 0.6
    x, z = (torch.randint(0, V, (B, T), generator=g) for _ in range(2))
    z[0, :2] = x[0, :2]                                            # z == x positions too
    assert torch.autograd.gradcheck(lambda s: log_qhat_stats(s, a, b, x, z), (s,))

    def plain(s):
        lq = torch.log(a[..., None] * s.softmax(-1) + b[..., None])
        return lq.sum(-1), lq.gather(-1, x[..., None])[..., 0], lq.gather(-1, z[..., None])[..., 0]
    for u, v in zip(plain(s), log_qhat_stats(s, a, b, x, z)):
        torch.testing.assert_close(u, v)
    logits = torch.zeros(2, 4, V)
    logits[..., 0] = 200.0                                         # x̂ of every other token underflows
    logits.requires_grad_(True)
    fam = build_family(NoiseConfig(family="hybrid", mixing_shift=-1000.0), V)
    batch = fam.prepare(torch.randint(0, V, (2, 5), generator=g), g)
    loss = fam.loss(logits, batch)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("family,kind", [("masked", "ce"), ("masked", "elbo"),
                                         ("autoregressive", "ce"), ("uniform", "elbo")])
def test_scored_positions_give_the_same_loss_nelbo_and_gradients(family, kind):
    # The model computes logits only at `scored_positions` (masked: the masked ones); the loss, its
    # gradients and the validation NELBO must equal the all-positions computation.
    from core.ladder import model_config
    from trainer.model.transformer import Transformer
    from trainer.job import objective
    fam = build_family(NoiseConfig(family=family, train_loss=kind), 40)
    torch.manual_seed(0)
    model = Transformer(model_config("L1-d16", vocab_size=fam.input_vocab_size, out_vocab_size=40,
                                     seq_len=32, causal=fam.causal, time_cond=fam.time_cond_default))
    window = torch.randint(0, 40, (6, 33), generator=torch.Generator().manual_seed(1))
    batch = fam.prepare(window, torch.Generator().manual_seed(2))
    pos = fam.scored_positions(batch)
    if family == "masked":
        assert 0 < int(pos.sum()) < pos.numel()         # a real subset: some masked, some not
    else:
        assert pos is None
    grads = []
    for fast in (False, True):
        model.zero_grad()
        value = objective.loss(model, fam, batch) if fast else fam.loss(objective.forward(model, batch), batch)
        value.backward()
        grads.append((value.item(), [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    (full, g_full), (fast, g_fast) = grads
    assert fast == pytest.approx(full, rel=1e-6)
    assert len(g_full) == len(g_fast)
    for a, b in zip(g_full, g_fast):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    with torch.no_grad():
        full_sum = fam.nelbo(objective.forward(model, batch), batch).double().sum().item()
        fast_sum = fam.nelbo(objective.forward(model, batch, pos), batch, pos).double().sum().item()
    assert fast_sum == pytest.approx(full_sum, rel=1e-6)
    # a flat batch carries t per position
    if pos is not None:
        flat = batch.select(pos)
        assert flat.t.shape == flat.targets.shape == (int(pos.sum()),)


@pytest.mark.parametrize("b,share", [(0.0, 0.5), (-2.0, 0.119203), (2.0, 0.880797),
                                     (-1000.0, 0.0), (1000.0, 1.0)])
def test_hybrid_knob_is_the_mixing_shift_and_its_label_the_uniform_share(b, share):
    """The knob is 2512.10858's b: σ_t = sigmoid(λ_t + b), so at log-SNR λ = 0 (α = 1/2) the
    prior's uniform fraction is sigmoid(b), the derived label p_u (NoiseConfig.uniform_share)."""
    cfg = NoiseConfig(family="hybrid", mixing_shift=b)
    spec = FAMILIES["hybrid"].knob
    assert spec.field == "mixing_shift" and cfg.knob() == b
    assert cfg.uniform_share() == spec.derived(b) == pytest.approx(share, abs=1e-6)
    if abs(b) < 1000:
        assert cfg.uniform_share() == pytest.approx(1 / (1 + math.exp(-b)), rel=1e-15)
    assert cfg.knob_label() == f"b={b:g} p_u={share:.3g}"
    fam = build_family(cfg, V)
    t0 = torch.tensor([[0.5 / (1 - cfg.eps)]], dtype=torch.float64)          # α_t = 1/2: λ = 0
    a = fam.alpha(t0)
    assert a.item() == pytest.approx(0.5, abs=1e-15)
    assert fam.sigma(t0).item() == pytest.approx(share, abs=1e-6)
    m = fam.marginal(torch.zeros(1, 1, dtype=torch.long), t0)                # (1, 1, V + 1)
    uniform_mass, mask_mass = (m[..., :V].sum() - a).item(), m[..., V].item()
    assert uniform_mass / (uniform_mass + mask_mass) == pytest.approx(share, abs=1e-6)
    # away from λ = 0 the shift adds to the log-SNR: σ_t = sigmoid(λ_t + b)
    t = torch.tensor([[0.1], [0.9]], dtype=torch.float64)
    lam = torch.log(fam.alpha(t)) - torch.log1p(-fam.alpha(t))
    torch.testing.assert_close(fam.sigma(t), torch.sigmoid(lam + b), rtol=0, atol=0)


def test_hybrid_shift_survives_run_ids_params_and_overrides():
    from trainer.config import RunConfig
    base = RunConfig(noise=NoiseConfig(family="hybrid"))
    for b in (-1000.0, -2.0, 1000.0):
        cfg = base.with_overrides([f"noise.mixing_shift={b:g}"])            # '-1000', an int
        assert cfg.noise.mixing_shift == b and isinstance(cfg.noise.mixing_shift, float)
        assert cfg.run_id() == RunConfig(noise=NoiseConfig(family="hybrid", mixing_shift=b)).run_id()
        assert "Infinity" not in cfg.to_json() and RunConfig.from_dict(
            json.loads(cfg.to_json())).run_id() == cfg.run_id()
        assert cfg.flat()["noise.mixing_shift"] == repr(b)
    assert len({base.with_overrides([f"noise.mixing_shift={b}"]).run_id()
                for b in (-1000, -2, 0, 2, 1000)}) == 5
    with pytest.raises(ValueError, match="finite"):
        base.with_overrides(["noise.mixing_shift=Infinity"])
