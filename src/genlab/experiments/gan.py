"""SPEC §2: the non-saturating and the minimax GAN on MNIST, and the vanishing gradient.

The networks, the discriminator loss, the optimisers and the mixed precision are those of
§1 (:mod:`genlab.experiments.dcgan`); what changes is the generator loss (Goodfellow et
al. 2014, eq. 1 and §3), chosen with ``--generator-loss``:

* minimax:         L_G = E[log(1 - D(G(z)))]       (minimised; D = sigmoid(h), h the logit)
* non-saturating:  L_G = -E[log D(G(z))]

With h the discriminator's logit, dL_G/dh = -D(G(z)) for the minimax loss and
-(1 - D(G(z))) for the non-saturating one, so the minimax generator gradient is
-E[D(G(z)) dh/dtheta] and vanishes as D(G(z)) -> 0, which is where the generator starts
(SPEC §12; checked in tests/test_theory.py). During the first epoch the run measures, at
every step and at the same parameters, the generator gradient norm of both losses.

    genlab run gan --generator-loss minimax
    genlab run gan --epochs 1 --max-steps 20 --fid-samples 200 --out /tmp/smoke
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from genlab import plots
from genlab.engine import EpochsConfig, Run, RunDir, autocast_for, resolve_device, seed_everything
from genlab.errors import ConfigError
from genlab.experiments import Experiment, dcgan
from genlab.experiments.dcgan import (Discriminator, Generator, build,
                                      discriminator_loss, evaluate_run, generate, sample)
from genlab.experiments.dcgan import generator_loss as non_saturating_generator_loss
from genlab.quality import quality_metrics
from genlab.record import Figure, Metric, Record, Table

DATASET = "mnist"
GeneratorLoss = Literal["non-saturating", "minimax"]


@dataclass
class GANConfig(EpochsConfig):
    """SPEC §2: §1's networks and optimisers on MNIST, with a choice of generator loss."""

    generator_loss: GeneratorLoss = "non-saturating"
    """non-saturating: -E[log D(G(z))]; minimax: E[log(1 - D(G(z)))]."""
    epochs: int = 10
    """Passes over the 60,000 MNIST training images."""
    batch_size: int = 64
    """Minibatch size."""
    lr: float = 1e-4
    """Adam learning rate, both networks."""
    beta1: float = 0.9
    """Adam beta1, both networks."""
    beta2: float = 0.999
    """Adam beta2, both networks."""
    latent_dim: int = 100
    """Dimension of z ~ N(0, I)."""
    leaky_slope: float = 0.3
    """Negative slope of every LeakyReLU."""
    dropout: float = 0.3
    """Dropout probability in the discriminator."""
    precision: str = "auto"
    """auto (bf16 autocast where the hardware supports it), bf16 or fp32."""
    layout: str = "auto"
    """Memory layout of the discriminator's convolutions: auto (per CPU kind), contiguous or
    channels_last (as dcgan's --layout)."""
    probe_steps: int | None = None
    """Steps from the start at which both losses' generator gradient norms are measured
    (default: the first epoch; 0 turns the probe off)."""
    fid_samples: int = 10000
    """Generated images for FID/KID/IS at the end (0 skips the evaluation)."""
    log_every: int = 50
    """Optimiser steps between progress-bar updates and NaN checks."""
    subset: int | None = None
    """Train on the first N training images only (quick looks and tests)."""

    CONTINUABLE: ClassVar[tuple[str, ...]] = EpochsConfig.CONTINUABLE + ("fid_samples", "log_every")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.generator_loss not in GENERATOR_LOSSES:
            raise ConfigError(f"--generator-loss must be one of {sorted(GENERATOR_LOSSES)}, got {self.generator_loss!r}")
        if self.batch_size < 2:
            raise ConfigError(f"--batch-size must be >= 2 (batch norm), got {self.batch_size}")
        if self.layout not in ("auto", "contiguous", "channels_last"):
            raise ConfigError(f"--layout must be auto, contiguous or channels_last, got {self.layout!r}")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ConfigError(f"--precision must be auto, bf16 or fp32, got {self.precision!r}")
        if self.subset is not None and self.subset < self.batch_size:
            raise ConfigError(f"--subset must be >= --batch-size ({self.batch_size}), got {self.subset}")
        if self.probe_steps is not None and self.probe_steps < 0:
            raise ConfigError(f"--probe-steps must be >= 0, got {self.probe_steps}")


