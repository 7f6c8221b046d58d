"""The gan experiment's (SPEC §2) figures and record: the loss curves, the generator gradient
norms of both losses at the same parameters, the sample grid, FID/KID/IS, metrics.json and
summary.md (:mod:`genlab.experiments.gan` trains; this module reports)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from genlab import plots
from genlab.dcgan_nets import DCGANTrainingConfig, Generator, evaluate_quality, plot_losses, read_steps, save_grid
from genlab.engine import RunDir
from genlab.quality import quality_metrics
from genlab.record import Figure, Metric, Record, Table


def probed(steps: list[dict]) -> list[dict]:
    """The per-step rows that carry both losses' generator gradient norms."""
    return [r for r in steps if "grad_norm_minimax" in r and "grad_norm_non_saturating" in r]


def plot_gradient_norms(steps: list[dict], path: Path, title: str) -> Path | None:
    """Top: generator gradient norms of both losses (log scale) over the probed steps;
    bottom: mean D(G(z)) in the generator step. Returns None without probed steps."""
    rows = probed(steps)
    if not rows:
        return None
    x = [r["step"] for r in rows]
    fig, (top, bottom) = plots.plt.subplots(2, 1, figsize=(6.4, 5.6), sharex=True, height_ratios=(2, 1))
    top.plot(x, [r["grad_norm_non_saturating"] for r in rows], lw=0.8, label="non-saturating  -E[log D(G(z))]")
    top.plot(x, [r["grad_norm_minimax"] for r in rows], lw=0.8, label="minimax  E[log(1 - D(G(z)))]")
    top.set_yscale("log")
    plots.decorate(top, "", "||dL_G / dtheta||", title)
    bottom.plot(x, [r["d_fake_g"] for r in rows], lw=0.8, color="k")
    bottom.set_ylim(0, 1)
    plots.decorate(bottom, "optimiser step (both norms at the same parameters)", "mean D(G(z))", legend=False)
    return plots.save(fig, path)


def gradient_summary(steps: list[dict], first: int = 100) -> dict:
    """Means of the probed gradient norms and D(G(z)) over the first ``first`` steps and over
    all probed steps."""
    out = {}
    for label, rows in ((f"first_{first}_steps", steps[:first]), ("probed_steps", steps)):
        rows = probed(rows)
        if rows:
            out[label] = {key: float(np.mean([r[key] for r in rows]))
                          for key in ("grad_norm_non_saturating", "grad_norm_minimax", "d_fake_g")}
            out[label]["steps"] = len(rows)
    return out


def finish(run_dir: RunDir, config: DCGANTrainingConfig, generator: Generator, fixed_z: torch.Tensor,
           device: torch.device, elapsed: float | None, dataset: str) -> dict:
    """Figures, the 10 x 20 sample grid, FID/KID/IS against ``dataset``'s test images, metrics.json
    and summary.md. ``config``: the gan run's config (its ``generator_loss`` names the trained loss)."""
    name, steps = config.generator_loss, read_steps(run_dir.path)
    plot_losses(run_dir, f"GAN ({name})", f"generator ({name})",
                math.log(2) if name == "non-saturating" else -math.log(2))
    plot_gradient_norms(steps, run_dir.path / "figures" / "grad_norms.png",
                        f"Generator gradient norms, trained with the {name} loss")
    save_grid(generator, fixed_z, device, run_dir.path / "figures" / "samples_10x20.png", 10, 20,
              f"GAN ({name}), MNIST, 200 samples")
    quality, eval_seconds = evaluate_quality(generator, config, device, dataset)
    epochs = run_dir.read_epochs()
    metrics = {"generator_loss": name, "final_epoch": epochs[-1] if epochs else None,
               "quality": quality, "gradients": gradient_summary(steps)}
    run_dir.write_record(make_record(name, epochs, metrics, elapsed, eval_seconds, run_dir.figures(FIGURE_CAPTIONS)))
    return metrics


FIGURE_CAPTIONS = {
    "samples_10x20": "200 samples from one fixed noise batch, tiled 10 x 20",
    "losses_steps": "discriminator and generator loss per optimiser step (moving average)",
    "losses": "discriminator and generator loss per epoch",
    "d_outputs": "mean D(x) and D(G(z)) per epoch",
    "grad_norms": "generator gradient norms of both losses at the same parameters (log scale), and D(G(z))",
}


def make_record(generator_loss: str, epochs: list[dict], metrics: dict, train_seconds: float | None,
                eval_seconds: float | None, figures: list[Figure]) -> Record:
    """The run's record: FID/KID/IS (when evaluated), the probed generator gradient norms of both
    losses (the vanishing minimax gradient, SPEC §2), the last epoch's losses, the per-epoch table."""
    quality = metrics["quality"]
    out = quality_metrics(quality) if quality else []
    notes = [f"Extractor: {quality['extractor']}."] if quality else []
    for label, g in metrics["gradients"].items():
        span = label.replace("_", " ")
        for loss in ("non_saturating", "minimax"):
            out.append(Metric(f"grad_norm_{loss}_{label}", g[f"grad_norm_{loss}"], headline=label.startswith("first"),
                              description=f"mean generator gradient norm of the {loss.replace('_', '-')} loss over "
                                          f"the {span} ({g['steps']} steps, mean D(G(z)) {g['d_fake_g']:.3f})"))
    if epochs:
        last = epochs[-1]
        for key, what in (("loss_d", "discriminator"), ("loss_g", f"generator ({generator_loss})")):
            out.append(Metric(key, last[key], "nats", description=f"{what} loss, mean over epoch {int(last['epoch'])}"))
    table = Table("losses per epoch", ["epoch", "D loss", "G loss", "D(x)", "D(G(z))", "generator gradient norm"],
                  [[int(r["epoch"]), r["loss_d"], r["loss_g"], r["d_real"], r["d_fake"], r["grad_norm_g"]]
                   for r in epochs], "Epoch means; losses in nats.")
    return Record("gan", f"GAN ({generator_loss} generator loss) on MNIST", "§2", metrics=out, tables=[table],
                  figures=figures, train_seconds=train_seconds, eval_seconds=eval_seconds, notes=notes, extra=metrics)
