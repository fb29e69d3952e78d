"""Scoring rules for downstream tasks: one rule per task kind, the same for every noise family.

Every request becomes one sequence x = [EOT, context, continuation] of at most the model's seq_len
tokens (the context truncated from the left, as lm-eval-harness does; EOT is the document start
every training window's text follows). The log-likelihood of the continuation given the context is

- autoregressive: exact, −Σ NLL of the continuation's tokens, each read after everything before it;
- diffusion: −NELBO of the continuation with the context held clean (NoiseFamily.condition), a
  Monte-Carlo estimate over `t_draws` stratified t (t = u², importance-weighted, as validation
  draws it: trainer/job/objective.py VAL_T_POWER). Every choice of an item sees the same t and
  corruption draws (common random numbers: the generator is re-seeded per item and choice alike),
  so the comparison between choices carries less noise than each estimate. The estimate is a bound:
  −NELBO <= log p, so a diffusion model's choice is the one with the best bound, as in
  gidd-easydel's lm-eval fork (ELBO in place of the log-likelihood).

The rules (SCORERS, keyed by trainer/evaluation/tasks.py TaskSpec.kind):
- choice (HellaSwag, PIQA, ARC): acc = argmax of the log-likelihood is the gold; acc_norm =
  argmax of the log-likelihood per character of the continuation (lm-eval-harness acc_norm);
  diffusion also reports the estimator's spread: acc_draw_sd, the sd over draws of the accuracy
  each single draw would give, and ll_se, the mean standard error of a choice's estimate (nats).
- last_word (LAMBADA): acc = the last word, generated after the context by the family's own
  sampler (`generate` with a clean prefix; greedy: every draw takes the most likely token, so the
  autoregressive family decodes greedily), equals the gold word; nll_per_token = −log-likelihood
  of the gold word per token (AR: exact NLL; diffusion: NELBO).
- math (GSM8K): `gen_tokens` tokens generated after the question by the family's sampler at
  `steps` steps (greedy), cut at the first stop sequence; acc = the final number equals the gold.
"""
from __future__ import annotations

import re

import numpy as np
import torch

from core import schema as M
from trainer.evaluation.job import Settings
from trainer.evaluation.tasks import Task
from trainer.families.base import NoiseFamily, stratified_t
from trainer.job.objective import VAL_T_POWER, forward
from trainer.sampling.samplers import generate

GREEDY_TOP_P = 1e-9
"""A nucleus this small keeps only the most likely token (samplers.nucleus): greedy draws."""
STOP = ("Question:", "\n\n")
"""GSM8K generations end at the first of these (oe-eval's stop sequences)."""
MIN_CONTEXT = 8
"""Context tokens a generation task must leave room for in the window."""


def build(context: list[int], continuation: list[int], seq_len: int, eot: int) -> tuple[list[int], int]:
    """[eot, context, continuation] in at most seq_len tokens, the context cut from the left (the
    continuation too, from the right, if it alone does not fit). Returns (ids, continuation length)."""
    cont = continuation[:seq_len - 2]
    room = seq_len - 1 - len(cont)
    return [eot] + context[max(0, len(context) - room):] + cont, len(cont)


def _seed(settings: Settings, item: int) -> int:
    return settings.seed * 1_000_003 + item


@torch.no_grad()
def loglik(model, family: NoiseFamily, ids: list[int], n_cont: int, draws: int,
           gen: torch.Generator) -> np.ndarray:
    """(draws,) estimates of log p(last n_cont tokens | the rest) in nats (autoregressive: one,
    exact). Positions outside the continuation are held clean."""
    device = next(model.parameters()).device
    D = 1 if family.causal else draws
    x = torch.tensor(ids, dtype=torch.long, device=device).expand(D, -1)
    keep = (torch.arange(x.shape[1], device=device) < x.shape[1] - n_cont).expand(D, -1)
    t = tw = None
    if not family.causal:
        t, tw = stratified_t(D, gen, device, power=VAL_T_POWER)
    batch = family.condition(x, keep, t, tw, gen)
    total = torch.zeros(D, dtype=torch.float64, device=device)
    for part in (batch,) if batch.seq is None else (batch, batch.seq):   # Eso-LM: + sequential
        scored = family.scored_positions(part)
        pos = part.loss_mask if scored is None else scored & part.loss_mask
        if not pos.any():
            continue                                          # nothing corrupted: the term is 0
        rows = torch.arange(D, device=device)[:, None].expand_as(pos)[pos]
        total.index_add_(0, rows, family.nelbo(forward(model, part, pos), part, pos).double())
    return -total.cpu().numpy()


def _greedy(model, family: NoiseFamily, prefix: list[int], new: int, settings: Settings,
            item: int, eot: int) -> list[int]:
    """`new` tokens after `prefix` from the family's own sampler, greedy draws."""
    res = generate(model, family, n=1, seq_len=len(prefix) + new, steps=settings.steps,
                   seed=_seed(settings, item), top_p=GREEDY_TOP_P, greedy_final=True,
                   start_id=eot, prefix=torch.tensor(prefix, dtype=torch.long),
                   device=next(model.parameters()).device)
    return res.tokens[0, len(prefix):].tolist()