# ---------------------------------------------------------------------------------------
# Generator losses (Goodfellow et al. 2014): functions of the fake logits h (N, 1)
# ---------------------------------------------------------------------------------------

def minimax_generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """E[log(1 - D(G(z)))] with D = sigmoid(h) (Goodfellow et al. 2014, eq. 1), nats.

    log(1 - sigmoid(h)) = -softplus(h), computed in float32 without cancellation. Minimised
    by the generator; its value lies in (-inf, 0], near 0 when D(G(z)) -> 0. d/dh = -D(G(z)).
    """
    return -F.softplus(fake_logits.float()).mean()


GENERATOR_LOSSES = {"non-saturating": non_saturating_generator_loss, "minimax": minimax_generator_loss}
PROBE_KEYS = {"non-saturating": "grad_norm_non_saturating", "minimax": "grad_norm_minimax"}


def gradient_norm(grads) -> torch.Tensor:
    """Euclidean norm of the concatenation of ``grads`` (a sequence of tensors), float32 scalar."""
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))


# ---------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------

STEP_KEYS = ("loss_d", "loss_g", "d_real", "d_fake", "d_fake_g", "grad_norm_non_saturating", "grad_norm_minimax")


def train_step(generator: Generator, discriminator: Discriminator, opt_g: torch.optim.Optimizer,
               opt_d: torch.optim.Optimizer, real: torch.Tensor, autocast, loss_name: str,
               probe: bool) -> torch.Tensor:
    """One alternating GAN step on ``real`` (N, 1, 28, 28) in [-1, 1].

    Returns float32 (7,) in the order of :data:`STEP_KEYS`: D loss, G loss, mean D(x) and
    D(G(z)) in the D step, mean D(G(z)) in the G step (after D's update), and the generator
    gradient norms of the non-saturating and the minimax loss (NaN when not measured; the
    trained loss's norm is always measured, the other one when ``probe``).
    """
    n = real.shape[0]
    z = torch.randn(n, generator.latent_dim, device=real.device)
    # (1) Update D: maximise log D(x) + log(1 - D(G(z))). Real and fake in one forward.
    with autocast:
        fake = generator(z)  # (N, 1, 28, 28)
        logits = discriminator(torch.cat([real, fake.detach().to(real.dtype)]))  # (2N, 1)
        real_logits, fake_logits = logits[:n], logits[n:]
        loss_d = discriminator_loss(real_logits, fake_logits)
    opt_d.zero_grad(set_to_none=True)
    loss_d.backward()
    opt_d.step()
    # (2) Update G with the chosen loss, D's parameters frozen.
    discriminator.requires_grad_(False)
    with autocast:
        fake_logits_g = discriminator(fake)  # (N, 1)
    loss_g = GENERATOR_LOSSES[loss_name](fake_logits_g)
    params = [p for p in generator.parameters() if p.requires_grad]
    norms = {name: torch.tensor(float("nan")) for name in GENERATOR_LOSSES}
    if probe:  # the other loss's gradient at the same parameters, same batch
        other = next(name for name in GENERATOR_LOSSES if name != loss_name)
        grads = torch.autograd.grad(GENERATOR_LOSSES[other](fake_logits_g), params, retain_graph=True)
        norms[other] = gradient_norm(grads)
    opt_g.zero_grad(set_to_none=True)
    loss_g.backward()
    norms[loss_name] = gradient_norm([p.grad for p in params])
    opt_g.step()
    discriminator.requires_grad_(True)
    with torch.no_grad():
        d_real = torch.sigmoid(real_logits.float()).mean()
        d_fake = torch.sigmoid(fake_logits.float()).mean()
        d_fake_g = torch.sigmoid(fake_logits_g.float()).mean()
    return torch.stack([loss_d.detach(), loss_g.detach(), d_real, d_fake, d_fake_g,
                        norms["non-saturating"].to(d_real), norms["minimax"].to(d_real)])


