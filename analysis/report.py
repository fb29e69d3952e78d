"""A :class:`StudyFit` as a tidy table (fits.parquet), a JSON document (fits.json) and text."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from analysis.bootstrap import LawFit
from analysis.laws import EXTRAPOLATE, LAWS
from analysis.study import GroupFit, StudyFit, nan_to_none
from core.flops import CONVENTIONS

FITS_COLUMNS = ("group", "law", "quantity", "estimate", "lo", "hi", "n_points", "n_boot", "flag",
                "flop_convention", "n_column")
"""``flag``: why the estimate is not identified by these runs (laws.NOT_IDENTIFIED), else None;
``flop_convention`` and ``n_column``: what the study's C and N count (the same on every row)."""


def _law_rows(fit: LawFit) -> list[dict]:
    return [{"group": fit.group, "law": fit.law, "quantity": name, "estimate": e.value,
             "lo": e.lo, "hi": e.hi, "n_points": fit.n_points, "n_boot": fit.n_boot,
             "flag": e.flag}
            for name, e in {**fit.params, **fit.derived}.items()]


def fits_table(study: StudyFit) -> pd.DataFrame:
    """Long table, one row per (group, law, quantity): ``FITS_COLUMNS``.

    Laws: "compute" L(C), "chinchilla" L(N, D), "allocation" N*(C) = k_N·C^a, D*(C) = k_D·C^b,
    "backtest" (relative error, predicted, actual) and "crossover" (group = "a vs b", C in FLOPs);
    beside them "cooldown" (a trajectory study's factor; lo/hi the extreme ratios, n_points the
    branches measured, flag "cooldown unmeasured") and "noise_floor" (seed-to-seed std and range
    of the loss, nats/token, n_points the repeated points).
    """
    rows = []
    for g in study.groups:
        for fit in g.laws.values():
            rows += _law_rows(fit)
        if g.backtest:
            b = g.backtest
            rows += [{"group": g.group, "law": "backtest", "quantity": q, "estimate": v,
                      "lo": np.nan, "hi": np.nan, "n_points": 1, "n_boot": 0}
                     for q, v in (("error", b.error), ("predicted", b.predicted),
                                  ("actual", b.actual), ("C", b.C))]
    for x in study.crossovers:
        rows.append({"group": f"{x.a} vs {x.b}", "law": "crossover", "quantity": "C",
                     "estimate": x.c, "lo": x.lo, "hi": x.hi, "n_points": x.n_crossings,
                     "n_boot": study.n_boot})
    for c in study.cooldown:     # lo/hi: the smallest and largest measured ratio
        rows.append({"group": c.group, "law": "cooldown", "quantity": "factor",
                     "estimate": c.factor, "lo": c.lo, "hi": c.hi, "n_points": c.n, "n_boot": 0,
                     "flag": c.warning})
    for n in study.seed_spread:
        rows += [{"group": n.group, "law": "noise_floor", "quantity": q, "estimate": v,
                  "lo": np.nan, "hi": np.nan, "n_points": n.n_points, "n_boot": 0}
                 for q, v in (("std", n.std), ("range", n.range))]
    table = pd.DataFrame(rows, columns=list(FITS_COLUMNS))
    return table.assign(flop_convention=study.flop_convention, n_column=study.n_column)


def _estimate(e) -> dict:
    return {**dataclasses.asdict(e), "identified": e.identified}


