"""CLI: fit scaling laws to a sweep and report them.

    python -m analysis.fit_laws --experiment compute_bound [--tracking-uri URI] [--out DIR]
        [--families masked uniform] [--bootstrap 1000] [--seed 0]
        [--preset NAME | --sweep-id ID] [--all-studies] [--n-column n_backbone|n_nonembed|n_total]
        [--flops matmul|sahoo2026|vonruette2025|vonruette2025-6n|6n]
    python -m analysis.fit_laws --from-table results.csv [--experiment NAME]
        [--c-bin-tol DEX] [--drop-worst K] ...

``--flops NAME`` refits a finished study with C counted under another FLOP convention (every run
logs its FLOPs per token under all of them, core/flops.py; older runs have them recomputed from
their config, analysis/conventions.py); the default is the convention the runs were trained under.
From MLflow it fits ONE study by default, the latest parent run's (see analysis/studies.py), and
prints which one and how many runs of the experiment it left out. Prints the fit table, writes
runs.parquet (MLflow source), final.parquet, fits.parquet, fits.json and PNG plots to --out
(default out/fits/<experiment or table name>), and, when the runs came from MLflow, attaches those
files to the fitted study's parent run under artifacts ``fits/``.
Exit codes: 0 ok, 2 bad input (nothing fitted), 3 no law could be fitted (outputs still written).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from analysis import load, plots, report
from core.flops import CONVENTIONS
from analysis.frontier import C_BIN_TOL_DEX
from analysis.schema import DEFAULT_N_COLUMN, N_COLUMNS, AnalysisError
from analysis.study import fit_study, select_groups
from core import schema as M
from core.schema import resolve_uri

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
    p.add_argument("--n-column", choices=N_COLUMNS, default=DEFAULT_N_COLUMN,
                   help="parameter count used as N for MLflow runs (default %(default)s: per-token "
                        "non-embedding backbone, the same for every family at one size; "
                        "n_nonembed adds time conditioning, n_total also embedding and head)")
    p.add_argument("--flops", choices=list(CONVENTIONS), default=None, metavar="CONVENTION",
                   help="MLflow: count C under this FLOP convention (core.flops.CONVENTIONS: "
                        f"{', '.join(CONVENTIONS)}); default: the one the runs were trained under")
    p.add_argument("--preset", default=None,
                   help=f"MLflow: fit the latest study made with this preset (tag {M.TAG_PRESET})")
    p.add_argument("--sweep-id", default=None,
                   help=f"MLflow: fit the study with this sweep id (tag {M.TAG_SWEEP_ID}; a unique "
                        "prefix will do, e.g. the 6 characters in the parent run's name)")
    p.add_argument("--all-studies", action="store_true",
                   help="MLflow: pool every study of the experiment (or every one matching "
                        "--preset / --sweep-id) instead of the latest; by default runs of other "
                        "studies (another preset, another grid) are left out and counted")
    p.add_argument("--c-bin-tol", type=float, default=C_BIN_TOL_DEX, metavar="DEX",
                   help="runs without a budget (a table with no 'budget' column) are grouped into "
                        "isoFLOP budgets by binning log10 C: a bin is split at its widest gap "
                        "until it spans at most DEX decades (default %(default)s dex, a factor "
                        f"{10 ** C_BIN_TOL_DEX:.2f}); 0 = every distinct C is its own budget")
    p.add_argument("--no-cooldown", action="store_true",
                   help="trajectory studies in read-off mode 'constant': fit the trunks' read-offs "
                        "at their constant-LR loss (column loss_constant), without the cooldown "
                        "factor measured from the decay branches")
    p.add_argument("--drop-worst", type=int, default=0, metavar="K",
                   help="leave out each group's K highest-loss points before fitting (outliers of "
                        "an extracted table, as the Chinchilla replication did); default 0")
    args = p.parse_args(argv)
    if args.from_table is None:
        args.tracking_uri = resolve_uri(args.tracking_uri)      # the same store the trainer writes
    if args.experiment is None and args.from_table is None:
        p.error("give --experiment or --from-table")
    if args.from_table is not None and (args.preset or args.sweep_id or args.all_studies):
        p.error("--preset, --sweep-id and --all-studies select MLflow studies; a --from-table "
                "table is used whole")
    if args.from_table is not None and args.flops:
        p.error("--flops recounts C of MLflow runs from their logged FLOPs per token; a "
                "--from-table table's C is its own")
    if args.bootstrap < 0:
        p.error("--bootstrap must be >= 0")
    if not (args.c_bin_tol >= 0 and args.c_bin_tol < float("inf")):   # NaN fails both
        p.error(f"--c-bin-tol must be a finite number of decades >= 0, got {args.c_bin_tol}")
    if args.drop_worst < 0:
        p.error(f"--drop-worst must be >= 0, got {args.drop_worst}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    runs = selection = None
    cooldown = ()
    convention, n_column = "table", "table"
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
            choice = load.StudyChoice(preset=args.preset, sweep_id=args.sweep_id,
                                      all_studies=args.all_studies)
            runs, selection = load.load_study(args.experiment, args.tracking_uri, choice)
            print("\n".join(selection.describe()))
            convention = args.flops or load.study_convention(runs)
            n_column = args.n_column
            final, dropped, cooldown = load.study_points(runs, n_column=args.n_column,
                                                         flops=convention)
            for c in cooldown:
                if c.warning and not args.no_cooldown:
                    print(f"warning: {c.warning}", file=sys.stderr)
            name = args.experiment
        if args.no_cooldown:
            final = load.without_cooldown(final)
        final, worst = load.drop_worst(final, args.drop_worst)
        dropped = dataclasses.replace(dropped, worst=worst)
        if final.empty:
            d = dropped
            hint = ""
            if runs is not None and runs[args.n_column].isna().all():
                hint = (f"; no run has {args.n_column} (logged before it existed and not "
                        "recomputable from its size): choose another with --n-column")
            elif runs is not None and runs[f"flops_{convention}"].isna().all():
                hint = (f"; no run has FLOPs under {convention!r} (logged before runs logged "
                        "every convention, and not recomputable from its config): choose "
                        "another with --flops")
            raise AnalysisError(f"{name}: no usable runs (dropped: failed {d.failed}, unfinished "
                                f"{d.unfinished}, NaN/invalid {d.nan}, duplicate {d.duplicate})"
                                + hint)
        select_groups(final, args.families)
    except AnalysisError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT

    study = fit_study(final, dropped, families=args.families, n_boot=args.bootstrap,
                      seed=args.seed, c_bin_tol=args.c_bin_tol, flop_convention=convention,
                      n_column=n_column, cooldown=cooldown,
                      cooldown_applied=not args.no_cooldown)
    out = args.out or Path("out") / "fits" / name
    out.mkdir(parents=True, exist_ok=True)
    written = []
    if runs is not None:
        written.append(load.write_parquet(runs, out / "runs.parquet"))
    written.append(load.write_parquet(final, out / "final.parquet"))
    written.append(load.write_parquet(report.fits_table(study), out / "fits.parquet"))
    doc = report.fits_json(study)
    if selection is not None:
        doc["selection"] = selection.as_dict()
    (out / "fits.json").write_text(json.dumps(doc, indent=1))
    written.append(out / "fits.json")
    # A foreign table's loss is whatever its source measured; ours is always the validation NELBO.
    loss_label = plots.NELBO_LABEL if runs is not None else "loss"
    written += plots.write_plots(study, final, out, runs=runs, loss_label=loss_label)

    print(report.format_table(study))
    print(f"\nwrote {len(written)} files to {out}")
    if selection is not None:
        _attach(args.experiment, args.tracking_uri, written, selection)
    return 0 if study.any_law else EXIT_NOTHING_FITTED


def _attach(experiment: str, tracking_uri: str | None, files: list[Path],
            selection: load.Selection) -> None:
    from mlflow import MlflowClient

    # The fitted study's parent (the latest one when studies are pooled), not simply the latest.
    parent = selection.parents[0] if selection.parents else None
    if parent is None:
        print(f"note: experiment {experiment!r} has no parent run (tag {M.TAG_ROLE}={M.ROLE_PARENT}); "
              "nothing attached", file=sys.stderr)
        return
    client = MlflowClient(tracking_uri=tracking_uri)
    for f in files:
        client.log_artifact(parent, str(f), artifact_path="fits")
    print(f"attached {len(files)} files to parent run {parent} under artifacts fits/")


if __name__ == "__main__":
    sys.exit(main())
