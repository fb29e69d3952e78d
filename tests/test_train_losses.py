"""The training losses as the papers train them, and AR/diffusion parity (issue 13).

- 'ce' (2602.15014's low_var): CE summed over the masked positions / all positions.
- 'gidd' (2512.10858): the ELBO integrand per unit log-SNR, checked against gidd-easydel's own
  dense formulas (loss.py GiddLoss, schedule.py get_loss_weights), written out here independently.
- the training options t_min, p_independent, p_prompt, and that validation ignores them.
- the autoregressive family scores the same T tokens as diffusion after <|endoftext|>.
"""
import math

import pytest
import torch

from trainer.families.base import T_MIN, stratified_t
from trainer.families.registry import FAMILIES, GIDD_WEIGHT_CLIP, NoiseConfig, build_family, t_min_for_log_snr

V = 7


def _batch(fam, B=16, T=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    window = torch.randint(0, V, (B, T + 1), generator=g)
    return fam.prepare(window, g), torch.randn(B, T, V, generator=g, dtype=torch.float64)


def test_masked_ce_is_the_masked_sum_over_all_tokens():
    fam = build_family(NoiseConfig(family="masked"), V)
    batch, logits = _batch(fam)
    nll = -torch.log_softmax(logits, -1).gather(-1, batch.targets[..., None])[..., 0]
    m = batch.inputs == fam.mask_id
    assert 0 < int(m.sum()) < m.numel()
    want = nll[m].sum() / m.numel()                       # scaling-dllms TrainerBase._loss
    assert fam.loss(logits, batch, "ce").item() == pytest.approx(want.item(), rel=1e-6)          # loss runs in fp32
    assert fam.loss_count(batch) == m.numel()
    # the old normalisation (by the masked count) is larger by numel / masked
    assert fam.loss(logits, batch, "ce").item() < (nll[m].mean()).item()


def _gidd_reference(fam, logits, batch, b):
    """gidd-easydel's loss, dense: loss_weights (π(z) − π'(z)) / (π(z) + e^λ·[z = x]) times
    KL(q_t(·|x) ‖ q_t(·|x̂)) + (ρ − log ρ − 1), ρ = q_t(z|x)/q_t(z|x̂), π over V real + mask
    (π_real = σ/V, π_mask = 1 − σ, σ = sigmoid(λ + b)), π' = dπ/dλ; mean over positions."""
    x, z = batch.targets, batch.inputs
    t = batch.t[:, None].double().expand_as(x)
    a = 1 - (1 - fam.cfg.eps) * t
    lam = torch.log(a) - torch.log1p(-a)
    s = torch.sigmoid(lam + b)                            # b = ±1000: exactly 1 / 0
    S = V + 1
    pi = torch.cat([(s / V)[..., None].expand(*x.shape, V), (1 - s)[..., None]], -1)
    dpi = torch.cat([(s * (1 - s) / V)[..., None].expand(*x.shape, V), (-s * (1 - s))[..., None]], -1)
    onehot = torch.nn.functional.one_hot(x, S).double()
    xhat = torch.cat([torch.softmax(logits, -1), torch.zeros(*x.shape, 1, dtype=torch.float64)], -1)
    q = a[..., None] * onehot + (1 - a)[..., None] * pi
    p = a[..., None] * xhat + (1 - a)[..., None] * pi
    kl = torch.where(q > 0, q * (q.clamp_min(1e-300).log() - p.clamp_min(1e-300).log()), 0.0).sum(-1)
    qz, pz = q.gather(-1, z[..., None])[..., 0], p.gather(-1, z[..., None])[..., 0]
    rho = qz / pz
    is_div = rho - rho.log() - 1
    piz, dpiz = pi.gather(-1, z[..., None])[..., 0], dpi.gather(-1, z[..., None])[..., 0]
    w = (piz - dpiz) / (piz + torch.exp(lam) * (z == x)).clamp_min(1e-8)
    return (w.clamp(0, GIDD_WEIGHT_CLIP) * (kl + is_div)).mean()


# mixing shift b: uniform / masked are the ends b = ±1000; hybrid at uniform shares 0.3 and 0.8
@pytest.mark.parametrize("name,shift", [("uniform", 1000.0), ("hybrid", math.log(0.3 / 0.7)),
                                        ("hybrid", math.log(0.8 / 0.2)), ("masked", -1000.0)])
def test_gidd_loss_equals_gidd_easydel_formula(name, shift):
    fam = build_family(NoiseConfig(family=name, mixing_shift=shift, train_loss="gidd"), V)
    batch, logits = _batch(fam, seed=1)
    got = fam.loss(logits, batch).item()
    want = _gidd_reference(fam, logits, batch, shift).item()
    print(f"{name} b={shift:g}: gidd {got:.6f} reference {want:.6f}")
    assert got == pytest.approx(want, rel=1e-4)
    # and it is the ELBO integrand times α(1 − α)/|α'|: not the NELBO
    a = fam.alpha(batch.t[:, None].double())
    integrand = fam.nelbo(logits, batch).double()
    assert got == pytest.approx((integrand * a * (1 - a) / (1 - fam.cfg.eps)).mean().item(), rel=1e-4)


def test_gidd_weights_are_bounded_and_clipped():
    fam = build_family(NoiseConfig(family="uniform", train_loss="gidd"), V)
    t = torch.tensor([1e-6, 1e-3, 0.5, 1.0])[:, None].expand(4, 3)
    x = torch.zeros(4, 3, dtype=torch.long)
    z = torch.tensor([0, 1, 2])[None].expand(4, 3)
    w, _ = fam.elbo_terms(torch.log_softmax(torch.randn(4, 3, V), -1), x, z, t)
    g = w * fam.gidd_factor(t)
    assert (g <= 1 + 1e-6).all() and w.max() > 1e4             # ELBO weight ~1/t, GIDD's <= 1
    batch, logits = _batch(fam, seed=2)
    clipped = build_family(NoiseConfig(family="uniform", train_loss="gidd", weight_clip=0.05), V)
    assert clipped.loss(logits, batch).item() < fam.loss(logits, batch).item()


def test_t_floor_is_training_only():
    t, _ = stratified_t(1000, torch.Generator().manual_seed(0), t_min=1e-3)
    assert t.min() >= 1e-3 and t.max() < 1
    t0, _ = stratified_t(1000, torch.Generator().manual_seed(0))
    assert t0.min() < 1e-3 and t0.min() >= T_MIN
    # t_min = 0 is today's draw, bit for bit
    u = torch.rand((), generator=torch.Generator().manual_seed(0))
    assert torch.equal(t0, ((torch.arange(1000) + u) / 1000).clamp_min(T_MIN))
    fam = build_family(NoiseConfig(family="uniform", t_min=0.2), V)
    window = torch.randint(0, V, (64, 9), generator=torch.Generator().manual_seed(1))
    assert fam.prepare(window, torch.Generator().manual_seed(2)).t.min() >= 0.2
    assert fam.prepare(window, torch.Generator().manual_seed(2), training=False).t.min() < 0.2
    # gidd-easydel's log-SNR limit 9 as a t floor
    tm = t_min_for_log_snr(9.0, 1e-3)
    a = 1 - (1 - 1e-3) * tm
    assert math.log(a / (1 - a)) == pytest.approx(9.0, abs=1e-9) and tm == pytest.approx(1.235e-4, rel=1e-3)


def test_independent_per_token_noise():
    fam = build_family(NoiseConfig(family="hybrid", p_independent=0.5), V)
    window = torch.randint(0, V, (400, 17), generator=torch.Generator().manual_seed(3))
    batch = fam.prepare(window, torch.Generator().manual_seed(4))
    assert batch.t.shape == (400, 16)
    varies = batch.t.std(1) > 0
    assert 0.4 < varies.float().mean() < 0.6                    # about half the sequences
    assert batch.model_t().shape == (400,)
    logits = torch.randn(400, 16, V)
    assert torch.isfinite(fam.loss(logits, batch))
    # the flat batch of the masked fast path carries per-token t
    flat = batch.select(torch.ones(400, 16, dtype=torch.bool))
    assert torch.equal(flat.t, batch.t.reshape(-1))
    assert fam.prepare(window, torch.Generator().manual_seed(4), training=False).t.dim() == 1


@pytest.mark.parametrize("name", ["masked", "uniform"])
def test_clean_prompt_stays_clean_and_out_of_the_loss(name):
    fam = build_family(NoiseConfig(family=name, p_prompt=1.0, train_loss="elbo"), V)
    window = torch.randint(0, V, (32, 21), generator=torch.Generator().manual_seed(5))
    batch = fam.prepare(window, torch.Generator().manual_seed(6))
    prompt = ~batch.loss_mask
    assert prompt[:, 0].all() and prompt.any(1).all() and batch.loss_mask.any()
    assert torch.equal(batch.inputs[prompt], batch.targets[prompt])
    assert fam.loss_count(batch) == int(batch.loss_mask.sum())
    logits = torch.randn(32, 20, V, dtype=torch.float64)
    other = logits.clone()
    other[prompt] = torch.randn(int(prompt.sum()), V, dtype=torch.float64)
    assert fam.loss(other, batch).item() == pytest.approx(fam.loss(logits, batch).item(), rel=1e-12)
    assert fam.prepare(window, torch.Generator().manual_seed(6), training=False).loss_mask is None
    # a data-parallel rank's rows keep the mask
    assert torch.equal(batch.rows(slice(0, 8)).loss_mask, batch.loss_mask[:8])


def test_training_options_are_validated():
    for kw in ({"t_min": 1.0}, {"t_min": -0.1}, {"p_independent": 1.5}, {"p_prompt": -0.1}):
        with pytest.raises(ValueError, match=next(iter(kw))):
            NoiseConfig(family="uniform", **kw)
    with pytest.raises(ValueError, match="no diffusion time"):
        NoiseConfig(family="autoregressive", t_min=1e-3)
    with pytest.raises(ValueError, match="train_loss"):
        NoiseConfig(family="autoregressive", train_loss="gidd")
    for name, spec in FAMILIES.items():
        assert NoiseConfig(family=name).resolved_train_loss() == spec.default_train_loss


# --- AR and diffusion score the same tokens --------------------------------------------------------

def test_unigram_predictor_gets_the_same_loss_from_ar_and_masked_diffusion():
    """On the same windows, a context-free predictor p scores Σ −log p(x_i) over window[:, :T] under
    AR and (1 − eps)× that as masked diffusion's exact NELBO (for this schedule and any window, not
    only in expectation). AR reading window[0] for free would score window[:, 1:] instead."""
    eps, T = 1e-5, 12
    g = torch.Generator().manual_seed(7)
    p = torch.softmax(3 * torch.randn(V, generator=g, dtype=torch.float64), 0)
    window = torch.multinomial(p, 4 * (T + 1), replacement=True, generator=g).view(4, T + 1)
    window[:, 0], window[:, T] = p.argmax(), p.argmin()          # the two scorings differ here
    logp = p.log()
    ar = build_family(NoiseConfig(family="autoregressive"), V)
    b = ar.prepare(window)
    ar_loss = ar.loss(logp.expand(4, T, V), b).item()
    assert ar_loss == pytest.approx(-logp[window[:, :T]].mean().item(), rel=1e-6)
    assert b.inputs[:, 0].eq(ar.start_id).all() and ar.start_id == 0    # <|endoftext|>

    masked = build_family(NoiseConfig(family="masked", eps=eps), V)
    n_t = 2000
    t = ((torch.arange(n_t, dtype=torch.float64) + 0.5) / n_t)        # the integrand is flat in t
    x = window[:, :T]
    total = torch.zeros((), dtype=torch.float64)
    for z_state in range(masked.input_vocab_size):                    # exact expectation over z_t
        z = torch.full_like(x, z_state)
        for ti in t:
            tt = ti.expand(x.shape)
            q = masked.marginal(x, tt).gather(-1, z[..., None])[..., 0]
            f = masked.nelbo_from_logprobs(logp.expand(*x.shape, V), x, z, tt)
            total += (q * torch.where(q > 0, f, 0.0)).sum() / n_t
    diff_nelbo = (total / x.numel()).item()
    print(f"AR {ar_loss:.6f}, masked exact NELBO {diff_nelbo:.6f}, "
          f"AR on window[:, 1:] {-logp[window[:, 1:]].mean().item():.6f}")
    assert diff_nelbo == pytest.approx((1 - eps) * ar_loss, rel=1e-6)
    assert abs(-logp[window[:, 1:]].mean().item() - ar_loss) > 0.1


def test_gen_ppl_judge_reads_what_ar_training_scores():
    """quality.judge_nll on the first T tokens of a window = the AR family's NELBO of that window."""
    from core.ladder import ModelConfig
    from trainer.model.transformer import Transformer
    from trainer.sampling.quality import judge_nll
    ar = build_family(NoiseConfig(family="autoregressive"), V)
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=V, out_vocab_size=V, n_layer=1, d_model=16, n_head=2,
                                    seq_len=10, causal=True, time_cond="none")).eval()
    window = torch.randint(0, V, (5, 11), generator=torch.Generator().manual_seed(8))
    batch = ar.prepare(window)
    with torch.no_grad():
        nelbo = ar.nelbo(model(batch.inputs), batch).mean().item()
    assert judge_nll(model, window[:, :-1], start_id=ar.start_id) == pytest.approx(nelbo, rel=1e-6)
