"""Speed-quality Pareto fronts of the samplers (issue #6): tokens/s against generative perplexity.

Sahoo et al. (arXiv 2602.15014) argue that a diffusion LM is judged by what its sampler buys: the
gen-PPL reached at a given generation speed, not validation perplexity alone. The sampling stage
(``python -m orchestrator.sampling EXPERIMENT``) samples every finished run of a study at several
step counts; this module reads what it logged and finds the fronts.

    python -m analysis.speed_quality --experiment smoke [--tracking-uri URI] [--out DIR]
        [--min-entropy-ratio 0.9]

The sampling stage's MLflow layout (its roles, tags, params and metrics) is defined in
:mod:`core.schema`, which the stage writes with and this module reads with.

A point dominates another if it is at least as fast and at least as good (gen-PPL <=), and strictly
one of the two. Samples whose unigram entropy falls below ``min_entropy_ratio`` x the reference are
*degenerate* (repetition games gen-PPL: "the the the" is very probable) and never on a front.
gen-PPL from different judges is not comparable, so fronts are found within one judge.
Exit codes: 0 ok, 2 bad input (no experiment, no sampling runs, bad option).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from analysis import load, plots
from analysis import schema as S
from analysis.schema import AnalysisError
from core import schema as M
from core.search import search_all

INT_PARAMS = (M.PARAM_SEED, M.PARAM_N_SAMPLES, M.PARAM_SEQ_LEN)
FLOAT_PARAMS = (M.PARAM_TEMPERATURE,)
METRICS = M.SAMPLING_METRICS
MIN_ENTROPY_RATIO = 0.9
EXIT_BAD_INPUT = 2

SAMPLING_COLUMNS: dict[str, str] = {
    "run": "MLflow id of the sampling run",
    "source_run": f"MLflow id of the trained run it sampled ({M.TAG_SOURCE_RUN})",
    "run_id": f"{M.TAG_RUN_ID}: the trained run's config hash",
    "family": "noise family",
    "knob": "the family's knob as float (hybrid: mixing shift b); NaN for families without one",
    "group": "schema.group_label(family, knob): 'masked', 'hybrid@-2', ...",
    "size": "ladder name of the trained model",
    "budget": "training budget, FLOPs",
    "sampler": f"sampler name with its non-default draw settings ({M.TAG_SAMPLER}, "
               "trainer.sampling.samplers.Draw.label: 'masked-ancestral-cached[top_p=0.9]')",
    "steps": "denoising steps (autoregressive: seq_len); the metrics' MLflow step",
    "tokens_per_s": "generated tokens per second",
    "latency_s": "seconds per sequence",
    "gen_ppl": "generative perplexity under the judge",
    "entropy": "mean per-sequence unigram entropy of the samples, nats",
    "nfe": "model forward passes (float: NaN when not logged)",
    "judge_run_id": "MLflow id of the judge model's run",
    "judge": "the judge, in words",
    "val_nelbo": "the trained run's final validation NELBO, nats/token",
    "ref_entropy": "unigram entropy of real validation windows of seq_len tokens, nats",
    "seed": "sampling seed", "n_samples": "sequences sampled", "seq_len": "tokens per sequence",
    "temperature": "sampling temperature",
}


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------
def _hint(experiment: str) -> str:
    return f"sample the finished runs first: python -m orchestrator.sampling {experiment}"


def _meta(runs: list) -> pd.DataFrame:
    records = []
    for r in runs:
        tags, params = r.data.tags, r.data.params
        knob = load._float(tags.get(M.TAG_KNOB))
        family = tags.get(M.TAG_FAMILY, "")
        records.append({
            "run": r.info.run_id, "source_run": tags.get(M.TAG_SOURCE_RUN, ""),
            "run_id": tags.get(M.TAG_RUN_ID, ""), "family": family, "knob": knob,
            "group": S.group_label(family, knob), "size": tags.get(M.TAG_SIZE, ""),
            "budget": load._float(tags.get(M.TAG_BUDGET)), "sampler": tags.get(M.TAG_SAMPLER, ""),
            "judge_run_id": tags.get(M.TAG_JUDGE_RUN_ID, ""), "judge": tags.get(M.TAG_JUDGE, ""),
            "val_nelbo": load._float(tags.get(M.TAG_VAL_NELBO)),
            "ref_entropy": load._float(tags.get(M.TAG_REF_ENTROPY)),
            **{k: load._float(params.get(k)) for k in INT_PARAMS + FLOAT_PARAMS},
            "_finished": r.info.status == M.STATUS_FINISHED, "_start": r.info.start_time or 0,
        })
    meta = pd.DataFrame.from_records(records)
    # The same measurement logged twice (the stage re-run without resuming) would put every point
    # on the chart twice: keep the finished, newest run of each setting.
    same = ["source_run", "sampler", "judge_run_id", *INT_PARAMS, *FLOAT_PARAMS]
    meta = (meta.sort_values(["_finished", "_start"])
                .drop_duplicates(same, keep="last").drop(columns=["_finished", "_start"]))
    return meta.astype({k: "Int64" for k in INT_PARAMS})


def load_sampling(experiment: str, tracking_uri: str | None = None, *, bulk: bool = True
                  ) -> pd.DataFrame:
    """Sampling runs of ``experiment``: one row per (sampling run, steps), ``SAMPLING_COLUMNS``.

    A run that logged nothing has no rows. Raises :class:`AnalysisError` naming the experiment if
    it does not exist, holds no sampling runs, or none of them logged a metric.
    """
    client = load._client(tracking_uri)
    try:
        exp_id = load._experiment_id(client, experiment)
    except AnalysisError as e:
        raise AnalysisError(f"{e}; {_hint(experiment)}") from None
    runs = search_all(client, exp_id, M.role_filter(M.ROLE_SAMPLING))
    if not runs:
        raise AnalysisError(f"MLflow experiment {experiment!r} has no sampling runs "
                            f"(tag {M.TAG_ROLE}={M.ROLE_SAMPLING}); {_hint(experiment)}")
    meta = _meta(runs)
    hist = load._histories(client, meta["run"].tolist(), bulk=bulk, keys=METRICS).rename(
        columns={"mlflow_run_id": "run"})
    if hist.empty:
        raise AnalysisError(f"the {len(meta)} sampling runs of {experiment!r} logged no metrics "
                            f"({', '.join(METRICS)}); {_hint(experiment)}")
    points = (hist.pivot(index=["run", "step"], columns="key", values="value")
                  .reindex(columns=list(METRICS)).reset_index().rename(columns={"step": "steps"}))
    df = meta.merge(points, on="run", how="inner")
    df = df.sort_values(["group", "size", "budget", "run", "steps"], kind="stable")
    return df.reset_index(drop=True)[list(SAMPLING_COLUMNS)]


# --------------------------------------------------------------------------------------------------
# Fronts (pure)
# --------------------------------------------------------------------------------------------------
def pareto_mask(speed, quality) -> np.ndarray:
    """True where a point is on the front of max ``speed``, min ``quality`` (e.g. gen-PPL).

    Point j dominates i if speed_j >= speed_i and quality_j <= quality_i, one strictly. Identical
    points do not dominate each other (both stay); non-finite points are never on the front and
    dominate nothing. O(n log n): sweep from the fastest down, carrying the best quality seen at
    strictly higher speed.
    """
    s, q = np.asarray(speed, dtype=float), np.asarray(quality, dtype=float)
    if s.shape != q.shape or s.ndim != 1:
        raise ValueError(f"speed and quality must be 1-d of one length, got {s.shape}, {q.shape}")
    mask = np.zeros(len(s), dtype=bool)
    ok = np.flatnonzero(np.isfinite(s) & np.isfinite(q))
    order = ok[np.lexsort((q[ok], -s[ok]))]  # fastest first; within one speed, best first
    best_faster = np.inf
    i = 0
    while i < len(order):
        j = i
        while j < len(order) and s[order[j]] == s[order[i]]:
            j += 1
        tie = order[i:j]
        q_min = q[tie[0]]
        if q_min < best_faster:  # else a strictly faster point is at least as good
            mask[tie[q[tie] == q_min]] = True  # slower-quality points at this speed are dominated
        best_faster = min(best_faster, q_min)
        i = j
    return mask


def degenerate_mask(df: pd.DataFrame, min_entropy_ratio: float = MIN_ENTROPY_RATIO
                    ) -> np.ndarray:
    """True where samples' unigram entropy < ``min_entropy_ratio`` x the real text's.

    A NaN entropy or reference cannot be checked and is not flagged.
    """
    if not np.isfinite(min_entropy_ratio) or min_entropy_ratio < 0:
        raise AnalysisError(f"min_entropy_ratio must be finite and >= 0, got {min_entropy_ratio}")
    ent = df["entropy"].to_numpy(dtype=float)
    ref = df["ref_entropy"].to_numpy(dtype=float)
    with np.errstate(invalid="ignore"):
        return ent < min_entropy_ratio * ref


def _size_rank(sizes: pd.Series) -> pd.Series:
    """Natural order of ladder names as integers: L2-d32 before L2-d128."""
    def key(name: str) -> tuple:
        return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name))

    names = sorted(set(map(str, sizes)), key=key)
    return sizes.astype(str).map({n: i for i, n in enumerate(names)})


def speed_quality_table(df: pd.DataFrame, min_entropy_ratio: float = MIN_ENTROPY_RATIO
                        ) -> pd.DataFrame:
    """``df`` (``SAMPLING_COLUMNS``) sorted by group, size, budget, run, steps, with columns

    ``degenerate`` (:func:`degenerate_mask`), ``front_group`` (on the front of its group),
    ``front_sampler`` (on the front of its group's points from one sampler and its settings) and
    ``front_all`` (on the front over every group); every front within one judge, without
    degenerate points.
    """
    out = (df.assign(_size=_size_rank(df["size"]))
             .sort_values(["group", "_size", "budget", "run", "steps"], kind="stable")
             .drop(columns="_size").reset_index(drop=True))
    out["degenerate"] = degenerate_mask(out, min_entropy_ratio)
    quality = out["gen_ppl"].where(~out["degenerate"])  # NaN: off every front
    fronts = (("front_group", ["judge_run_id", "group"]),
              ("front_sampler", ["judge_run_id", "group", "sampler"]),
              ("front_all", ["judge_run_id"]))
    for col, keys in fronts:
        out[col] = False
    for col, keys in fronts:
        for _, part in out.groupby(keys, sort=False):
            out.loc[part.index, col] = pareto_mask(part["tokens_per_s"], quality[part.index])
    return out


def plot_speed_quality(df: pd.DataFrame, path: str | Path,
                       min_entropy_ratio: float = MIN_ENTROPY_RATIO) -> Path:
    """The chart (see :func:`analysis.plots.plot_speed_quality`) of a table or raw ``df``."""
    table = (df if {"front_all", "front_group", "front_sampler", "degenerate"} <= set(df.columns)
             else speed_quality_table(df, min_entropy_ratio))
    return plots.plot_speed_quality(table, Path(path))


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------
def _fmt(v: float, spec: str) -> str:
    return "-" if pd.isna(v) else format(v, spec)


def format_markdown(table: pd.DataFrame, min_entropy_ratio: float = MIN_ENTROPY_RATIO) -> str:
    """The CLI's printout: a markdown table of every point, then the judge(s) and the legend."""
    head = ["group", "size", "budget", "sampler", "steps", "tokens/s", "latency ms/seq",
            "gen-PPL", "entropy", "front"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in table.itertuples(index=False):
        marks = [m for m, on in (("all", r.front_all), ("group", r.front_group),
                                 ("sampler", r.front_sampler and not r.front_group),
                                 ("degenerate", r.degenerate)) if on]
        cells = [r.group, r.size, _fmt(r.budget, ".3g"), r.sampler, str(r.steps),
                 _fmt(r.tokens_per_s, ".4g"), _fmt(1e3 * r.latency_s, ".4g"),
                 _fmt(r.gen_ppl, ".4g"), _fmt(r.entropy, ".3f"), ", ".join(marks)]
        lines.append("| " + " | ".join(cells) + " |")
    judges = table.drop_duplicates("judge_run_id")
    lines += [""] + [f"judge: {j.judge or '(unnamed)'} [MLflow run {j.judge_run_id}]"
                     for j in judges.itertuples(index=False)]
    refs = ", ".join(f"{v:.3f}" for v in sorted(table["ref_entropy"].dropna().unique()))
    lines.append(f"front: all = on the front over every group, group = on its group's front, "
                 f"sampler = only on the front of its group's points from its sampler and settings "
                 f"(a point on its group's front is on its sampler's too); "
                 f"degenerate = entropy < {min_entropy_ratio:g} x reference ({refs or '-'} nats)")
    if len(judges) > 1:
        lines.append("note: several judges; fronts are found within each judge")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from core.schema import resolve_uri

    p = argparse.ArgumentParser(prog="python -m analysis.speed_quality",
                                description=__doc__.split("\n")[0])
    p.add_argument("--experiment", required=True, help="MLflow experiment (= sweep name)")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or the project's "
                        "sqlite store)")
    p.add_argument("--out", type=Path, default=None,
                   help="output folder (default out/speed_quality/<experiment>)")
    p.add_argument("--min-entropy-ratio", type=float, default=MIN_ENTROPY_RATIO,
                   help="samples below this x the real text's unigram entropy are degenerate")
    args = p.parse_args(argv)
    args.tracking_uri = resolve_uri(args.tracking_uri)  # the store the trainer writes
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        df = load_sampling(args.experiment, args.tracking_uri)
        table = speed_quality_table(df, args.min_entropy_ratio)
    except AnalysisError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    out = args.out or Path("out") / "speed_quality" / args.experiment
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "speed_quality.csv", index=False)
    plot_speed_quality(table, out / "speed_quality.png")
    print(format_markdown(table, args.min_entropy_ratio))
    print(f"\n{table['run'].nunique()} sampling runs, {len(table)} points; wrote "
          f"speed_quality.csv and speed_quality.png to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
