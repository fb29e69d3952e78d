"""Downstream-task evaluations of a study: load them, tabulate accuracy against chance, and fit
accuracy against compute (the two-stage fit: analysis/two_stage.py; figures:
analysis/plots_downstream.py).

    python -m analysis.downstream --experiment NAME [--tracking-uri URI] [--out DIR] [--key KEY]
        [--flops CONVENTION] [--all-studies] [--bootstrap 200] [--seed 0]

The evaluation stage (orchestrator/evaluation.py, ``make evaluate``) logs one MLflow run per
evaluated trained run in the study's experiment; its layout (roles, tags, per-task metrics and
params) is defined in :mod:`core.schema`. One trained run may have several evaluation runs (other
settings, repeats): each (trained run, settings hash) keeps its newest FINISHED run, and one
settings hash is analysed, by default the one that covers the most trained runs.

Accuracy intervals are Wilson 95 % intervals over the items (binomial); a diffusion model's
accuracy has a second source of noise, the t draws of its likelihood estimate (its
``acc_draw_sd`` column), which they do not include. A point is *above chance* when its Wilson lower
bound is above the task's chance accuracy.

Writes downstream.csv (the frame below), fits.json and accuracy_<task>.png to --out (default
out/downstream/<experiment>). Exit codes: 0 ok, 2 bad input (no experiment, no evaluation runs, an
unknown key).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from analysis import load
from analysis import schema as S
from analysis.conventions import number as _float
from analysis.schema import AnalysisError
from analysis.study import nan_to_none
from analysis.two_stage import (EXTRAPOLATE, TwoStageFit, beats_chance, fit_accuracy, fit_two_stage,  # noqa: F401
                                wilson)
from core import schema as M
from core.flops import CONVENTIONS
from core.search import search_all

EXIT_BAD_INPUT = 2

EVAL_COLUMNS: dict[str, str] = {
    "run": "MLflow id of the evaluation run",
    "source_run": f"MLflow id of the trained (trial) run it evaluated ({M.TAG_SOURCE_RUN})",
    "run_id": f"{M.TAG_RUN_ID}: the trained run's config hash",
    "family": "noise family",
    "knob": "the family's knob as float; NaN for families without one",
    "group": "schema.group_label(family, knob): 'masked', 'hybrid@-2', ...",
    "size": "ladder name of the trained model",
    "budget": "training budget tag, FLOPs",
    "compute": "training FLOPs C of the trial's final evaluation (the scored weights), under "
               "flop_convention; NaN if the trial is not a finished trial run",
    "flop_convention": "what compute counts (a core.flops.CONVENTIONS name)",
    "val_nelbo": f"the trial's final validation NELBO, nats/token ({M.TAG_VAL_NELBO}; else the "
                 "trial's own final point)",
    "task": "task name (from the run's task list)",
    "n": "items scored",
    "acc": "accuracy",
    "acc_norm": "length-normalised accuracy (multiple-choice tasks; NaN elsewhere)",
    "chance": "accuracy of a uniform guess (0 for generation tasks)",
    "k": "items correct, round(acc * n)",
    "lo": "Wilson 95 % lower bound of acc",
    "hi": "Wilson 95 % upper bound of acc",
    "above_chance": "lo > max(chance, two_stage.CHANCE_FLOOR = 0.01)",
    "nll_per_token": "LAMBADA: NLL (AR) / NELBO (diffusion) of the last word per token; NaN "
                     "elsewhere",
    "acc_draw_sd": "diffusion: sd of acc over single-t-draw estimators; NaN elsewhere",
    "ll_se": "diffusion: mean standard error of a choice's log-likelihood, nats; NaN elsewhere",
    "version": "the task data's version",
    "eval_key": "hash of the evaluation settings",
}


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------
def _hint(experiment: str) -> str:
    return f"run make evaluate SWEEP={experiment} first"


def _latest(runs: list) -> list:
    """The newest run of each (trained run, settings hash)."""
    newest: dict[tuple[str, str], object] = {}
    for r in sorted(runs, key=lambda r: r.info.start_time or 0):
        t = r.data.tags
        newest[(t.get(M.TAG_SOURCE_RUN, ""), t.get(M.TAG_EVAL_KEY, ""))] = r
    return list(newest.values())


def _choose_key(runs: list, key: str | None, experiment: str) -> str:
    """``key`` (or the unique key it is a prefix of); else the key covering the most trained runs
    (ties: the one evaluated last)."""
    cover: dict[str, set] = {}
    last: dict[str, int] = {}
    for r in runs:
        k = r.data.tags.get(M.TAG_EVAL_KEY, "")
        cover.setdefault(k, set()).add(r.data.tags.get(M.TAG_SOURCE_RUN, ""))
        last[k] = max(last.get(k, 0), r.info.start_time or 0)
    if key is None:
        return max(cover, key=lambda k: (len(cover[k]), last[k]))
    match = [k for k in cover if k.startswith(key)]
    if len(match) != 1:
        known = ", ".join(f"{k} ({len(cover[k])} runs)" for k in sorted(cover))
        raise AnalysisError(f"experiment {experiment!r}: evaluation key {key!r} "
                            f"{'matches no' if not match else 'is a prefix of several'} "
                            f"evaluation settings; it has: {known}")
    return match[0]


def _rows(runs: list) -> pd.DataFrame:
    """One record per (evaluation run, task) from the runs' tags, params and latest metrics."""
    records = []
    for r in runs:
        tags, params, metrics = r.data.tags, r.data.params, r.data.metrics
        knob, family = _float(tags.get(M.TAG_KNOB)), tags.get(M.TAG_FAMILY, "")
        head = {"run": r.info.run_id, "source_run": tags.get(M.TAG_SOURCE_RUN, ""),
                "run_id": tags.get(M.TAG_RUN_ID, ""), "family": family, "knob": knob,
                "group": S.group_label(family, knob), "size": tags.get(M.TAG_SIZE, ""),
                "budget": _float(tags.get(M.TAG_BUDGET)),
                "val_nelbo": _float(tags.get(M.TAG_VAL_NELBO)),
                "eval_key": tags.get(M.TAG_EVAL_KEY, "")}
        tasks = [t.strip() for t in tags.get(M.TAG_EVAL_TASKS, "").split(",") if t.strip()]
        for task in tasks:
            def metric(what: str) -> float:
                return float(metrics.get(M.eval_metric(task, what), np.nan))

            records.append({**head, "task": task,
                            "n": _float(params.get(M.eval_metric(task, M.EVAL_N))),
                            "acc": metric(M.EVAL_ACC), "acc_norm": metric(M.EVAL_ACC_NORM),
                            "chance": metric(M.EVAL_CHANCE),
                            "nll_per_token": metric(M.EVAL_NLL_TOKEN),
                            "acc_draw_sd": metric(M.EVAL_ACC_DRAW_SD),
                            "ll_se": metric(M.EVAL_LL_SE),
                            "version": params.get(M.eval_metric(task, M.EVAL_VERSION), "")})
    return pd.DataFrame.from_records(records)


