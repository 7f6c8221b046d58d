"""What closes the VAE's gap to the reference -ELBO (issue #19, SPEC §4): one study, measured.

Trains 3 stacked seeds per variant through the real CLI and reads each run's test curve
(``metrics/eval.jsonl``, the test -ELBO every 1,000 iterations, one sample per image):

- the default (lr 1e-3, softplus variance, Adam eps 1e-8) for 50,000 iterations: -ELBO against
  iteration, with the reference line;
- at SPEC's 10,000 iterations: lr 3e-4 and 3e-3, the exp (log-variance) parameterisation, Adam
  eps 1e-4 and 1e-6.

    python scripts/vae_study.py --out runs/vae-study          # resumable: finished runs are kept
    python scripts/vae_study.py --out runs/vae-study --table  # table + figure from finished runs

Writes ``OUT/study.json``, ``OUT/study.md`` (table) and ``OUT/nelbo_vs_iteration.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

REFERENCE = (98.12, 0.77)  # SPEC §4: -ELBO mean ± standard error, nats
SEEDS = (42, 43, 44)
VARIANTS = {  # name -> extra `genlab run vae` arguments
    "default, 50k iterations": ["--iterations", "50000"],
    "lr 3e-4": ["--lr", "3e-4"],
    "lr 3e-3": ["--lr", "3e-3"],
    "exp (log-variance)": ["--variance", "exp"],
    "Adam eps 1e-4": ["--adam-eps", "1e-4"],
    "Adam eps 1e-6": ["--adam-eps", "1e-6"],
}


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name).strip("-").replace("--", "-")


def curve(run: Path) -> list[tuple[int, float, float]]:
    """(iteration, mean test -ELBO over the seeds, its standard error) per evaluation."""
    rows = [json.loads(line) for line in (run / "metrics" / "eval.jsonl").read_text().splitlines() if line]
    out = []
    for r in rows:
        values = [r[f"test_nelbo_seed{s}"] for s in SEEDS]
        mean = sum(values) / len(values)
        se = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1) / len(values))
        out.append((r["step"], mean, se))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/vae-study"))
    parser.add_argument("--table", action="store_true", help="only tabulate the finished runs")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.table:
        for name, extra in VARIANTS.items():
            run = args.out / slug(name)
            done = (run / "metrics" / "eval.jsonl").exists() and (run / "summary.md").exists()
            if done:
                continue
            cmd = [sys.executable, "-m", "genlab", "run", "vae", "--seeds", "3", "--iw-samples", "0",
                   "--device", "cpu", "--out", str(run), *extra]
            if (run / "checkpoints").exists() and any((run / "checkpoints").iterdir()):
                cmd.append("--resume")
            print(" ".join(cmd), flush=True)
            subprocess.run(cmd, check=True)
    results = {}
    for name in VARIANTS:
        run = args.out / slug(name)
        if (run / "metrics" / "eval.jsonl").exists():
            results[name] = curve(run)
    (args.out / "study.json").write_text(json.dumps(results, indent=2))
    lines = ["| variant | test -ELBO at 10k (nats, 3 seeds) | at 20k | at 50k | gap to 98.12 at 10k |",
             "|---|---|---|---|---|"]
    for name, points in results.items():
        at = {step: (m, se) for step, m, se in points}

        def cell(step: int) -> str:
            return f"{at[step][0]:.2f} ± {at[step][1]:.2f}" if step in at else "–"

        gap = f"{at[10000][0] - REFERENCE[0]:+.2f}" if 10000 in at else "–"
        lines.append(f"| {name} | {cell(10000)} | {cell(20000)} | {cell(50000)} | {gap} |")
    (args.out / "study.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if results:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4.2))
        for name, points in results.items():
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="." if len(points) < 20 else None,
                    label=name)
        ax.axhline(REFERENCE[0], color="k", ls="--", lw=1, label="reference 98.12 (SPEC §4)")
        ax.axhspan(REFERENCE[0] - REFERENCE[1], REFERENCE[0] + REFERENCE[1], color="k", alpha=0.08)
        ax.set(xlabel="iteration", ylabel="test -ELBO (nats per image)", ylim=(94, 115),
               title="VAE test -ELBO, mean of 3 seeds")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(args.out / "nelbo_vs_iteration.png", dpi=120)


if __name__ == "__main__":
    main()
