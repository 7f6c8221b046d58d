"""Write docs/results/vae.md (and copy the figures to docs/results/vae/) from a `genlab run vae` run.

    python scripts/vae_results.py runs/vae-full

A finished run (metrics.json present) gives the final table; an unfinished one gives the
test-set terms logged so far (metrics/eval.jsonl), marked as partial.
"""

from __future__ import annotations

import json
import math
import shutil
import statistics
import sys
from pathlib import Path

from genlab.record import Record

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = {"nelbo": (98.12, 0.77), "kl": (20.38, 0.38), "rec": (77.93, 0.65)}
NAMES = {"nelbo": "negative ELBO", "kl": "KL", "rec": "reconstruction", "iwae_nll": "IWAE bound on the NLL"}


def _se(values: list[float]) -> float:
    return statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0


def main(run: Path) -> Path:
    config = json.loads((run / "config.json").read_text())
    env = json.loads((run / "env.json").read_text())
    seeds = [config["seed"] + i for i in range(config["seeds"])]
    evals = [json.loads(line) for line in (run / "metrics" / "eval.jsonl").read_text().splitlines() if line]
    metrics_path = run / "metrics.json"
    metrics = Record.read(run).extra if metrics_path.exists() else None
    docs = ROOT / "docs" / "results"
    figures = docs / "vae"
    figures.mkdir(parents=True, exist_ok=True)
    copied = []
    for png in sorted((run / "figures").glob("*.png")):
        shutil.copy(png, figures / png.name)
        copied.append(png.name)

    lines = ["# VAE on binarised MNIST (SPEC §4)", "",
             f"`genlab run vae --seeds {config['seeds']} --iw-samples {config['iw_samples']}` "
             f"(run `{run.name}`): seeds {seeds}, {config['iterations']:,} Adam steps (lr {config['lr']}, batch "
             f"{config['batch_size']}), z in R^{config['latent_dim']}, MLPs 784-{config['hidden_dim']}-"
             f"{config['hidden_dim']} with ELU; training batches binarised afresh, the test set binarised once "
             "(seed 0). All numbers are nats per test image, mean +/- standard error over the seeds.", "",
             f"Machine: {env.get('processor')}, {env.get('cpu_count')} CPUs, torch {env['versions'].get('torch')}, "
             f"device {env.get('device')}, commit `{(env.get('git_commit') or '')[:10]}`.", ""]
    if metrics:
        test = metrics["test"]
        lines += ["| test set, nats | genlab | SPEC §4 reference |", "|---|---|---|"]
        for key in ("nelbo", "kl", "rec", "iwae_nll"):
            if key in test:
                ref = REFERENCE.get(key)
                label = NAMES[key] + (f", k = {metrics['iw_samples']:,}, {metrics.get('n_test_iwae', metrics['n_test']):,} images"
                                      if key == "iwae_nll" else "")
                lines.append(f"| {label} | {test[key]['mean']:.2f} +/- {test[key]['standard_error']:.2f} | "
                             + (f"{ref[0]:.2f} +/- {ref[1]:.2f}" if ref else "—") + " |")
        keys = [k for k in ("nelbo", "kl", "rec", "iwae_nll") if k in test]
        lines += ["", "| seed | " + " | ".join(NAMES[k] for k in keys) + " |", "|---" * (len(keys) + 1) + "|"]
        for s, v in metrics["per_seed"].items():
            lines.append(f"| {s} | " + " | ".join(f"{v[k]:.2f}" for k in keys) + " |")
        if metrics.get("train_seconds"):
            lines += ["", f"Training took {metrics['train_seconds']:.0f} s for the {len(seeds)} stacked models "
                          f"({metrics['train_seconds_per_seed']:.0f} s per seed); the IWAE bound "
                          f"{metrics['iwae_seconds'] or 0:.0f} s."]
    else:
        lines += [f"**Partial: the run has reached iteration {evals[-1]['step'] if evals else 0:,} of "
                  f"{config['iterations']:,}; no final numbers yet.**"]
    lines += ["", "Test-set terms during training (one reparameterised sample per image):", "",
              "| iteration | negative ELBO | KL | reconstruction |", "|---|---|---|---|"]
    for row in evals:
        cells = []
        for t in ("nelbo", "kl", "rec"):
            values = [row[f"test_{t}_seed{s}"] for s in seeds]
            cells.append(f"{statistics.mean(values):.2f} +/- {_se(values):.2f}")
        lines.append(f"| {row['step']:,} | " + " | ".join(cells) + " |")
    lines += [f"| reference (end) | {REFERENCE['nelbo'][0]} +/- {REFERENCE['nelbo'][1]} | "
                  f"{REFERENCE['kl'][0]} +/- {REFERENCE['kl'][1]} | {REFERENCE['rec'][0]} +/- {REFERENCE['rec'][1]} |"]
    if copied:
        lines += ["", "## Figures", ""] + [f"![{name}](vae/{name})" for name in copied]
    path = docs / "vae.md"
    reading = ""
    if path.exists() and "\n## Reading\n" in path.read_text():  # the hand-written reading is kept
        reading = "## Reading\n" + path.read_text().split("\n## Reading\n", 1)[1].split("\n## ", 1)[0].rstrip() + "\n"
    text = "\n".join(lines) + "\n"
    if reading:
        head, sep, figs = text.partition("\n## Figures\n")
        text = head.rstrip() + "\n\n" + reading + (sep + figs if sep else "")
    path.write_text(text)
    return path


if __name__ == "__main__":
    print(main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/vae-full")))