def fits_json(study: StudyFit) -> dict:
    def law(fit: LawFit) -> dict:
        return {"formula": LAWS[fit.law].formula,
                "params": {k: _estimate(v) for k, v in fit.params.items()},
                "derived": {k: _estimate(v) for k, v in fit.derived.items()},
                "identified": fit.identified,
                "n_points": fit.n_points, "n_boot": fit.n_boot, "objective": fit.objective}

    groups = {}
    for g in study.groups:
        groups[g.group] = {
            "family": g.family, "knob": g.knob, "n_runs": g.n_runs,
            "frontier": {"C": g.frontier.C.tolist(), "loss": g.frontier.loss.tolist(),
                         "run_id": list(g.frontier.run_id)},
            "laws": {name: law(f) for name, f in g.laws.items()},
            "isoflops": [{"budget": c.budget, "c_level": c.c_level, "c_opt": c.c_opt,
                          "n_opt": c.n_opt, "d_opt": c.d_opt, "flag": c.flag,
                          "N": c.N.tolist(), "loss": c.loss.tolist()} for c in g.isoflops],
            "backtest": ({**dataclasses.asdict(g.backtest), "error": g.backtest.error}
                         if g.backtest else None),
            "messages": list(g.messages),
            # analysis/hp_laws.py, analysis/data_constrained.py: None where the study has no
            # batch x LR grid / no repeated pool
            "batch_law": g.hp.batch_law.as_dict() if g.hp and g.hp.batch_law else None,
            "lr_law": g.hp.lr_law.as_dict() if g.hp and g.hp.lr_law else None,
            "hp_optima": g.hp.as_dict()["optima"] if g.hp else None,
            "data_constrained": g.data_constrained.as_dict() if g.data_constrained else None,
            "data_frontier": list(g.data_frontier),
        }
    return nan_to_none({
        "flop_convention": study.flop_convention, "n_column": study.n_column,
        "n_boot": study.n_boot, "seed": study.seed, "c_range": study.c_range,
        "dropped": {**dataclasses.asdict(study.dropped), "total": study.dropped.total},
        "cooldown": [{**dataclasses.asdict(c), "measured": c.measured, "warning": c.warning}
                     for c in study.cooldown],
        "cooldown_applied": study.cooldown_applied,
        "seed_spread": [dataclasses.asdict(n) for n in study.seed_spread],
        "warnings": list(study.warnings),
        "groups": groups,
        "crossovers": [{**dataclasses.asdict(x), "message": x.message} for x in study.crossovers],
    })


def _cell(fit: LawFit | None, name: str, spec: str = ".3g") -> str:
    if fit is None:
        return "-"
    est = fit.params.get(name) or fit.derived.get(name)
    return est.fmt(spec) if est else "-"


_TABLED = ("compute", "allocation", "chinchilla")
"""Laws the printout's two tables show; every other law in LAWS gets a table of its own."""


def format_table(study: StudyFit) -> str:
    """The CLI's printout: one row per group, then crossovers, flags and drop counts."""
    top = max(EXTRAPOLATE)
    spread = {n.group: f"{n.std:.3g}" for n in study.seed_spread}
    rows = [("group", "runs", "A", "beta", "B", f"L@{top:g}x", "N*~C^a", "D*~C^b", "backtest",
             "seed std")]
    for g in study.groups:
        bt = f"{g.backtest.error:+.2%}" if g.backtest else "-"
        compute, allocation = g.law("compute"), g.law("allocation")
        rows.append((g.group, str(g.n_runs), _cell(compute, "A"), _cell(compute, "beta"),
                     _cell(compute, "B"), _cell(compute, f"L@{top:g}x"),
                     _cell(allocation, "a"), _cell(allocation, "b"), bt,
                     spread.get(g.group, "-")))
    rows2 = [("group", "E", "alpha", "beta", "a_N=b/(a+b)", "b_D=a/(a+b)")]
    for g in study.groups:
        rows2.append((g.group, *(_cell(g.law("chinchilla"), k) for k in
                                  ("E", "alpha", "beta", "a_N", "b_D"))))
    conv = CONVENTIONS.get(study.flop_convention)
    source = f" ({conv.source})" if conv else ""
    out = [f"C: training FLOPs under convention {study.flop_convention!r}{source}; "
           f"N: {study.n_column}",
           f"L(C) = A*C^-beta + B on each frontier (C in FLOPs, L in nats/token), "
           f"95% bootstrap intervals over runs ({study.n_boot} draws); N*, D* from isoFLOP minima",
           _grid(rows), "", "L(N, D) = E + A/N^alpha + B/D^beta", _grid(rows2), ""]
    for name, law in LAWS.items():     # any other registered law: a table of its parameters
        if name not in _TABLED:
            rows3 = [("group", *law.params)] + [
                (g.group, *(_cell(g.law(name), k) for k in law.params)) for g in study.groups]
            out += [law.formula, _grid(rows3), ""]
    out += _hp_lines(study)
    out += ["crossovers:"] + [f"  {x.message}" for x in study.crossovers] if study.crossovers \
        else ["crossovers: none (fewer than two groups with an L(C) fit)"]
    notes = [m for g in study.groups for m in g.messages]
    notes += [f"{g.group} {LAWS[f.law].formula}: {k} {why}"
              for g in study.groups for f in g.laws.values() for k, why in f.flags.items()]
    if notes:
        out += ["", "notes:"] + [f"  {m}" for m in notes]
    out += _trajectory_lines(study)
    d = study.dropped
    worst = f", highest-loss (--drop-worst) {d.worst}" if d.worst else ""
    out += ["", f"dropped runs: {d.total} (failed {d.failed}, unfinished {d.unfinished}, "
                f"NaN/invalid {d.nan}, duplicate {d.duplicate}{worst})"]
    return "\n".join(out)


