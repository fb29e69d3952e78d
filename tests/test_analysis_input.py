"""--from-table input: unreadable files are named (exit 2), duplicate rows are counted once;
approach 2 on tables whose C is scattered (binned in log C)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from analysis import fit_laws, synthetic
from analysis.laws import fit_law
from analysis.load import DropCounts, load_table, table_from_frame
from analysis.study import fit_study


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
    a = fit_law("compute", once, "synthetic", n_boot=100)
    b = fit_law("compute", twice, "synthetic", n_boot=100)
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


# ---------------------------------------------------------------------------------------------
# Approach 2 on a table with scattered C
# ---------------------------------------------------------------------------------------------
def _scattered(seed: int = 0) -> pd.DataFrame:
    """9 budgets 1e18..1e21 x 11 sizes, each run's C jittered by up to ±25% (no budget column):
    99 distinct C, like a table read off a paper's figure."""
    return synthetic.scattered_isoflop_table(budgets=np.logspace(18, 21, 9), sizes=11, span=30.0,
                                             jitter=0.25, noise=0.005, seed=seed)


def test_scattered_c_is_binned_into_isoflop_budgets_and_recovers_n_opt_exponent():
    raw = _scattered()
    assert raw["C"].nunique() == 99 and "budget" not in raw
    final, _ = table_from_frame(raw)
    unbinned = fit_study(final, n_boot=0, c_bin_tol=0.0).groups[0]
    assert not any(len(c.N) >= 3 for c in unbinned.isoflops)     # 99 budgets of one size each
    assert unbinned.law("allocation") is None
    g = fit_study(final, n_boot=200).groups[0]                   # default tolerance
    assert len(g.isoflops) == 9 and all(len(c.N) == 11 for c in g.isoflops)
    budgets = np.array([c.budget for c in g.isoflops])
    np.testing.assert_allclose(budgets, np.logspace(18, 21, 9), rtol=0.2)  # median of ±25%
    assert sum(c.ok for c in g.isoflops) >= 8
    p = synthetic.CHINCHILLA
    a_true = p["beta"] / (p["alpha"] + p["beta"])
    a = g.law("allocation").params["a"]
    assert a.lo <= a_true <= a.hi and a.hi - a.lo < 0.3, a


def test_log_bins_split_at_widest_gaps_and_bound_the_width():
    from analysis.frontier import _log_bins

    x = np.array([0.0, 0.01, 0.02, 0.1, 0.11, 1.0, 1.02, 1.3])
    assert _log_bins(x, 0.15).tolist() == [0, 0, 0, 0, 0, 1, 1, 2]
    assert _log_bins(x, 0.05).tolist() == [0, 0, 0, 1, 1, 2, 2, 3]
    assert _log_bins(x, 0.0).tolist() == [0, 1, 2, 3, 4, 5, 6, 7]
    dense = np.linspace(0, 3, 3001)                   # no gaps at all: still bounded bins
    bins = _log_bins(dense, 0.15)
    assert max(np.ptp(dense[bins == b]) for b in np.unique(bins)) <= 0.15


def test_drop_worst_removes_each_groups_highest_losses(tmp_path, capsys):
    raw = _scattered()
    raw.loc[[3, 40], "loss"] *= 3.0                   # two broken runs
    path = tmp_path / "t.csv"
    raw.to_csv(path, index=False)
    assert fit_laws.main(["--from-table", str(path), "--out", str(tmp_path / "o"),
                          "--bootstrap", "0", "--drop-worst", "2"]) == 0
    out = capsys.readouterr().out
    assert "highest-loss (--drop-worst) 2" in out
    doc = json.loads((tmp_path / "o" / "fits.json").read_text())
    assert doc["groups"]["synthetic"]["n_runs"] == 97 and doc["dropped"]["worst"] == 2
    kept = pd.read_parquet(tmp_path / "o" / "final.parquet")
    assert not set(raw.loc[[3, 40], "run_id"]) & set(kept["run_id"])


@pytest.mark.parametrize("flag", [["--c-bin-tol", "nan"], ["--c-bin-tol", "-1"],
                                  ["--drop-worst", "-2"]])
def test_bad_binning_flags_are_refused(tmp_path, flag):
    with pytest.raises(SystemExit) as e:
        fit_laws.parse_args(["--from-table", str(tmp_path / "t.csv"), *flag])
    assert e.value.code == 2


def test_isoflop_plot_gives_distinct_budgets_distinct_colours_and_says_loss():
    from matplotlib.colors import to_hex

    from analysis import plots

    raw = synthetic.isoflop_table(budgets=np.logspace(17, 21, 14), sizes=5, seed=0)
    g = fit_study(table_from_frame(raw)[0], n_boot=0).groups[0]
    assert len(g.isoflops) == 14
    fig = plots.isoflop_figure(g, loss_label="loss")
    ax = fig.axes[0]
    points = [ln for ln in ax.get_lines() if ln.get_marker() == "o"]
    assert len(points) == 14
    assert len({to_hex(ln.get_color()) for ln in points}) == 14
    assert ax.get_ylabel() == "final loss"
