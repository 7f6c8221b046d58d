"""The three summarisers of issue #18 side by side: validation NLL per epoch and the test ROUGE.

    python scripts/summarize_compare.py --out docs/results/summarize/compare.png \
        "Transformer from scratch=/tmp/summ18-full" "T5, random init=runs/t5-ft-random" \
        "T5, pretrained here=runs/t5-ft-pretrained"

Every run uses the t5-small SentencePiece vocabulary and the same validation slice (198 pairs), so
the validation NLLs (nats per summary token) are on one scale. Prints a Markdown table of the test
ROUGE (with the record's bootstrap intervals) and diversity, and draws the NLL curves.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from genlab import plots  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="LABEL=RUN_DIR")
    parser.add_argument("--out", type=Path, required=True, help="the figure (PNG)")
    args = parser.parse_args()
    fig, ax = plt.subplots(figsize=(6.4, 4))
    print("| model | best epoch | validation NLL | ROUGE-1 | ROUGE-2 | ROUGE-L | unique share | distinct-2 | train s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for item in args.runs:
        label, run = item.split("=", 1)
        with open(Path(run) / "metrics" / "epochs.csv") as f:
            rows = list(csv.DictReader(f))
        epochs, nll = [int(r["epoch"]) for r in rows], [float(r["val_nll"]) for r in rows]
        ax.plot(epochs, nll, marker="o", ms=3, label=label)
        record = json.loads((Path(run) / "metrics.json").read_text())
        m = {x["name"]: x["value"] for x in record["metrics"]}
        rouge = record["tables"][0]["rows"][0]
        best = min(range(len(nll)), key=nll.__getitem__)
        print(f"| {label} | {epochs[best]} | {nll[best]:.3f} | {rouge[1]} | {rouge[2]} | {rouge[3]} | "
              f"{m['unique_share']:.3f} | {m['distinct_2']:.3f} | {record['train_seconds']:.0f} |")
    plots.decorate(ax, "epoch", "validation NLL (nats per summary token)", "Summarisers on the XSum protocol")
    plots.save(fig, args.out)


if __name__ == "__main__":
    main()