def load_images(data_dir: Path | None, split: str, device: torch.device) -> torch.Tensor:
    """The MNIST split as float32 (N, 1, 28, 28) in [-1, 1] on ``device``."""
    return dcgan.load_images(data_dir, split, device, DATASET)


def run(config: GANConfig) -> Path:
    """Train the GAN; returns the run directory. The run's checkpoint (:class:`genlab.engine.Run`)
    is written at every epoch end, every few minutes and on Ctrl-C or SIGTERM; ``--resume``
    continues from it exactly."""
    device = resolve_device(config.device)
    autocast = autocast_for(device, config.precision)  # may time GEMMs (global RNG): before seeding
    seed_everything(config.seed)
    generator, discriminator, opt_g, opt_d = build(config, device)
    with Run("gan", config, device, generator=generator, discriminator=discriminator, opt_g=opt_g,
             opt_d=opt_d) as run:
        data = load_images(config.data_dir, "train", device)[:config.subset]  # (60000, 1, 28, 28)
        n_data = data.shape[0]
        steps_per_epoch = n_data // config.batch_size  # full batches only
        probe_steps = steps_per_epoch if config.probe_steps is None else config.probe_steps
        fixed_z = torch.randn(200, config.latent_dim, generator=torch.Generator().manual_seed(config.seed + 1))
        epoch, batch, step = 0, 0, 0
        sums = torch.zeros(len(STEP_KEYS), dtype=torch.float64, device=device)  # the epoch's running sums
        resumed = run.resume()
        if resumed:
            epoch, batch, step = resumed["epoch"], resumed["batch"], resumed["step"]
            fixed_z, sums = resumed["fixed_z"].cpu(), resumed["epoch_sums"].to(device)
            run.dir.truncate_metrics(step, epoch)

        total_steps = config.epochs * steps_per_epoch
        if config.max_steps is not None:
            total_steps = min(total_steps, config.max_steps)
        bar = tqdm(total=total_steps, initial=step, unit="step", desc=f"gan {config.generator_loss}",
                   dynamic_ncols=True, disable=None)
        pending: list[torch.Tensor] = []

        def flush_steps() -> None:
            if pending:
                values = torch.stack(pending).cpu().tolist()
                first = step - len(values) + 1
                pending.clear()
                run.log_steps([{"step": first + i, **{k: v for k, v in zip(STEP_KEYS, r)
                                                      if math.isfinite(v) or k in ("loss_d", "loss_g")}}
                               for i, r in enumerate(values)], check=("loss_d", "loss_g"))

        def progress() -> dict:
            flush_steps()  # the metrics files never lag behind a checkpoint
            return {"batch": batch, "epoch_sums": sums, "fixed_z": fixed_z}

        try:
            while epoch < config.epochs and step < total_steps:
                order = torch.randperm(n_data, generator=torch.Generator().manual_seed(config.seed * 1000 + epoch))
                order = order.to(device)
                while batch < steps_per_epoch and step < total_steps:
                    idx = order[batch * config.batch_size:(batch + 1) * config.batch_size]
                    metrics = train_step(generator, discriminator, opt_g, opt_d, data[idx], autocast,
                                         config.generator_loss, probe=step < probe_steps)
                    pending.append(metrics)
                    sums += metrics.double()
                    batch += 1
                    step += 1
                    if step % config.log_every == 0:
                        flush_steps()
                        bar.update(config.log_every)
                        bar.set_postfix(epoch=epoch + 1, loss_d=f"{sums[0] / batch:.3f}",
                                        loss_g=f"{sums[1] / batch:.3f}")
                    run.step_done(step, epoch, progress)
                flush_steps()
                if batch < steps_per_epoch:  # stopped by --max-steps inside the epoch
                    break
                mean = dict(zip(STEP_KEYS, (sums / batch).tolist()))
                grad_key = PROBE_KEYS[config.generator_loss]
                run.dir.log_epoch({"epoch": epoch + 1, "loss_d": mean["loss_d"], "loss_g": mean["loss_g"],
                                   "d_real": mean["d_real"], "d_fake": mean["d_fake"], "grad_norm_g": mean[grad_key],
                                   "steps": step, "seconds": run.elapsed_s})
                epoch, batch = epoch + 1, 0
                sums = torch.zeros(len(STEP_KEYS), dtype=torch.float64, device=device)
                run.checkpoint(step, epoch, progress())
                tqdm.write(f"epoch {epoch}: D {mean['loss_d']:.3f}  G {mean['loss_g']:.3f}  D(x) {mean['d_real']:.3f}  "
                           f"D(G(z)) {mean['d_fake']:.3f}  |grad G| {mean[grad_key]:.3g}")
        finally:
            bar.close()
        run.checkpoint(step, epoch, progress())
        finish(run.dir, config, generator, fixed_z, device, run.elapsed_s)
    return run.path


