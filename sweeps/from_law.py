"""A second study at the optimum the first one found: ``--set train.batch_size=law:FITS`` sets
each run's batch (and LR) from the batch / LR laws of a fits.json that ``python -m
analysis.fit_laws`` wrote for an hparams study (analysis/hp_laws.py); ``--set train.lr=law:FITS``
sets the LR alone, eta*(B) at the run's own batch.

  batch = max(1, round(B*(D) / seq_len)) sequences, B*(D) = k D^b, D = the run's training tokens
  lr    = eta*(B) = k' B^c at B = batch x seq_len tokens

Each run takes the law of its own group (the family, or family@knob), so AR and masked runs get
their own optimum. Pure like every sweep: the orchestrator reads the file (``read``, before any
run starts) and passes its groups in; a missing file, group or law is a ValueError naming it.
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping

from trainer.config import RunConfig

PREFIX = "law:"
FIELDS = ("train.batch_size", "train.lr")


def split(overrides: list[str]) -> tuple[list[str], dict[str, str]]:
    """(plain overrides, {field: fits path}) of a --set list."""
    plain, laws = [], {}
    for item in overrides:
        path, _, value = item.partition("=")
        if value.startswith(PREFIX):
            if path not in FIELDS:
                raise ValueError(f"override {item!r}: only {', '.join(FIELDS)} can be set from a "
                                 "fitted law")
            laws[path] = value[len(PREFIX):]
        else:
            plain.append(item)
    return plain, laws


def parse(path: str, text: str) -> dict:
    """The 'groups' of a fits.json's text; ValueError naming ``path`` when it is not one."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"law file {path!r} is not readable JSON: {e}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("groups"), dict):
        raise ValueError(f"law file {path!r} has no 'groups': not a fits.json of analysis.fit_laws")
    return doc["groups"]


def _law(groups: dict, path: str, group: str, name: str) -> tuple[float, float]:
    law = (groups.get(group) or {}).get(name)
    if not law:
        have = sorted(g for g, v in groups.items() if v.get(name))
        raise ValueError(f"law file {path!r}: group {group!r} has no {name} (groups with one: "
                         f"{', '.join(have) or 'none'})")
    return law["coefficient"]["value"], law["exponent"]["value"]


def _group(cfg: RunConfig) -> str:
    from core.schema import group_label
    knob = cfg.noise.knob()
    return group_label(cfg.noise.family, float("nan") if knob is None else float(knob))


def apply(runs: list[RunConfig], laws: dict[str, str], files: Mapping[str, dict]
          ) -> list[RunConfig]:
    """The runs with batch and/or LR from the fitted laws: ``laws`` is ``split``'s second value,
    ``files`` each of its paths' ``parse``d groups."""
    if not laws:
        return runs
    from trainer.plan import plan
    missing = sorted(set(laws.values()) - set(files))
    if missing:
        raise ValueError(f"law file {missing[0]!r} was not read (pass law_files to sweeps.expand)")
    out = []
    for cfg in runs:
        tc, group = cfg.train, _group(cfg)
        batch = tc.batch_size
        if "train.batch_size" in laws:
            path = laws["train.batch_size"]
            k, b = _law(files[path], path, group, "batch_law")
            p = plan(cfg, cfg.data.vocab_size)
            tokens = tc.budget_flops / (p.flops_per_step / (tc.batch_size * tc.seq_len))
            batch = max(1, round(k * tokens ** b / tc.seq_len))
        lr = tc.lr
        path = laws.get("train.lr", laws.get("train.batch_size"))
        k, c = _law(files[path], path, group, "lr_law")
        lr = k * (batch * tc.seq_len) ** c
        out.append(dataclasses.replace(cfg, train=dataclasses.replace(tc, batch_size=batch, lr=lr)))
    return out