def score_choice(model, family: NoiseFamily, task: Task, corpus, settings: Settings):
    T, tok = model.cfg.seq_len, corpus.tokenizer
    gen = torch.Generator(device=next(model.parameters()).device)
    hits, hits_norm, per_draw, se, examples = [], [], [], [], []
    for i, item in enumerate(task.items):
        ctx, *conts = tok.encode_batch([item.context, *item.choices])
        lls = []
        for cont in conts:
            ids, n = build(ctx, cont, T, corpus.eot_id)
            gen.manual_seed(_seed(settings, i))                           # the same draws per choice
            lls.append(loglik(model, family, ids, n, settings.t_draws, gen))
        ll = np.stack(lls)                                                # (choices, draws)
        mean = ll.mean(1)
        chars = np.array([max(1, len(c)) for c in item.choices], dtype=float)
        hits.append(int(mean.argmax()) == item.gold)
        hits_norm.append(int((mean / chars).argmax()) == item.gold)
        per_draw.append(ll.argmax(0) == item.gold)                       # (draws,)
        if ll.shape[1] > 1:
            se.append(float((ll.std(1, ddof=1) / np.sqrt(ll.shape[1])).mean()))
        if i < 3:
            examples.append(f"{item.context[-200:]!r} -> choice {int(mean.argmax())} (gold "
                            f"{item.gold}); log-likelihoods {np.round(mean, 2).tolist()}")
    metrics = {M.EVAL_ACC: float(np.mean(hits)), M.EVAL_ACC_NORM: float(np.mean(hits_norm)),
               M.EVAL_CHANCE: task.chance()}
    if not family.causal:
        metrics[M.EVAL_ACC_DRAW_SD] = float(np.stack(per_draw).mean(0).std(ddof=1)) \
            if settings.t_draws > 1 else float("nan")
        metrics[M.EVAL_LL_SE] = float(np.mean(se)) if se else float("nan")
    return metrics, examples


def score_last_word(model, family: NoiseFamily, task: Task, corpus, settings: Settings):
    T, tok = model.cfg.seq_len, corpus.tokenizer
    gen = torch.Generator(device=next(model.parameters()).device)
    hits, nll, count, examples = [], 0.0, 0, []
    for i, item in enumerate(task.items):
        ctx, cont = tok.encode_batch([item.context, item.choices[0]])
        ids, n = build(ctx, cont, T, corpus.eot_id)
        gen.manual_seed(_seed(settings, i))
        nll -= float(loglik(model, family, ids, n, settings.t_draws, gen).mean())
        count += n
        word = tok.decode(_greedy(model, family, ids[:-n], n, settings, i, corpus.eot_id))
        hits.append(word.strip() == item.choices[0].strip())
        if i < 3:
            examples.append(f"...{item.context[-120:]!r} -> {word!r} (gold {item.choices[0]!r})")
    return {M.EVAL_ACC: float(np.mean(hits)), M.EVAL_NLL_TOKEN: nll / max(count, 1),
            M.EVAL_CHANCE: 0.0}, examples


_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def final_number(text: str) -> str | None:
    """The answer a GSM8K generation states: cut at the first stop sequence, then the number after
    'the answer is' (the few-shot format), else the last number; commas, '$' and a trailing '.'
    dropped. None if there is no number."""
    for stop in STOP:
        text = text.split(stop, 1)[0]
    said = re.search(r"answer is\s*\$?\s*(" + _NUMBER.pattern + ")", text)
    found = [said.group(1)] if said else _NUMBER.findall(text)
    return _normal(found[-1]) if found else None


def _normal(number: str) -> str:
    text = number.replace(",", "").replace("$", "").rstrip(".")
    try:
        value = float(text)
    except ValueError:
        return text
    return str(int(value)) if value == int(value) else repr(value)


def score_math(model, family: NoiseFamily, task: Task, corpus, settings: Settings):
    T, tok = model.cfg.seq_len, corpus.tokenizer
    room = T - 1 - settings.gen_tokens
    if room < MIN_CONTEXT:
        raise ValueError(f"gen_tokens {settings.gen_tokens} leaves {room} context tokens in the "
                         f"model's {T}-token window (at least {MIN_CONTEXT} needed)")
    hits, examples = [], []
    for i, item in enumerate(task.items):
        ctx = tok.encode_batch([item.context])[0]
        prefix = [corpus.eot_id] + ctx[max(0, len(ctx) - room):]
        text = tok.decode(_greedy(model, family, prefix, settings.gen_tokens, settings, i,
                                  corpus.eot_id))
        pred = final_number(text)
        hits.append(pred is not None and pred == _normal(item.answer))
        if i < 3:
            examples.append(f"{item.context[-120:]!r} -> {text!r} (read {pred}, gold {item.answer})")
    return {M.EVAL_ACC: float(np.mean(hits)), M.EVAL_CHANCE: 0.0}, examples


SCORERS = {"choice": score_choice, "last_word": score_last_word, "math": score_math}
