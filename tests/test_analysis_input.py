"""--from-table input: unreadable files are named (exit 2), duplicate rows are counted once;
approach 2 on tables whose C is scattered (binned in log C)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from analysis import fit_laws, synthetic
from analysis.laws import fit_compute_law
from analysis.load import DropCounts, load_table, table_from_frame


def _write_bad(kind: str, path):
    if kind == "directory":
        path.mkdir()
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "binary":
        path.write_bytes(bytes(range(256)) * 8)
    elif kind == "header only":
        path.write_text("family,N,C,loss\n")
    elif kind == "not utf-8":
        path.write_bytes(b"\xff\xfefamily,N\n")
    elif kind == "broken parquet":
        path.write_bytes(b"PAR1" + b"x" * 100)


@pytest.mark.parametrize("kind, message", [
    ("directory", "is a directory"), ("empty", "is empty"), ("binary", "is a binary file"),
    ("header only", "has no rows"), ("not utf-8", "could not be read as CSV: UnicodeDecodeError"),
    ("broken parquet", "could not be read as parquet"),
])
def test_cli_unreadable_table_is_named_not_a_traceback(tmp_path, capsys, kind, message):
    path = tmp_path / "results.csv"
    _write_bad(kind, path)
    rc = fit_laws.main(["--from-table", str(path), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2
    assert f"table {str(path)!r} {message}" in err, err
    assert "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_duplicate_rows_are_dropped_counted_and_do_not_narrow_intervals(tmp_path, capsys):
    raw = synthetic.isoflop_table(budgets=np.logspace(17, 20, 5), sizes=5, seed=1)
    raw = raw.drop(columns="run_id")                      # an external table: no run ids
    once, d1 = table_from_frame(raw)
    twice, d2 = table_from_frame(pd.concat([raw, raw.iloc[::-1]], ignore_index=True))
    assert d1 == DropCounts() and d2 == DropCounts(duplicate=len(raw))
    pd.testing.assert_frame_equal(once, twice)
    a = fit_compute_law(once, "synthetic", n_boot=100)
    b = fit_compute_law(twice, "synthetic", n_boot=100)
    assert (a.params["beta"].lo, a.params["beta"].hi) == (b.params["beta"].lo, b.params["beta"].hi)
    # The CLI says so.
    path = tmp_path / "dup.csv"
    pd.concat([raw, raw]).to_csv(path, index=False)
    assert fit_laws.main(["--from-table", str(path), "--out", str(tmp_path / "o"),
                          "--bootstrap", "20"]) == 0
    out, err = capsys.readouterr()
    assert f"dropped {len(raw)} duplicate row(s)" in err
    assert f"duplicate {len(raw)})" in out
    doc = json.loads((tmp_path / "o" / "fits.json").read_text())
    assert doc["dropped"]["duplicate"] == len(raw) and doc["groups"]["synthetic"]["n_runs"] == 25


def test_parquet_named_csv_is_read_by_its_magic_bytes(tmp_path):
    raw = synthetic.compute_law_table(A=1e4, beta=0.2, B=2.0, C=np.logspace(13, 21, 8))
    path = tmp_path / "results.csv"
    raw.to_parquet(path)
    final, _ = load_table(path)
    assert len(final) == 8
