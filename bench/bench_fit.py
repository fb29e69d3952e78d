"""Benchmark: fit a 10,000-row study with 1,000 bootstrap draws (target <= 10 s on 2 cores).

    python -m bench.bench_fit [--rows 10000] [--bootstrap 1000] [--repeats 3]

The table is an isoFLOP grid from planted Chinchilla laws: 4 families x 25 budgets x (rows/100)
sizes, 1% noise. Timed: the whole ``fit_study`` (per family L(C) on the frontier, L(N, D) on all
runs, isoFLOP parabolas -> N*(C), D*(C), backtest, each law with its bootstrap; pairwise
crossovers).
Loading and plotting are not timed. Prints the median wall time over ``--repeats``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import pandas as pd

from analysis.load import table_from_frame
from analysis.study import fit_study
from analysis.synthetic import CHINCHILLA, isoflop_table

TARGET_S = 10.0
FAMILIES = {  # planted laws: distinct enough that some pairs cross
    "masked": {**CHINCHILLA, "E": 1.9},
    "uniform": {**CHINCHILLA, "E": 1.6, "A": 900.0, "B": 1200.0},
    "hybrid@0.5": {**CHINCHILLA, "E": 1.75, "A": 600.0},
    "autoregressive": CHINCHILLA,
}
N_BUDGETS = 25


def bench_table(rows: int, seed: int = 0) -> pd.DataFrame:
    sizes = max(3, rows // (len(FAMILIES) * N_BUDGETS))
    budgets = np.logspace(17, 21, N_BUDGETS)
    return pd.concat([isoflop_table(budgets=budgets, params=p, sizes=sizes, seed=seed + i,
                                    family=name)
                      for i, (name, p) in enumerate(FAMILIES.items())], ignore_index=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.bench_fit",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    final, _ = table_from_frame(bench_table(args.rows))
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        study = fit_study(final, n_boot=args.bootstrap)
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    print(f"fit_study: {len(final)} rows, {len(study.groups)} families, "
          f"{args.bootstrap} bootstraps")
    print(f"wall time: median {med:.2f} s over {args.repeats} runs "
          f"({', '.join(f'{t:.2f}' for t in times)}); target <= {TARGET_S:.0f} s: "
          f"{'OK' if med <= TARGET_S else 'MISSED'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