def _iv(e) -> str:
    if e is None:
        return "-"
    if not np.isfinite(e.lo):
        return f"{e.value:.3g}"
    return f"{e.value:.3g} [{e.lo:.3g}, {e.hi:.3g}]"


def _hp_lines(study: StudyFit) -> list[str]:
    """The batch / LR laws and the data-constrained R*, where the study has them."""
    out = []
    hp = [g for g in study.groups if g.hp]
    if hp:
        rows = [("group", "(N,D) kept", "b: B*~D^b", "k: B*=k D^b", "c: eta*~B^c", "eta* coef")]
        for g in hp:
            bl, ll = g.hp.batch_law, g.hp.lr_law
            rows.append((g.group, f"{sum(o.kept for o in g.hp.optima)}/{len(g.hp.optima)}",
                         _iv(bl.exponent if bl else None), _iv(bl.coefficient if bl else None),
                         _iv(ll.exponent if ll else None), _iv(ll.coefficient if ll else None)))
        out += ["B*(D) = k D^b (B in tokens per step) and eta*(B) = k' B^c, from the batch x LR "
                "surface of each (N, D) (analysis/hp_laws.py; 2512.10858: b 0.8225, c 0.341)",
                _grid(rows), ""]
    dcs = [g for g in study.groups if g.data_constrained]
    if dcs:
        keys = ("R_star", "E", "A", "alpha", "B", "beta")
        rows = [("group", "points", *keys)]
        for g in dcs:
            d = g.data_constrained.as_dict()
            rows.append((g.group, str(d["n_points"]), *(
                f"{d[k]['value']:.3g} [{d[k]['lo']:.3g}, {d[k]['hi']:.3g}]"
                if d[k]["lo"] is not None else f"{d[k]['value']:.3g}" for k in keys)))
        out += ["L = E + A/N^alpha + B/D'^beta, D' = U + U R* (1 - exp(-R/R*)), R = D/U - 1 "
                "(Muennighoff et al. 2023; analysis/data_constrained.py)", _grid(rows), ""]
    return out


def _trajectory_lines(study: StudyFit) -> list[str]:
    """The noise floor, the cooldown factors and, loudly, any factor that was not measured."""
    out = []
    if study.seed_spread:
        out += ["", "seed-to-seed noise floor (same group, size and budget; other train.seed):"]
        out += [f"  {n.fmt()}" for n in study.seed_spread]
    if study.cooldown:
        how = ("applied to constant-LR read-offs" if study.cooldown_applied
               else "NOT applied (--no-cooldown): read-offs fitted at their constant-LR loss")
        rows = [("group", "factor", "branches", "min ratio", "max ratio", "applied")]
        rows += [(c.group, f"{c.factor:.4f}", str(c.n), f"{c.lo:.4f}", f"{c.hi:.4f}",
                  "yes" if c.applied and study.cooldown_applied else "no")
                 for c in study.cooldown]
        out += ["", f"cooldown factors (branch final loss / trunk read-off loss; {how}):",
                _grid(rows)]
    if study.warnings:
        out += [""] + [f"WARNING: {w}" for w in study.warnings]
    return out


def _grid(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
