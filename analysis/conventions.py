"""What a run's MLflow params say about its N and C, including runs logged before a count existed:
its backbone N (``fit_laws --n-column``) and its training FLOPs per token under every convention of
core.flops.CONVENTIONS, so that a finished study is refitted under any convention without
retraining (``fit_laws --flops NAME``).

A run logs ``flops_per_token.<name>`` for every convention (core/schema.py). A run logged before
those params existed has them recomputed from its config (ladder size, MLP kind, vocabulary,
context length, time conditioning), and the recomputation is accepted only if it reproduces the
count the run did log, ``flops_per_token`` under its own ``train.flop_convention``, to 1e-9:
otherwise that run's other conventions are NaN (and the run is dropped from a fit under them,
counted as NaN), never a guess.
"""

from __future__ import annotations

import math

from core import schema as M
from core.flops import CONVENTIONS, backbone_params, train_flops_per_token
from core.ladder import COND_DIM, LADDER, MLP_HIDDEN, TIME_CONDS, model_config

DEFAULT = "matmul"
"""The convention a study is fitted under when it does not say (the project's default)."""

_REL_TOL = 1e-9
# Before issue 13, RunConfig.time_cond was a bool (None: the family's default, full-width adaLN
# for the diffusion families that took t); the layout of that adaLN is TIME_CONDS "adaln_full".
_LEGACY_TIME_COND = {"True": "adaln_full", "False": "none"}
# The families that took t then, under the names those runs logged (hybrid was "interpolating").
_LEGACY_TAKES_T = ("uniform", "interpolating")


def number(text: str | None) -> float:
    """A param or tag as a float; NaN when missing, empty or not a number."""
    try:
        return float(text) if text not in (None, "") else math.nan
    except ValueError:
        return math.nan



def backbone(params: dict, size: str) -> float:
    """The run's backbone N: its logged ``n_params_backbone``, else (a run logged before that
    param existed) recomputed from its config: the backbone depends on the ladder size and the
    MLP kind only (core.flops.backbone_params). NaN when neither is there."""
    logged = number(params.get(M.PARAM_N_BACKBONE))
    mlp = params.get("mlp", "gelu")
    if logged == logged or size not in LADDER or mlp not in MLP_HIDDEN:
        return logged
    return float(backbone_params(model_config(size, vocab_size=2, out_vocab_size=2, seq_len=1,
                                              mlp=mlp)))


def _time_cond(params: dict, family: str) -> str | None:
    resolved = params.get(M.PARAM_TIME_COND)
    if resolved in TIME_CONDS:
        return resolved
    raw = params.get("time_cond", "None")
    if raw in _LEGACY_TIME_COND:
        return _LEGACY_TIME_COND[raw]
    if raw in ("None", ""):
        return "adaln_full" if family in _LEGACY_TAKES_T else "none"
    return None


def _shape(params: dict, tags: dict):
    """The run's model shape as far as FLOP counts go (the input vocabulary and causality count
    under no convention), or None when its params do not say."""
    size, mlp = tags.get(M.TAG_SIZE, ""), params.get("mlp", "gelu")
    vocab, seq_len = number(params.get("data.vocab_size")), number(params.get("train.seq_len"))
    time_cond = _time_cond(params, tags.get(M.TAG_FAMILY, ""))
    if (size not in LADDER or mlp not in MLP_HIDDEN or time_cond is None
            or not vocab >= 2 or not seq_len >= 1):
        return None
    cond_dim = number(params.get("cond_dim"))
    return model_config(size, vocab_size=int(vocab), out_vocab_size=int(vocab),
                        seq_len=int(seq_len), time_cond=time_cond, mlp=mlp,
                        cond_dim=int(cond_dim) if cond_dim >= 1 else COND_DIM)


def per_token(params: dict, tags: dict) -> dict[str, float]:
    """Training FLOPs per token under every convention (name -> FLOPs; NaN where unknown)."""
    out = {name: number(params.get(M.flops_per_token_param(name))) for name in CONVENTIONS}
    if all(v == v for v in out.values()):
        return out
    own = params.get(M.PARAM_FLOP_CONVENTION, DEFAULT)
    logged = number(params.get(M.PARAM_FLOPS_PER_TOKEN))
    cfg = _shape(params, tags)
    if cfg is None or own not in CONVENTIONS or not logged > 0:
        return out
    if abs(train_flops_per_token(cfg, own) / logged - 1) > _REL_TOL:
        return out                 # the recomputed shape is not the run's: say nothing
    return {name: v if v == v else train_flops_per_token(cfg, name) for name, v in out.items()}


def column(convention: str) -> str:
    """The runs-table column of cumulative training FLOPs under ``convention``."""
    return f"flops_{convention}"
