"""One EWC λ-sweep figure from several `genlab run continual` runs of the same model.

    python scripts/continual_sweep.py --model mlp --out docs/results/continual/ewc_lambda_sweep_mlp256.png \
        runs/continual-mlp runs/continual-mlp-lowlambda

Reads each run's metrics/summary.csv, keeps the rows of ``--model``, and draws the EWC rows
(average accuracy, plasticity and forgetting against λ, log scale) with the other methods'
average accuracy as reference lines (from the first run that has the method), as a single run
with all the λ would (`genlab.reports.continual.plot_lambda_sweep`). Prints the merged table.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from genlab.reports.continual import plot_lambda_sweep

TEXT_FIELDS = {"model", "method", "label"}


def read_rows(run: Path) -> list[dict]:
    """The rows of ``run``/metrics/summary.csv with numbers as floats (an empty λ is 0)."""
    with (run / "metrics" / "summary.csv").open() as f:
        return [{k: v if k in TEXT_FIELDS else float(v or 0) for k, v in row.items()} for row in csv.DictReader(f)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories")
    parser.add_argument("--model", default="mlp", choices=["mlp", "cnn"])
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    args = parser.parse_args()
    rows, seen = [], set()
    for row in (row for run in args.runs for row in read_rows(run) if row["model"] == args.model):
        if row["method"] == "ewc" or row["label"] not in seen:  # one line per other method: the first run's
            rows.append(row)
            seen.add(row["label"])
    sweep = sorted((row for row in rows if row["method"] == "ewc"), key=lambda row: row["lambda"])
    if not sweep:
        raise SystemExit(f"no EWC rows for model {args.model} in {[str(r) for r in args.runs]}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    plot_lambda_sweep(sweep, rows, args.model, args.out)
    print("| method | λ | average accuracy | backward transfer | plasticity | task 1 at end |")
    print("|---|---|---|---|---|---|")
    for row in [r for r in rows if r["method"] != "ewc"] + sweep:
        lam = f"{row['lambda']:g}" if row["method"] == "ewc" else ""
        print(f"| {row['method']} | {lam} | {row['average_accuracy']:.4f} | {row['backward_transfer']:.4f} | "
              f"{row['plasticity']:.4f} | {row['task1_final']:.4f} |")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
