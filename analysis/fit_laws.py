"""CLI: fit scaling laws to a sweep and report them.

    python -m analysis.fit_laws --experiment compute_bound [--tracking-uri URI] [--out DIR]
        [--families masked uniform] [--bootstrap 1000] [--seed 0]
    python -m analysis.fit_laws --from-table results.csv [--experiment NAME] ...

Prints the fit table, writes runs.parquet (MLflow source), final.parquet, fits.parquet, fits.json
and PNG plots to --out (default out/fits/<experiment or table name>), and, when the runs came from
MLflow, attaches those files to the sweep's latest parent run under artifacts ``fits/``.
Exit codes: 0 ok, 2 bad input (nothing fitted), 3 no law could be fitted (outputs still written).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from analysis import load, plots, report
from analysis.frontier import C_BIN_TOL_DEX
from analysis.schema import AnalysisError
from analysis.study import fit_study, select_groups
from trainer.tracking import resolve_uri

EXIT_BAD_INPUT = 2
EXIT_NOTHING_FITTED = 3


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m analysis.fit_laws",
                                description=__doc__.split("\n")[0])
    p.add_argument("--experiment", help="MLflow experiment (= sweep name) to load")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or the project's sqlite store)")
    p.add_argument("--from-table", type=Path, default=None,
                   help="CSV/parquet with columns family, N, loss and D or C, instead of MLflow")
    p.add_argument("--out", type=Path, default=None, help="output folder")
    p.add_argument("--families", nargs="+", default=None,
                   help="families (or family@knob groups) to fit; default all")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap draws (0: no intervals)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-column", choices=("n_total", "n_nonembed"), default="n_total",
                   help="parameter count used as N for MLflow runs")
    p.add_argument("--c-bin-tol", type=float, default=C_BIN_TOL_DEX, metavar="DEX",
                   help="runs without a budget (a table with no 'budget' column) are grouped into "
                        "isoFLOP budgets by binning log10 C: a bin is split at its widest gap "
                        "until it spans at most DEX decades (default %(default)s dex, a factor "
                        f"{10 ** C_BIN_TOL_DEX:.2f}); 0 = every distinct C is its own budget")
    p.add_argument("--drop-worst", type=int, default=0, metavar="K",
                   help="leave out each group's K highest-loss points before fitting (outliers of "
                        "an extracted table, as the Chinchilla replication did); default 0")
    args = p.parse_args(argv)
    if args.from_table is None:
        args.tracking_uri = resolve_uri(args.tracking_uri)      # the same store the trainer writes
    if args.experiment is None and args.from_table is None:
        p.error("give --experiment or --from-table")
    if args.bootstrap < 0:
        p.error("--bootstrap must be >= 0")
    if not (args.c_bin_tol >= 0 and args.c_bin_tol < float("inf")):   # NaN fails both
        p.error(f"--c-bin-tol must be a finite number of decades >= 0, got {args.c_bin_tol}")
    if args.drop_worst < 0:
        p.error(f"--drop-worst must be >= 0, got {args.drop_worst}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    runs = None
    try:
        # Everything that can reject the input runs before any fitting.
        if args.from_table is not None:
            final, dropped = load.load_table(args.from_table)
            name = args.experiment or args.from_table.stem
            if dropped.duplicate:
                print(f"note: table {str(args.from_table)!r}: dropped {dropped.duplicate} "
                      "duplicate row(s) (same family, knob, N, D, C, loss and budget as an earlier "
                      "row); each point is fitted once", file=sys.stderr)
        else:
            runs = load.load_runs(args.experiment, args.tracking_uri)
            final, dropped = load.final_points(runs, n_column=args.n_column)
            name = args.experiment
        final, worst = load.drop_worst(final, args.drop_worst)
        dropped = dataclasses.replace(dropped, worst=worst)
        if final.empty:
            d = dropped
            raise AnalysisError(f"{name}: no usable runs (dropped: failed {d.failed}, unfinished "
                                f"{d.unfinished}, NaN/invalid {d.nan}, duplicate {d.duplicate})")
        select_groups(final, args.families)
    except AnalysisError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT

    study = fit_study(final, dropped, families=args.families, n_boot=args.bootstrap,
                      seed=args.seed, c_bin_tol=args.c_bin_tol)
    out = args.out or Path("out") / "fits" / name
    out.mkdir(parents=True, exist_ok=True)
    written = []
    if runs is not None:
        written.append(load.write_parquet(runs, out / "runs.parquet"))
    written.append(load.write_parquet(final, out / "final.parquet"))
    written.append(load.write_parquet(report.fits_table(study), out / "fits.parquet"))
    (out / "fits.json").write_text(json.dumps(report.fits_json(study), indent=1))
    written.append(out / "fits.json")
    # A foreign table's loss is whatever its source measured; ours is always the validation NELBO.
    loss_label = plots.NELBO_LABEL if runs is not None else "loss"
    written += plots.write_plots(study, final, out, runs=runs, loss_label=loss_label)

    print(report.format_table(study))
    print(f"\nwrote {len(written)} files to {out}")
    if runs is not None:
        _attach(args.experiment, args.tracking_uri, written)
    return 0 if study.any_law else EXIT_NOTHING_FITTED


def _attach(experiment: str, tracking_uri: str | None, files: list[Path]) -> None:
    from mlflow import MlflowClient

    parent = load.latest_parent_run_id(experiment, tracking_uri)
    if parent is None:
        print(f"note: experiment {experiment!r} has no parent run (tag dlm.role=parent); "
              "nothing attached", file=sys.stderr)
        return
    client = MlflowClient(tracking_uri=tracking_uri)
    for f in files:
        client.log_artifact(parent, str(f), artifact_path="fits")
    print(f"attached {len(files)} files to parent run {parent} under artifacts fits/")


if __name__ == "__main__":
    sys.exit(main())
