"""The DCGAN of SPEC §1 and its training loop, shared by the dcgan (§1) and gan (§2) experiments.

The architecture is the one of the TensorFlow DCGAN tutorial that the assignment follows
(Radford et al. 2016): a 100-d Gaussian latent, a generator of one dense and three
transposed-convolution layers, a discriminator of two strided convolutions with dropout.
The discriminator loss is binary cross-entropy on logits (Goodfellow et al. 2014, eq. 1), the
generator loss of §1 the non-saturating one (ibid., §3).

Beside the networks and the losses: the options both experiments take
(:class:`DCGANTrainingConfig`), the discriminator's half of a training step
(:func:`discriminator_step`), the epoch loop with its checkpointed progress (:class:`EpochLoop`),
fixed-noise sample grids, the loss figures, the FID/KID/IS evaluation, and ``genlab eval`` /
``genlab sample`` of a run (the two experiments' checkpoints hold the same generator).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from genlab import distributed, plots
from genlab.data import load_split
from genlab.engine import (EpochsConfig, Run, RunDir, cache_dir, config_from_dict, cpu_isa, machine_key, read_checkpoint,
                           resolve_device)
from genlab.errors import ConfigError
from genlab.layers import FastDropout, SampleNoise


@dataclass
class DCGANTrainingConfig(EpochsConfig):
    """Options of an experiment that trains SPEC §1's networks with Adam in epochs (dcgan, gan)."""

    epochs: int = 50
    """Passes over the 60,000 training images."""
    batch_size: int = 64
    """Minibatch size (the assignment's choices: 16, 32, 64)."""
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
    """auto (bf16 autocast where measured bf16 matrix products beat float32 ones), bf16 or fp32."""
    layout: str = "auto"
    """Memory layout of the discriminator's convolutions: auto (per CPU kind, see
    CHANNELS_LAST_BY_ISA), contiguous or channels_last. Changes speed, not the maths."""
    fid_samples: int = 10000
    """Generated images for FID/KID/IS at the end (0 skips the evaluation)."""
    log_every: int = 50
    """Optimiser steps between progress-bar updates and NaN checks."""
    subset: int | None = None
    """Train on the first N training images only (quick looks and tests)."""

    CONTINUABLE: ClassVar[tuple[str, ...]] = EpochsConfig.CONTINUABLE + ("fid_samples", "log_every")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.batch_size < 2:
            raise ConfigError(f"--batch-size must be >= 2 (batch norm), got {self.batch_size}")
        if self.layout not in ("auto", "contiguous", "channels_last"):
            raise ConfigError(f"--layout must be auto, contiguous or channels_last, got {self.layout!r}")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ConfigError(f"--precision must be auto, bf16 or fp32, got {self.precision!r}")
        if self.subset is not None and self.subset < self.batch_size:
            raise ConfigError(f"--subset must be >= --batch-size ({self.batch_size}), got {self.subset}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"--dropout must be in [0, 1), got {self.dropout}")


# ---------------------------------------------------------------------------------------
# Networks
# ---------------------------------------------------------------------------------------

class Generator(nn.Module):
    """z (N, latent_dim) float -> images (N, 1, 28, 28) in [-1, 1]. 2,305,472 parameters."""

    def __init__(self, latent_dim: int = 100, leaky_slope: float = 0.3):
        super().__init__()
        self.latent_dim = latent_dim
        self.project = nn.Linear(latent_dim, 7 * 7 * 256, bias=False)
        self.bn0 = nn.BatchNorm1d(7 * 7 * 256)
        # 'same' transposed convolutions: padding 2, output_padding 1 where the stride is 2.
        self.deconv1 = nn.ConvTranspose2d(256, 128, 5, stride=1, padding=2, bias=False)
        self.bn1 = nn.BatchNorm2d(128)
        self.deconv2 = nn.ConvTranspose2d(128, 64, 5, stride=2, padding=2, output_padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(64)
        self.deconv3 = nn.ConvTranspose2d(64, 1, 5, stride=2, padding=2, output_padding=1, bias=False)
        self.leaky_slope = leaky_slope

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        a = self.leaky_slope
        x = F.leaky_relu(self.bn0(self.project(z)), a)  # (N, 12544)
        x = x.view(-1, 256, 7, 7)  # (N, 256, 7, 7)
        x = F.leaky_relu(self.bn1(self.deconv1(x)), a)  # (N, 128, 7, 7)
        x = F.leaky_relu(self.bn2(self.deconv2(x)), a)  # (N, 64, 14, 14)
        return torch.tanh(self.deconv3(x))  # (N, 1, 28, 28)


class Discriminator(nn.Module):
    """images (N, 1, 28, 28) in [-1, 1] -> logits (N, 1). 212,865 parameters.

    ``channels_last``: names of the convolutions (``"conv1"``, ``"conv2"``) that run on
    channels-last (NHWC) inputs; the others run on contiguous (NCHW) ones. The layout changes
    which oneDNN kernel runs, never the maths; :func:`layout_for` picks it per CPU kind.
    Raises ValueError for another layer name.
    """

    def __init__(self, leaky_slope: float = 0.3, dropout: float = 0.3, channels_last: tuple[str, ...] = ()):
        super().__init__()
        unknown = set(channels_last) - {"conv1", "conv2"}
        if unknown:
            raise ValueError(f"unknown discriminator layers {sorted(unknown)} for channels_last; use conv1, conv2")
        self.channels_last = tuple(channels_last)
        self.net = nn.Sequential(
            nn.Conv2d(1, 64, 5, stride=2, padding=2), nn.LeakyReLU(leaky_slope), FastDropout(dropout),  # (N, 64, 14, 14)
            nn.Conv2d(64, 128, 5, stride=2, padding=2), nn.LeakyReLU(leaky_slope), FastDropout(dropout),  # (N, 128, 7, 7)
            nn.Flatten(),  # (N, 6272), in NCHW order whatever the layout
            nn.Linear(128 * 7 * 7, 1),  # (N, 1)
        )
        self._formats = {0: torch.channels_last if "conv1" in channels_last else torch.contiguous_format,
                         3: torch.channels_last if "conv2" in channels_last else torch.contiguous_format}

    def forward(self, x: torch.Tensor, noise: SampleNoise | None = None) -> torch.Tensor:
        """``noise``: per-sample streams for the dropout masks (its stream for the first dropout,
        the next for the second), or None for the global RNG."""
        if not self.channels_last and noise is None:
            return self.net(x)
        dropouts = 0
        for i, layer in enumerate(self.net):
            if i in self._formats:  # a convolution: its input in the chosen layout
                x = x.contiguous(memory_format=self._formats[i])
            if isinstance(layer, FastDropout):
                x = layer(x, None if noise is None else noise.with_stream(noise.stream + dropouts))
                dropouts += 1
            else:
                x = layer(x)
        return x


#: Convolutions run channels-last, per CPU kind (:func:`genlab.engine.cpu_isa`), read from
#: per-layer forward + backward timings (``genlab bench dcgan --layers``; docs/benchmarks.md,
#: "DCGAN layout per layer", where no layer gained from channels-last on the machines measured).
#: A machine whose measurement says otherwise adds its layers here or passes ``--layout``.
CHANNELS_LAST_BY_ISA: dict[str, tuple[str, ...]] = {"amx_bf16": (), "avx512_bf16": (), "none": ()}


def layout_for(device: torch.device, layout: str = "auto") -> tuple[str, ...]:
    """The discriminator layers to run channels-last: ``--layout`` auto (the table above on the
    CPU, none on CUDA), contiguous (none) or channels_last (both)."""
    if layout == "contiguous":
        return ()
    if layout == "channels_last":
        return ("conv1", "conv2")
    if device.type != "cpu":
        return ()
    return CHANNELS_LAST_BY_ISA.get(cpu_isa(), ())


def build(config: DCGANTrainingConfig, device: torch.device, capturable: bool = False):
    """(generator, discriminator, opt_g, opt_d) of a config on ``device``: fused Adam on CPU and
    CUDA, ``capturable`` for CUDA graph capture. Under torchrun the generator's batch norms are
    global-batch ones (:func:`genlab.distributed.sync_batch_norm`)."""
    generator = distributed.sync_batch_norm(Generator(config.latent_dim, config.leaky_slope).to(device), device)
    discriminator = Discriminator(config.leaky_slope, config.dropout, layout_for(device, config.layout)).to(device)
    betas = (config.beta1, config.beta2)
    fused = device.type in ("cpu", "cuda")
    opt_g = torch.optim.Adam(generator.parameters(), lr=config.lr, betas=betas, fused=fused, capturable=capturable)
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=config.lr, betas=betas, fused=fused, capturable=capturable)
    return generator, discriminator, opt_g, opt_d


@torch.no_grad()
def generate(generator: Generator, z: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """uint8 images (N, 28, 28) from latents z (N, latent_dim), generator in eval mode."""
    was_training = generator.training
    generator.eval()
    out = [generator(z[i:i + batch_size]).float().cpu() for i in range(0, len(z), batch_size)]
    generator.train(was_training)
    return ((torch.cat(out).clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).squeeze(1)


# ---------------------------------------------------------------------------------------
# Losses (Goodfellow et al. 2014)
# ---------------------------------------------------------------------------------------

def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """-E[log D(x)] - E[log(1 - D(G(z)))], D = sigmoid(logit): BCE with real -> 1, fake -> 0.

    Args: logits of shape (N, 1) (any float dtype). Returns: a scalar in nats (float32).
    The sum of the two means, as in the reference (2 log 2 = 1.386 at D = 1/2).
    """
    real_logits, fake_logits = real_logits.float(), fake_logits.float()
    return (F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
            + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits)))


def generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating generator loss -E[log D(G(z))] (Goodfellow et al. 2014, §3), nats.

    Args: fake logits (N, 1), any float dtype. Returns: a float32 scalar (log 2 at D = 1/2).
    """
    fake_logits = fake_logits.float()
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


# ---------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------

def discriminator_step(generator: nn.Module, discriminator: nn.Module, opt_d: torch.optim.Optimizer,
                       real: torch.Tensor, z: torch.Tensor, autocast, noise: SampleNoise | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(1) Update D: maximise log D(x) + log(1 - D(G(z))), real and fake in one forward.

    Args:
        real: images (N, 1, 28, 28) in [-1, 1]; z: latents (N, latent_dim).
        autocast: the precision's autocast context (:func:`genlab.engine.autocast_for`).
        noise: the dropout masks' per-sample streams for the 2N rows, or None (global RNG).

    Returns (fake (N, 1, 28, 28), attached to the generator's graph for its step; the D loss,
    detached, in nats; mean D(x); mean D(G(z))), the last three float32 scalars.
    """
    n = real.shape[0]
    with autocast:
        fake = generator(z)  # (N, 1, 28, 28)
        logits = discriminator(torch.cat([real, fake.detach().to(real.dtype)]), noise)  # (2N, 1)
        real_logits, fake_logits = logits[:n], logits[n:]
        loss_d = discriminator_loss(real_logits, fake_logits)
    opt_d.zero_grad(set_to_none=True)
    loss_d.backward()
    opt_d.step()
    with torch.no_grad():
        return (fake, loss_d.detach(), torch.sigmoid(real_logits.float()).mean(),
                torch.sigmoid(fake_logits.float()).mean())


#: The per-step metrics both experiments log first, and their labels in the epoch summary line.
EPOCH_KEYS = {"loss_d": "D", "loss_g": "G", "d_real": "D(x)", "d_fake": "D(G(z))"}


class EpochLoop:
    """The epoch loop of a Run (:class:`genlab.engine.Run`) over ``n_data`` images, resumable.

    Each epoch visits the images in the order of a permutation seeded by ``seed * 1000 + epoch``;
    the per-step metrics (a float tensor in the order of ``keys``, beginning with
    :data:`EPOCH_KEYS`) go to metrics/steps.jsonl (a non-finite value other than the losses, a
    metric not measured at that step, is left out of its row; a non-finite loss stops the run,
    :class:`genlab.engine.TrainingDiverged`) and their epoch means, with the ``epoch_extra``
    columns, to metrics/epochs.csv. A checkpoint is written at every epoch end, on the Run's
    interval and on a signal; its progress holds the batch within the epoch, the epoch's
    running sums and the fixed noise batch, so a resumed loop continues exactly.

    Creating the loop resumes the run when ``--resume`` says so (call it after every object the
    run holds is built); ``fixed_z`` is the (n_fixed, latent_dim) noise batch of the sample
    grids, drawn with seed + 1 (or the checkpoint's).
    """

    def __init__(self, run: Run, config: DCGANTrainingConfig, device: torch.device, keys: tuple[str, ...],
                 n_fixed: int):
        self.run, self.config, self.device, self.keys = run, config, device, keys
        self.fixed_z = torch.randn(n_fixed, config.latent_dim, generator=torch.Generator().manual_seed(config.seed + 1))
        self.epoch, self.batch, self.step = 0, 0, 0
        self.sums = torch.zeros(len(keys), dtype=torch.float64, device=device)  # the epoch's running sums
        self.pending: list[torch.Tensor] = []  # per-step metrics not yet written
        resumed = run.resume()
        if resumed:
            self.epoch, self.batch, self.step = resumed["epoch"], resumed["batch"], resumed["step"]
            self.fixed_z, self.sums = resumed["fixed_z"].cpu(), resumed["epoch_sums"].to(device)

    def flush_steps(self) -> None:
        if self.pending:
            values = torch.stack(self.pending).cpu().tolist()
            first = self.step - len(values) + 1
            self.pending.clear()
            self.run.log_steps([{"step": first + i, **{k: v for k, v in zip(self.keys, r)
                                                       if math.isfinite(v) or k in ("loss_d", "loss_g")}}
                                for i, r in enumerate(values)], check=("loss_d", "loss_g"))

    def progress(self) -> dict:
        self.flush_steps()  # the metrics files never lag behind a checkpoint
        return {"batch": self.batch, "epoch_sums": self.sums, "fixed_z": self.fixed_z}

    def train(self, n_data: int, steps_per_epoch: int, train_batch: Callable[[torch.Tensor, int], torch.Tensor],
              desc: str, epoch_extra: Callable[[dict], dict] | None = None,
              on_epoch_end: Callable[[int], None] | None = None) -> None:
        """Train until ``config.epochs`` epochs or ``--max-steps`` steps, then checkpoint.

        Args:
            train_batch: (indices of the batch's images (at most batch_size,) on the device,
                step before it) -> its metrics in the order of ``keys``.
            epoch_extra: the epoch means (a dict by key) -> extra columns of its epochs.csv row.
            on_epoch_end: called with the number of epochs done, before the epoch's checkpoint.
        """
        run, config, bs = self.run, self.config, self.config.batch_size
        total_steps = config.epochs * steps_per_epoch
        if config.max_steps is not None:
            total_steps = min(total_steps, config.max_steps)
        bar = tqdm(total=total_steps * bs, initial=self.step * bs, unit="img", unit_scale=True, desc=desc,
                   dynamic_ncols=True, disable=None if run.is_main else True)
        try:
            while self.epoch < config.epochs and self.step < total_steps:
                order = torch.randperm(n_data, generator=torch.Generator().manual_seed(config.seed * 1000 + self.epoch))
                order = order.to(self.device)
                while self.batch < steps_per_epoch and self.step < total_steps:
                    metrics = train_batch(order[self.batch * bs:(self.batch + 1) * bs], self.step)
                    self.pending.append(metrics)
                    self.sums += metrics.double()
                    self.batch += 1
                    self.step += 1
                    if self.step % config.log_every == 0:
                        self.flush_steps()
                        bar.update(config.log_every * bs)
                        bar.set_postfix(epoch=self.epoch + 1, loss_d=f"{self.sums[0] / self.batch:.3f}",
                                        loss_g=f"{self.sums[1] / self.batch:.3f}")
                    run.step_done(self.step, self.epoch, self.progress)
                self.flush_steps()
                if self.batch < steps_per_epoch:  # stopped by --max-steps inside the epoch
                    break
                mean = dict(zip(self.keys, (self.sums / self.batch).tolist()))
                extra = epoch_extra(mean) if epoch_extra else {}
                run.dir.log_epoch({"epoch": self.epoch + 1, **{k: mean[k] for k in EPOCH_KEYS}, **extra,
                                   "steps": self.step, "seconds": run.elapsed_s})
                self.epoch, self.batch = self.epoch + 1, 0
                self.sums = torch.zeros(len(self.keys), dtype=torch.float64, device=self.device)
                if on_epoch_end is not None:
                    on_epoch_end(self.epoch)
                run.checkpoint(self.step, self.epoch, self.progress())
                if run.is_main:
                    tqdm.write(f"epoch {self.epoch}: " + "  ".join(
                        [f"{label} {mean[k]:.3f}" for k, label in EPOCH_KEYS.items()]
                        + [f"{k} {v:.3g}" for k, v in extra.items()]))
        finally:
            bar.close()
        run.checkpoint(self.step, self.epoch, self.progress())


# ---------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------

def save_grid(generator: Generator, z: torch.Tensor, device: torch.device, path: Path, rows: int, cols: int,
              title: str) -> np.ndarray:
    """The generator's images at the fixed noise z (rows * cols, latent_dim), tiled into ``path``
    (a PNG); returns them, uint8 (rows * cols, 28, 28)."""
    images = generate(generator, z.to(device)).numpy()
    plots.save_image_grid(images, path, rows, cols, title=title)
    return images


def read_steps(run_path: Path) -> list[dict]:
    """The per-step rows of a run (metrics/steps.jsonl; [] before the first)."""
    path = Path(run_path) / "metrics" / "steps.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line] if path.exists() else []


def plot_losses(run_dir: RunDir, title: str, generator_label: str, g_equilibrium: float,
                reference: dict[str, dict[str, dict[int, float]]] | None = None) -> None:
    """losses_steps.png (per-step losses, moving average), losses.png and d_outputs.png (per epoch;
    per step before the first epoch ends), with the equilibrium values D = 1/2 gives: 2 log 2 for
    the discriminator loss, ``g_equilibrium`` for the generator's.

    ``reference``: per-epoch reference points of the two figures (``"losses"`` keyed by
    "discriminator" and "generator", ``"d_outputs"`` by "D(x)" and "D(G(z))"), drawn on the
    per-epoch figures only.
    """
    figs = run_dir.path / "figures"
    rows, steps = run_dir.read_epochs(), read_steps(run_dir.path)
    if steps:
        window = max(1, min(200, len(steps) // 10))
        plots.plot_curves([r["step"] for r in steps],
                          {"discriminator": plots.moving_average([r["loss_d"] for r in steps], window),
                           generator_label: plots.moving_average([r["loss_g"] for r in steps], window)},
                          figs / "losses_steps.png", "optimiser step", "loss (nats)",
                          f"{title} losses per step (moving average over {window})")
    source, unit = (rows, "epoch") if rows else (steps, "step")
    if not source:
        return
    reference = (reference or {}) if rows else {}
    x = [r[unit] for r in source]
    plots.plot_curves(x, {"discriminator": [r["loss_d"] for r in source],
                          generator_label: [r["loss_g"] for r in source]},
                      figs / "losses.png", unit, "loss (nats)", f"{title} losses per {unit}",
                      reference=reference.get("losses"),
                      hlines={"D at equilibrium: 2 log 2": 2 * math.log(2),
                              f"G at equilibrium: {g_equilibrium:+.3f}": g_equilibrium})
    plots.plot_curves(x, {"D(x)": [r["d_real"] for r in source], "D(G(z))": [r["d_fake"] for r in source]},
                      figs / "d_outputs.png", unit, "mean discriminator output",
                      f"Mean D(x) and D(G(z)) per {unit}", reference=reference.get("d_outputs"),
                      hlines={"1/2": 0.5})


@functools.lru_cache(maxsize=2)
def fid_reference_features(dataset: str, data_dir: Path | None, device: torch.device) -> torch.Tensor:
    """float64 (10000, 128): the domain classifier's features (:func:`genlab.quality.classifier_outputs`)
    of the 10,000 test images of ``dataset`` on ``device``, computed once per process: every FID
    evaluation of a run (``--eval-epochs``) scores against the same ones. On the CPU they are also
    kept in :func:`genlab.engine.cache_dir` (``fid_features_<dataset>_<key>.pt``) and read back by
    later runs and ``genlab eval``; the key hashes the classifier's weights, the images, the thread
    count and :func:`genlab.engine.machine_key`, everything the computed floats depend on, so a read
    gives the floats a computation would (tested). An unreadable file is computed again and rewritten.
    Building the classifier draws from the global RNG: callers inside a training run call it under
    ``torch.random.fork_rng``."""
    from genlab.quality import classifier_outputs, load_classifier, weights_path

    images = load_split(dataset, "test", data_dir)[0]
    file = None
    if device.type == "cpu":
        key = hashlib.sha256(weights_path(dataset).read_bytes() + images.tobytes())
        key.update(f"{images.shape}|threads {torch.get_num_threads()}|{machine_key(device)}".encode())
        file = cache_dir() / f"fid_features_{dataset}_{key.hexdigest()[:20]}.pt"
        try:
            return torch.load(file, weights_only=True)
        except Exception:  # noqa: BLE001 - absent, truncated or not a tensor file: compute it again
            pass
    real = torch.from_numpy(images.copy()).unsqueeze(1)  # (10000, 1, 28, 28)
    features = classifier_outputs(load_classifier(dataset)[0].to(device), real.to(device))[0]
    if file is not None:
        try:
            file.parent.mkdir(parents=True, exist_ok=True)
            tmp = file.with_suffix(f".{os.getpid()}.tmp")
            torch.save(features, tmp)
            os.replace(tmp, file)  # atomic: a process reading it sees the whole file or none
        except OSError:  # no writable cache directory: this process keeps its copy
            pass
    return features


def evaluate_quality(generator: Generator, config: DCGANTrainingConfig, device: torch.device, dataset: str
                     ) -> tuple[dict | None, float | None]:
    """FID/KID/IS of ``config.fid_samples`` generated images (latents seeded by seed + 2) against the
    10,000 test images of ``dataset``, with the dataset's domain classifier as extractor
    (:func:`genlab.quality.image_quality`; the counts added), and the seconds it took; (None,
    None) when ``fid_samples`` is 0. Every global RNG (torch's CPU one and the device's) is left as
    it was found, so evaluating during training leaves the training run unchanged."""
    from genlab.quality import image_quality

    if config.fid_samples == 0:
        return None, None
    start = time.time()
    z = torch.randn(config.fid_samples, generator.latent_dim, generator=torch.Generator().manual_seed(config.seed + 2))
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):  # building the classifier draws
        real = fid_reference_features(dataset, config.data_dir, device)
        quality = image_quality(generate(generator, z.to(device)).unsqueeze(1), None, dataset, device=device,
                                real_features=real)
    quality.update(n_generated=config.fid_samples, n_real=10000)
    return quality, time.time() - start


def restore_generator(run_path: Path, device: torch.device) -> tuple[dict, Generator]:
    """The last checkpoint of a run (dcgan or gan: same generator) and its generator on ``device``.

    Returns (checkpoint dict, :class:`Generator` with the saved weights, in training mode).
    Raises GenlabError as :func:`genlab.engine.read_checkpoint` does (previous.pt when last.pt is
    unreadable), or for a checkpoint of another schema or of neither experiment.
    """
    saved = json.loads((Path(run_path) / "config.json").read_text()).get("experiment")
    ckpt = read_checkpoint(run_path, "gan" if saved == "gan" else "dcgan", device)  # the two share the generator
    cfg = ckpt["config"]
    generator = Generator(cfg["latent_dim"], cfg["leaky_slope"]).to(device)
    generator.load_state_dict(ckpt["states"]["generator"])
    return ckpt, generator


def evaluate_run(run_path: Path, experiment: str, config_cls: type, finish_fn) -> dict:
    """``genlab eval`` of a dcgan or gan run: restore its generator and config from the last
    checkpoint, then ``finish_fn(run_dir, config, generator, fixed_z, device, elapsed)``, which
    writes figures, metrics.json and summary.md and returns the metrics. FID/KID/IS are
    computed on the run's ``fid_samples`` images, 10,000 where the run skipped them.
    """
    device = resolve_device("auto")
    ckpt, generator = restore_generator(run_path, device)
    config = config_from_dict(config_cls, ckpt["config"], out=Path(run_path),
                              resume=True)
    if config.fid_samples == 0:
        config.fid_samples = 10000
    run_dir = RunDir(experiment, config, device)
    metrics = finish_fn(run_dir, config, generator, ckpt["progress"]["fixed_z"], device, ckpt["elapsed_s"])
    run_dir.close()
    return metrics


def sample(run_path: Path, n: int, seed: int = 0) -> np.ndarray:
    """``genlab sample``: ``n`` images from a run's generator (dcgan or gan), uint8 (n, 28, 28)."""
    device = resolve_device("auto")
    _, generator = restore_generator(run_path, device)
    z = torch.randn(n, generator.latent_dim, generator=torch.Generator().manual_seed(seed)).to(device)
    return generate(generator, z).numpy()