def _training(experiment: str, tracking_uri: str | None, sources: set[str],
              flops: str | None) -> tuple[pd.DataFrame, str]:
    """(source_run, compute, trial_loss) of the evaluated trial runs, and the FLOP convention.
    compute is the trial's own cumulative FLOPs at its final evaluation (is_final), under the
    convention: the compute of the weights that were scored. (A read-off study's law points,
    load.final_points, are trunk@budget read-offs with a cooldown factor: not these weights.)"""
    from analysis.conventions import column
    runs = load.load_runs(experiment, tracking_uri)
    mine = runs[runs["mlflow_run_id"].isin(sources)]
    convention = flops or load.study_convention(mine)
    empty = pd.DataFrame(columns=["source_run", "compute", "trial_loss"])
    if mine.empty:
        return empty, convention
    final = mine[mine["is_final"].astype(bool)].sort_values("step").groupby("mlflow_run_id").tail(1)
    own = final["flops"].astype(float).where(final["flop_convention"] == convention)
    compute = (final[column(convention)].astype(float).fillna(own) if column(convention) in final
               else own)                           # a convention column, else the run's own count
    out = pd.DataFrame({"source_run": final["mlflow_run_id"], "compute": compute,
                        "trial_loss": final["val_nelbo"].astype(float)})
    return out[list(empty.columns)].reset_index(drop=True), convention