# ---------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------

def read_steps(run_path: Path) -> list[dict]:
    """The per-step rows of a run (metrics/steps.jsonl)."""
    path = Path(run_path) / "metrics" / "steps.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line] if path.exists() else []


def plot_gradient_norms(steps: list[dict], path: Path, title: str) -> Path | None:
    """Top: generator gradient norms of both losses (log scale) over the probed steps;
    bottom: mean D(G(z)) in the generator step. Returns None without probed steps."""
    rows = [r for r in steps if "grad_norm_minimax" in r and "grad_norm_non_saturating" in r]
    if not rows:
        return None
    x = [r["step"] for r in rows]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(6.4, 5.6), sharex=True, height_ratios=(2, 1))
    for key, label in (("grad_norm_non_saturating", "non-saturating  -E[log D(G(z))]"),
                       ("grad_norm_minimax", "minimax  E[log(1 - D(G(z)))]")):
        top.plot(x, [r[key] for r in rows], lw=0.8, label=label)
    top.set_yscale("log")
    top.set_ylabel("||dL_G / dtheta||")
    top.set_title(title)
    top.grid(alpha=0.3)
    top.legend(fontsize=8)
    bottom.plot(x, [r["d_fake_g"] for r in rows], lw=0.8, color="k")
    bottom.set_ylim(0, 1)
    bottom.set_ylabel("mean D(G(z))")
    bottom.set_xlabel("optimiser step (both norms at the same parameters)")
    bottom.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def plot_run(run_dir: RunDir, config: GANConfig) -> None:
    """losses.png (per epoch, per step before an epoch ends), losses_steps.png, d_outputs.png
    and grad_norms.png."""
    figs = run_dir.path / "figures"
    rows, steps = run_dir.read_epochs(), read_steps(run_dir.path)
    name = config.generator_loss
    if steps:
        window = max(1, min(200, len(steps) // 10))
        plots.plot_curves([r["step"] for r in steps],
                          {"discriminator": plots.moving_average([r["loss_d"] for r in steps], window),
                           f"generator ({name})": plots.moving_average([r["loss_g"] for r in steps], window)},
                          figs / "losses_steps.png", "optimiser step", "loss (nats)",
                          f"GAN ({name}) losses per step (moving average over {window})")
        plot_gradient_norms(steps, figs / "grad_norms.png",
                            f"Generator gradient norms, trained with the {name} loss")
    source, unit = (rows, "epoch") if rows else (steps, "step")
    if not source:
        return
    x = [r[unit] for r in source]
    g_equilibrium = {"non-saturating": math.log(2), "minimax": -math.log(2)}[name]
    plots.plot_curves(x, {"discriminator": [r["loss_d"] for r in source],
                          f"generator ({name})": [r["loss_g"] for r in source]},
                      figs / "losses.png", unit, "loss (nats)", f"GAN ({name}) losses per {unit}",
                      hlines={"D at equilibrium: 2 log 2": 2 * math.log(2),
                              f"G at equilibrium: {g_equilibrium:+.3f}": g_equilibrium})
    plots.plot_curves(x, {"D(x)": [r["d_real"] for r in source], "D(G(z))": [r["d_fake"] for r in source]},
                      figs / "d_outputs.png", unit, "mean discriminator output",
                      f"Mean D(x) and D(G(z)) per {unit}", hlines={"1/2": 0.5})


def gradient_summary(steps: list[dict], first: int = 100) -> dict:
    """Means of the probed gradient norms and D(G(z)) over the first ``first`` steps and over
    all probed steps."""
    out = {}
    for label, rows in ((f"first_{first}_steps", steps[:first]), ("probed_steps", steps)):
        rows = [r for r in rows if "grad_norm_minimax" in r and "grad_norm_non_saturating" in r]
        if rows:
            out[label] = {key: float(np.mean([r[key] for r in rows]))
                          for key in ("grad_norm_non_saturating", "grad_norm_minimax", "d_fake_g")}
            out[label]["steps"] = len(rows)
    return out


def evaluate_generator(generator: Generator, device: torch.device, seed: int, n: int,
                       data_dir: Path | None = None) -> dict:
    """FID/KID/IS of ``n`` generated images against the 10,000 MNIST test images
    (genlab's MNIST domain classifier, see :mod:`genlab.quality`)."""
    return dcgan.evaluate_generator(generator, device, seed, n, data_dir, DATASET)


def finish(run_dir: RunDir, config: GANConfig, generator: Generator, fixed_z: torch.Tensor,
           device: torch.device, elapsed: float | None) -> dict:
    """Figures, the 10 x 20 sample grid, FID/KID/IS, metrics.json and summary.md."""
    plot_run(run_dir, config)
    samples = generate(generator, fixed_z.to(device)).numpy()  # (200, 28, 28) uint8
    plots.save_image_grid(samples, run_dir.path / "figures" / "samples_10x20.png", 10, 20,
                          title=f"GAN ({config.generator_loss}), MNIST, 200 samples")
    quality, eval_seconds = None, None
    if config.fid_samples > 0:
        start = time.time()
        quality = evaluate_generator(generator, device, config.seed, config.fid_samples, config.data_dir)
        quality.update(n_generated=config.fid_samples, n_real=10000)
        eval_seconds = time.time() - start
    epochs = run_dir.read_epochs()
    metrics = {"generator_loss": config.generator_loss, "final_epoch": epochs[-1] if epochs else None,
               "quality": quality, "gradients": gradient_summary(read_steps(run_dir.path))}
    run_dir.write_record(make_record(config.generator_loss, epochs, metrics, elapsed, eval_seconds,
                                     run_dir.figures(FIGURE_CAPTIONS)))
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


def compare_gradient_norms(run_paths: list[Path], path: Path, steps: int | None = None) -> Path:
    """One figure of the trained loss's generator gradient norm (log scale) and D(G(z)) per
    step, one line per run (e.g. a minimax and a non-saturating run), over the first
    ``steps`` steps (default: the probed ones)."""
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(6.4, 5.6), sharex=True, height_ratios=(2, 1))
    for run_path in run_paths:
        name = json.loads((Path(run_path) / "config.json").read_text())["generator_loss"]
        rows = [r for r in read_steps(run_path) if "grad_norm_minimax" in r and "grad_norm_non_saturating" in r]
        rows = rows[:steps] if steps else rows
        x = [r["step"] for r in rows]
        (line,) = top.plot(x, [r[PROBE_KEYS[name]] for r in rows], lw=0.8, label=f"trained with {name}")
        bottom.plot(x, [r["d_fake_g"] for r in rows], lw=0.8, color=line.get_color(), label=name)
    top.set_yscale("log")
    top.set_ylabel("||dL_G / dtheta|| of the trained loss")
    top.set_title("Generator gradient norm, first epoch, two runs")
    top.grid(alpha=0.3)
    top.legend(fontsize=8)
    bottom.set_ylim(0, 1)
    bottom.set_ylabel("mean D(G(z))")
    bottom.set_xlabel("optimiser step")
    bottom.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


# ---------------------------------------------------------------------------------------
# eval / sample / bench
# ---------------------------------------------------------------------------------------

def evaluate(run_path: Path) -> dict:
    """``genlab eval RUN_DIR``: FID/KID/IS on 10,000 samples, rewritten into metrics.json."""
    return evaluate_run(run_path, "gan", GANConfig, finish)


EXPERIMENT = Experiment(
    name="gan",
    summary="SPEC §2: non-saturating vs minimax GAN on MNIST, generator gradient norms, FID/KID",
    config=GANConfig,
    run=run,
    evaluate=evaluate,
    sample=sample,
)
