"""Load sweep results into the tidy tables of :mod:`analysis.schema`.

Two sources feed the same fitting code: an MLflow experiment written by the training job
(:func:`load_runs` then :func:`final_points` / :func:`study_points`, analysis/points.py, re-exported
here), or a CSV/parquet table of final results from anywhere (:func:`load_table`), so published
numbers can be refitted with our code.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from analysis import conventions
from analysis import schema as S
from analysis import studies
from analysis.points import (DropCounts, drop_bad, final_points,  # noqa: F401 (re-exported)
                             study_convention, study_points, without_cooldown)
from analysis.schema import AnalysisError
from analysis.studies import Selection, StudyChoice
from core import schema as M
from analysis.conventions import number as _float
from core.flops import CONVENTIONS
from core.search import search_all

_BULK_CHUNK = 200  # run ids per bulk metric query (keeps the SQL IN list short)
_BULK_MAX = 10_000_000  # rows per bulk query; hitting it means truncation -> per-run fallback
_SNIFF_BYTES = 8192  # bytes of a --from-table file inspected before parsing (empty? binary?)
_PARQUET_MAGIC = b"PAR1"
# A duplicate row of a table: the same values in every column a fit uses (run_id aside, which a
# table without one gets per row). Kept once: a copy would weigh that point twice and, as an extra
# "run" in the bootstrap, narrow every interval as if it were an independent measurement.
_DUPLICATE_KEY = ["group", "N", "D", "C", "loss", "budget"]


# --------------------------------------------------------------------------------------------------
# MLflow
# --------------------------------------------------------------------------------------------------
def _client(tracking_uri: str | None):
    from mlflow import MlflowClient  # heavy import, only when MLflow is the source

    return MlflowClient(tracking_uri=tracking_uri)


def _experiment_id(client, experiment: str) -> str:
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise AnalysisError(
            f"MLflow experiment {experiment!r} not found at tracking URI {client.tracking_uri!r}")
    return exp.experiment_id


def latest_parent_run_id(experiment: str, tracking_uri: str | None = None) -> str | None:
    """MLflow id of the newest parent run (tag dlm.role=parent) of the sweep, or None."""
    client = _client(tracking_uri)
    page = client.search_runs([_experiment_id(client, experiment)],
                              filter_string=M.role_filter(M.ROLE_PARENT),
                              order_by=["attributes.start_time DESC"], max_results=1)
    return page[0].info.run_id if page else None


def _histories(client, run_ids: list[str], *, bulk: bool,
               keys: tuple[str, ...] = S.LOADED_METRICS) -> pd.DataFrame:
    """Metric histories (``keys``) of ``run_ids`` as rows (mlflow_run_id, key, step, value,
    timestamp), the latest write of each (run, key, step).

    The public client only has ``get_metric_history`` (one query per run and metric: ~800 queries
    for a 200-run sweep). The SQL store, used for every local sqlite sweep, has a bulk query
    (one per metric); it is not on the public client, so it is reached through the client's store
    when present and the per-run path is the fallback (http servers, other stores).
    """
    store = getattr(getattr(client, "_tracking_client", None), "store", None)
    rows: list[tuple] = []
    if bulk and hasattr(store, "get_metric_history_bulk"):
        for key in keys:
            for i in range(0, len(run_ids), _BULK_CHUNK):
                chunk = store.get_metric_history_bulk(run_ids[i:i + _BULK_CHUNK], key, _BULK_MAX)
                if len(chunk) >= _BULK_MAX:  # truncated: be correct rather than fast
                    return _histories(client, run_ids, bulk=False, keys=keys)
                rows.extend((m.run_id, m.key, m.step, m.value, m.timestamp) for m in chunk)
    else:
        for rid in run_ids:
            for key in keys:
                rows.extend((rid, m.key, m.step, m.value, m.timestamp)
                            for m in client.get_metric_history(rid, key))
    hist = pd.DataFrame(rows, columns=["mlflow_run_id", "key", "step", "value", "timestamp"]
                        ).astype({"step": "int64", "value": "float64", "timestamp": "int64"})
    # A resumed job may log a step twice: keep the latest write.
    return (hist.sort_values(["mlflow_run_id", "key", "step", "timestamp"])
                .drop_duplicates(["mlflow_run_id", "key", "step"], keep="last"))


def _run_meta(runs: list) -> pd.DataFrame:
    records = []
    for r in runs:
        tags, params = r.data.tags, r.data.params
        unit = M.STEP_UNIT_FLOPS.get(tags.get(M.TAG_STEP_UNIT, M.STEP_UNIT), np.nan)
        records.append({
            "mlflow_run_id": r.info.run_id,
            "run_id": tags.get(M.TAG_RUN_ID, r.info.run_id),
            "sweep": tags.get(M.TAG_SWEEP, ""),
            "family": tags.get(M.TAG_FAMILY, ""),
            "knob": _float(tags.get(M.TAG_KNOB)),
            "size": tags.get(M.TAG_SIZE, ""),
            "budget": _float(tags.get(M.TAG_BUDGET)),
            "n_backbone": conventions.backbone(params, tags.get(M.TAG_SIZE, "")),
            "n_time_cond": _float(params.get(M.PARAM_N_TIME_COND)),
            "n_nonembed": _float(params.get(M.PARAM_N_NONEMBED)),
            "n_total": _float(params.get(M.PARAM_N_TOTAL)),
            "status": r.info.status,
            "trajectory": tags.get(M.TAG_TRAJECTORY, ""),
            "trunk_tag": tags.get(M.TAG_TRUNK, ""),
            "readoff": tags.get(M.TAG_READOFF, ""),
            "seed": _float(params.get(M.PARAM_TRAIN_SEED)),
            "batch_tokens": _batch_tokens(params),
            "lr": _float(params.get("train.lr")),
            "pool_tokens": _float(params.get("train.data_pool_tokens")),
            "flop_convention": params.get(M.PARAM_FLOP_CONVENTION, conventions.DEFAULT),
            "_flops_per_token": _float(params.get(M.PARAM_FLOPS_PER_TOKEN)),
            "_flops_per_step": unit,
            **{f"_fpt_{name}": v for name, v in conventions.per_token(params, tags).items()},
        })
    return pd.DataFrame.from_records(records)


def _batch_tokens(params: dict) -> float:
    """Tokens per optimizer step: as logged, else train.batch_size x train.seq_len."""
    logged = _float(params.get(M.PARAM_TOKENS_PER_STEP))
    if np.isfinite(logged):
        return logged
    return _float(params.get("train.batch_size")) * _float(params.get("train.seq_len"))


def load_runs(experiment: str, tracking_uri: str | None = None, *, bulk: bool = True
              ) -> pd.DataFrame:
    """Trial runs of ``experiment``: one row per (run, evaluation point), ``schema.RUN_COLUMNS``.

    An evaluation point is a step at which ``val_nelbo`` was logged; ``tokens``, ``flops`` and
    ``readoff_budget`` (a trajectory trunk's read-offs) are taken at the same step, ``train_loss`` at the latest step at or before it. A run that never
    evaluated gets one row with NaN metrics so the drop counters still see it. Raises
    :class:`AnalysisError` if the experiment does not exist or has no trial runs.
    """
    return load_study(experiment, tracking_uri, StudyChoice(all_studies=True), bulk=bulk)[0]


def load_study(experiment: str, tracking_uri: str | None = None,
               choice: StudyChoice = StudyChoice(), *, bulk: bool = True
               ) -> tuple[pd.DataFrame, Selection]:
    """:func:`load_runs` restricted to the study ``choice`` names (default: the latest parent
    run's), and the :class:`~analysis.studies.Selection` saying which runs that is."""
    client = _client(tracking_uri)
    exp_id = _experiment_id(client, experiment)
    runs = search_all(client, exp_id, M.role_filter(M.ROLE_TRIAL))
    if not runs:
        raise AnalysisError(f"MLflow experiment {experiment!r} has no trial runs "
                            f"(tag {M.TAG_ROLE}={M.ROLE_TRIAL})")
    runs, selection = studies.select(client, exp_id, experiment, runs, choice)
    if not runs:
        raise AnalysisError(f"MLflow experiment {experiment!r}: {selection.label} has no trial "
                            "runs yet")
    return _runs_frame(client, runs, bulk), selection


def _runs_frame(client, runs: list, bulk: bool) -> pd.DataFrame:
    meta = _run_meta(runs)
    hist = _histories(client, meta["mlflow_run_id"].tolist(), bulk=bulk)

    def metric(key: str) -> pd.DataFrame:
        return (hist.loc[hist["key"] == key, ["mlflow_run_id", "step", "value"]]
                    .rename(columns={"value": key}))

    points = metric(M.METRIC_LOSS)
    for key in (M.METRIC_TOKENS, M.METRIC_FLOPS, M.METRIC_READOFF):
        points = points.merge(metric(key), on=["mlflow_run_id", "step"], how="left")
    train = metric(M.METRIC_TRAIN_LOSS).sort_values("step")
    points = pd.merge_asof(points.sort_values("step"), train, on="step", by="mlflow_run_id",
                           direction="backward")
    df = meta.merge(points, on="mlflow_run_id", how="left")
    # Fallbacks from the schema's own arithmetic: step is cumulative compute in step units, and
    # D = C / flops_per_token.
    df["flops"] = df["flops"].fillna(df["step"] * df["_flops_per_step"])
    df["tokens"] = df["tokens"].fillna(df["flops"] / df["_flops_per_token"])
    for name in CONVENTIONS:
        df[conventions.column(name)] = df["tokens"] * df[f"_fpt_{name}"]
    last = df.groupby("mlflow_run_id")["step"].transform("max")
    df["is_final"] = (df["step"] == last) | df["step"].isna()
    df = df.sort_values(["family", "knob", "run_id", "step"], kind="stable").reset_index(drop=True)
    return df[list(S.RUN_COLUMNS)]


# --------------------------------------------------------------------------------------------------
# Tables from elsewhere
# --------------------------------------------------------------------------------------------------
def load_table(path: str | Path) -> tuple[pd.DataFrame, DropCounts]:
    """A CSV or parquet of final results -> (``schema.FINAL_COLUMNS`` table, dropped rows).

    Needs columns family, N, loss and D or C (see ``schema.TABLE_REQUIRED``); the missing one of D/C
    follows from C = 6·N·D. Raises :class:`AnalysisError` naming the file when it is missing, a
    directory, empty or unreadable (binary, not CSV), and naming any missing column.
    """
    path = Path(path)
    where = f"table {str(path)!r}"
    if not path.exists():
        raise AnalysisError(f"{where} does not exist")
    if not path.is_file():
        raise AnalysisError(f"{where} is a directory (or not a regular file); give a CSV or "
                            "parquet file")
    with open(path, "rb") as fh:
        head = fh.read(_SNIFF_BYTES)
    if not head.strip():
        raise AnalysisError(f"{where} is empty")
    # Parquet by its magic bytes as well as its suffix: a parquet file named .csv is still read.
    is_parquet = path.suffix in (".parquet", ".pq") or head.startswith(_PARQUET_MAGIC)
    if not is_parquet and b"\0" in head:
        raise AnalysisError(f"{where} is a binary file, not CSV text (NUL bytes in its first "
                            f"{len(head)} bytes); give a CSV or parquet file")
    try:
        raw = pd.read_parquet(path) if is_parquet else pd.read_csv(path)
    except (ValueError, OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        # UnicodeDecodeError and pyarrow's ArrowInvalid are ValueErrors.
        kind = "parquet" if is_parquet else "CSV"
        raise AnalysisError(f"{where} could not be read as {kind}: {type(e).__name__}: "
                            f"{str(e).splitlines()[0] if str(e) else ''}") from None
    if raw.empty:
        raise AnalysisError(f"{where} has no rows (columns: {', '.join(map(str, raw.columns))})")
    return table_from_frame(raw, source=where)


def table_from_frame(raw: pd.DataFrame, source: str = "table") -> tuple[pd.DataFrame, DropCounts]:
    """:func:`load_table` on an in-memory frame; ``source`` names it in error messages."""
    missing = [c for c in S.TABLE_REQUIRED if c not in raw.columns]
    if not any(c in raw.columns for c in S.TABLE_ONE_OF):
        missing.append(" or ".join(S.TABLE_ONE_OF))
    if missing:
        raise AnalysisError(f"{source} is missing column(s): {', '.join(missing)} "
                            f"(has: {', '.join(map(str, raw.columns))})")
    n = pd.to_numeric(raw["N"], errors="coerce")
    nan = pd.Series(np.nan, index=raw.index)
    d = pd.to_numeric(raw["D"], errors="coerce") if "D" in raw else nan
    c = pd.to_numeric(raw["C"], errors="coerce") if "C" in raw else nan
    # Row by row: a table merged from several sources may give D for some rows and C for others.
    d, c = d.fillna(c / (S.FLOPS_PER_PARAM_TOKEN * n)), c.fillna(S.FLOPS_PER_PARAM_TOKEN * n * d)
    table = pd.DataFrame({
        "run_id": (raw["run_id"].astype(str) if "run_id" in raw
                   else [f"row{i}" for i in range(len(raw))]),
        "family": raw["family"].astype(str),
        "knob": pd.to_numeric(raw["knob"], errors="coerce") if "knob" in raw else np.nan,
        "N": n,
        "D": d,
        "C": c,
        "loss": pd.to_numeric(raw["loss"], errors="coerce"),
        "budget": pd.to_numeric(raw["budget"], errors="coerce") if "budget" in raw else np.nan,
    })
    # A table's row is its own bootstrap unit unless it names its trunk; its loss is as measured.
    table = table.assign(
        trunk=(raw["trunk"].where(raw["trunk"].notna(), table["run_id"]).astype(str)
               if "trunk" in raw else table["run_id"]),
        loss_constant=table["loss"], cooldown=1.0,
        **{c: pd.to_numeric(raw[c], errors="coerce") if c in raw else np.nan
           for c in S.FINAL_OPTIONAL})
    table, nan = drop_bad(table)
    dup = table.duplicated(_DUPLICATE_KEY, keep="first")
    table = table[~dup].reset_index(drop=True)
    return table, DropCounts(nan=nan, duplicate=int(dup.sum()))


def drop_worst(final: pd.DataFrame, k: int) -> tuple[pd.DataFrame, int]:
    """``final`` without each group's ``k`` highest-loss points, and how many were removed.

    Besiroglu et al. 2024 (the Chinchilla replication) left the highest-loss points of their
    extraction out of the fit: runs far above the rest are broken or mis-read, and the near-L1 Huber
    loss limits but does not remove their pull. Per group, so one family's outliers do not cost
    another family its runs.
    """
    if k <= 0:
        return final, 0
    worst = final.sort_values("loss", ascending=False, kind="stable").groupby("group").head(k)
    return final.drop(index=worst.index).reset_index(drop=True), len(worst)


def write_parquet(df: pd.DataFrame, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_parquet(path, index=False)
    return path