def load_evaluations(experiment: str, tracking_uri: str | None = None, key: str | None = None,
                     *, flops: str | None = None) -> pd.DataFrame:
    """Evaluation runs of ``experiment``: one row per (evaluation run, task), ``EVAL_COLUMNS``.

    Only FINISHED evaluation runs, the newest per (trained run, settings hash), of one settings
    hash: ``key`` (or a unique prefix of it), else the hash covering the most trained runs.
    ``flops``: count compute under this convention (default: the trials' own). Raises
    :class:`AnalysisError` when the experiment is missing, has no finished evaluation runs, or
    ``key`` matches none of them.
    """
    client = load._client(tracking_uri)
    try:
        exp_id = load._experiment_id(client, experiment)
    except AnalysisError as e:
        raise AnalysisError(f"{e}; {_hint(experiment)}") from None
    runs = search_all(client, exp_id, M.role_filter(M.ROLE_EVALUATION, M.STATUS_FINISHED))
    if not runs:
        raise AnalysisError(f"MLflow experiment {experiment!r} has no finished evaluation runs "
                            f"(tag {M.TAG_ROLE}={M.ROLE_EVALUATION}); {_hint(experiment)}")
    runs = _latest(runs)
    chosen = _choose_key(runs, key, experiment)
    df = _rows([r for r in runs if r.data.tags.get(M.TAG_EVAL_KEY, "") == chosen])
    if df.empty:
        raise AnalysisError(f"the evaluation runs of {experiment!r} with key {chosen!r} list no "
                            f"tasks (tag {M.TAG_EVAL_TASKS}); {_hint(experiment)}")
    train, convention = _training(experiment, tracking_uri, set(df["source_run"]), flops)
    df = df.merge(train, on="source_run", how="left").assign(flop_convention=convention)
    df["val_nelbo"] = df["val_nelbo"].fillna(df["trial_loss"])
    df["k"] = np.round(df["acc"] * df["n"])
    df["lo"], df["hi"] = wilson(df["k"].to_numpy(float), df["n"].to_numpy(float))
    df["above_chance"] = beats_chance(df["lo"].to_numpy(float), df["chance"].to_numpy(float))
    order = {t: i for i, t in enumerate(dict.fromkeys(df["task"]))}
    df = (df.assign(_task=df["task"].map(order))
            .sort_values(["_task", "group", "compute", "size", "run"], kind="stable"))
    return df.reset_index(drop=True)[list(EVAL_COLUMNS)]


# --------------------------------------------------------------------------------------------------
# Reports (pure)
# --------------------------------------------------------------------------------------------------
def pooled(df: pd.DataFrame) -> pd.DataFrame:
    """Per (group, task): runs, runs above chance, the mean accuracy over its runs with a Wilson
    interval at n = the items one run scored (k = mean acc x n), the chance level and whether the
    lower bound is above it. Every run of a study scores the same item subset, so its runs are
    not independent samples of items: summing their n would overstate the evidence (the items'
    quirks, e.g. a length bias a near-unigram model follows, repeat in every run)."""
    rows = []
    for (group, task), g in df.groupby(["group", "task"], sort=False):
        ok = g[g["n"] > 0]
        n = float(ok["n"].max()) if len(ok) else 0.0
        acc = float(ok["acc"].mean()) if len(ok) else np.nan
        k = acc * n if n else 0.0
        lo, hi = wilson(k, n)
        chance = float(ok["chance"].mean()) if n else np.nan
        rows.append({"group": group, "task": task, "runs": len(g),
                     "runs_above": int(g["above_chance"].sum()), "k": k, "n": n,
                     "acc": acc, "lo": lo, "hi": hi, "chance": chance,
                     "above_chance": bool(beats_chance(lo, chance))})
    return pd.DataFrame(rows)


def _num(v, spec: str) -> str:
    return "-" if pd.isna(v) else format(v, spec)


def _columns(head: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(c) for c in col) for col in zip(head, *rows)]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [head, *rows]]


def table(df: pd.DataFrame) -> str:
    """The plain-text report: every (run, task), then per group and task the pooled accuracy,
    then a verdict per task. ``*`` marks accuracy above chance (Wilson lower bound > chance)."""
    head = ["group", "size", "budget", "C", "val NELBO", "task", "n", "acc [95% CI]", "acc_norm",
            "chance", ""]
    rows = [[r.group, r.size, _num(r.budget, ".3g"), _num(r.compute, ".3g"),
             _num(r.val_nelbo, ".4f"), r.task, _num(r.n, ".0f"),
             f"{_num(r.acc, '.3f')} [{_num(r.lo, '.3f')}, {_num(r.hi, '.3f')}]",
             _num(r.acc_norm, ".3f"), _num(r.chance, ".3f"), "*" if r.above_chance else ""]
            for r in df.itertuples(index=False)]
    lines = _columns(head, rows)
    pool = pooled(df)
    lines += ["", "per group and task, the mean over its runs (its interval at one run's n: "
                  "every run scores the same items):"]
    lines += _columns(["group", "task", "runs", "n", "acc [95% CI]", "chance", ""],
                      [[p.group, p.task, f"{p.runs} ({p.runs_above} above chance)",
                        _num(p.n, ".0f"),
                        f"{_num(p.acc, '.3f')} [{_num(p.lo, '.3f')}, {_num(p.hi, '.3f')}]",
                        _num(p.chance, ".3f"), "above chance" if p.above_chance else "at chance"]
                       for p in pool.itertuples(index=False)])
    lines += ["", "verdict (the mean accuracy's Wilson lower bound > max(chance, 0.01)):"]
    for task, p in pool.groupby("task", sort=False):
        above = sorted(p.loc[p["above_chance"], "group"])
        lines.append(f"{task}: " + (f"above chance: {', '.join(above)}" if above
                                    else "no family above chance"))
    lines.append("* = above chance (Wilson 95 % lower bound > max(chance, 0.01))")
    return "\n".join(lines)


def format_fits(fits: list[TwoStageFit]) -> str:
    """The two-stage fits, one block per (task, group): parameters with bootstrap intervals and
    the predicted accuracy, or the reason there is no fit."""
    lines = ["two-stage fits: acc(L) = chance + (top - chance)·sigmoid(-k·(L - L0)), "
             "L = val NELBO; L(C) = A·C^-beta + B (the study's compute law)"]
    for f in fits:
        where = f"{f.task} / {f.group}"
        if not f.stage1.ok:
            lines.append(f"{where}: {f.stage1.reason}")
            continue
        s1 = ", ".join(f"{k} {e.fmt('.3g')}" for k, e in f.stage1.params.items())
        lines.append(f"{where}: stage 1 ({f.stage1.n_points} points, {f.stage1.n_above} above "
                     f"chance {f.stage1.chance:.3f}): {s1}")
        if f.law is None:
            lines.append(f"    stage 2: {f.law_reason}: no acc(C)")
            continue
        law = ", ".join(f"{k} {e.fmt('.3g')}" for k, e in f.law.params.items())
        lines.append(f"    stage 2: {law}")
        preds = {"acc@Cmax": f"C = {f.c_max:.3g}",
                 f"acc@{EXTRAPOLATE:g}x": f"{EXTRAPOLATE:g}x = {EXTRAPOLATE * f.c_max:.3g}"}
        lines.append("    predicted accuracy: " + "; ".join(
            f"{preds.get(k, k)}: {e.fmt('.3f')}" for k, e in f.predictions.items()))
    return "\n".join(lines)


def _estimates(d: dict) -> dict:
    return {k: {"value": e.value, "lo": e.lo, "hi": e.hi, "flag": e.flag} for k, e in d.items()}


def fits_json(fits: list[TwoStageFit]) -> list[dict]:
    """The fits as JSON-ready records (NaN -> null)."""
    return nan_to_none([{
        "group": f.group, "task": f.task, "ok": f.ok, "reason": f.reason,
        "chance": f.stage1.chance, "n_points": f.stage1.n_points, "n_above": f.stage1.n_above,
        "stage1": _estimates(f.stage1.params),
        "law": None if f.law is None else _estimates(f.law.params),
        "c_max": f.c_max, "predictions": _estimates(f.predictions),
    } for f in fits])


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m analysis.downstream",
                                description=__doc__.split("\n")[0])
    p.add_argument("--experiment", required=True, help="MLflow experiment (= sweep name)")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or the project's "
                        "sqlite store)")
    p.add_argument("--out", type=Path, default=None,
                   help="output folder (default out/downstream/<experiment>)")
    p.add_argument("--key", default=None,
                   help="evaluation settings hash (or a unique prefix) to analyse; default the one "
                        "covering the most trained runs")
    p.add_argument("--flops", choices=list(CONVENTIONS), default=None, metavar="CONVENTION",
                   help="count training compute under this FLOP convention (default: the "
                        "runs' own)")
    p.add_argument("--all-studies", action="store_true",
                   help="fit the compute law L(C) on every study of the experiment pooled, not "
                        "only the latest (as analysis.fit_laws)")
    p.add_argument("--bootstrap", type=int, default=200, help="bootstrap draws per fit")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.bootstrap < 0:
        p.error("--bootstrap must be >= 0")
    args.tracking_uri = M.resolve_uri(args.tracking_uri)
    return args


def _study_points(args, convention: str, evaluated: set[str]) -> pd.DataFrame:
    """The trials' final points the compute laws are fitted on; prints which study that is."""
    try:
        runs, selection = load.load_study(args.experiment, args.tracking_uri,
                                          load.StudyChoice(all_studies=args.all_studies))
        final, _ = load.final_points(runs, flops=convention)
    except AnalysisError as e:
        print(f"note: no compute law: {e}", file=sys.stderr)
        return pd.DataFrame(columns=list(S.FINAL_COLUMNS))
    first, *rest = selection.describe()
    print("\n".join([f"compute law L(C) from {first}", *rest]))
    outside = evaluated - set(runs["mlflow_run_id"])
    if outside:
        print(f"note: {len(outside)} evaluated run(s) are not in that study (pool the studies "
              "with --all-studies)")
    return final


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        df = load_evaluations(args.experiment, args.tracking_uri, args.key, flops=args.flops)
    except AnalysisError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    from analysis import plots_downstream  # matplotlib only once there is something to draw

    print(f"evaluation key {df['eval_key'].iloc[0]}: {df['run'].nunique()} evaluation runs, "
          f"{df['task'].nunique()} tasks, compute under {df['flop_convention'].iloc[0]}\n")
    print(table(df) + "\n")
    final = _study_points(args, df["flop_convention"].iloc[0], set(df["source_run"]))
    fits = fit_two_stage(df, final, n_boot=args.bootstrap, seed=args.seed)
    print(format_fits(fits))
    out = args.out or Path("out") / "downstream" / args.experiment
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "downstream.csv", index=False)
    (out / "fits.json").write_text(json.dumps(fits_json(fits), indent=1))
    pngs = plots_downstream.write_plots(df, out, fits)
    print(f"\nwrote downstream.csv, fits.json and {len(pngs)} PNG(s) to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
