"""SPEC §1: a DCGAN (Radford et al. 2016) on FashionMNIST.

The architecture is the one of the TensorFlow DCGAN tutorial that the assignment follows:
a 100-d Gaussian latent, a generator of one dense and three transposed-convolution layers,
a discriminator of two strided convolutions with dropout, binary cross-entropy on logits
(Goodfellow et al. 2014, eq. 1) and the non-saturating generator loss (ibid., §3).

    genlab run dcgan                       # 50 epochs, batch 64, seed 42
    genlab run dcgan --epochs 1 --max-steps 20 --out /tmp/smoke
    torchrun --nproc-per-node 2 -m genlab run dcgan      # data-parallel: 2 processes, 32 images each

Data-parallel (``torchrun``, :mod:`genlab.distributed`): the global batch stays ``--batch-size``,
each of the W processes trains on batch / W images of it (the next contiguous slice of the
epoch's permutation), ``DistributedDataParallel`` averages the gradients, and the generator's
batch norms use the statistics of the global batch (``nn.SyncBatchNorm`` on CUDA,
:class:`genlab.distributed.AllReduceBatchNorm` on the CPU, where SyncBatchNorm has no kernels),
so that a step is the one-process step up to the order of floating-point sums. The random numbers
(z, dropout masks) are drawn per sample (``--noise per-sample``, :class:`genlab.layers.SampleNoise`),
keyed by the sample's place in the global batch, so any W draws the same ones;
``genlab run dcgan --noise per-sample`` is the one-process run that W processes reproduce.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from genlab import plots
from genlab.data import load_split
from genlab import distributed
from genlab.engine import (EpochsConfig, Run, RunDir, autocast_for, check_checkpoint, compute_dtype,
                           config_from_dict, load_checkpoint, resolve_device, rng_state, seed_everything,
                           set_rng_state)
from genlab.errors import ConfigError
from genlab.experiments import Experiment
from genlab.layers import FastDropout, SampleNoise
from genlab.quality import quality_metrics
from genlab.record import Figure, Metric, Record, Reference, Table

DATASET = "fashion-mnist"
# SPEC §1 reference, "a correct PyTorch solution, batch 64, seed 42": epoch -> (D loss, G loss).
REFERENCE_LOSSES = {1: (0.594, 2.584), 10: (0.805, 1.791), 30: (1.104, 1.185), 50: (1.222, 0.991)}
REFERENCE_FINAL_D = {"d_real": 0.58, "d_fake": 0.47}


@dataclass
class DCGANConfig(EpochsConfig):
    """SPEC §1 defaults."""

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
    grid_epochs: tuple[int, ...] = (10, 30, 50)
    """Epochs after which the fixed-noise grid is saved (the last epoch always is)."""
    precision: str = "auto"
    """auto (bf16 autocast where measured bf16 matrix products beat float32 ones), bf16 or fp32."""
    layout: str = "auto"
    """Memory layout of the discriminator's convolutions: auto (per CPU kind, see
    CHANNELS_LAST_BY_ISA), contiguous or channels_last. Changes speed, not the maths."""
    fid_samples: int = 10000
    """Generated images for FID/KID/IS at the end (0 skips the evaluation)."""
    log_every: int = 50
    """Optimiser steps between progress-bar and NaN checks."""
    subset: int | None = None
    """Train on the first N training images only (quick looks and tests)."""
    cuda_graph: bool = False
    """Replay the training step as captured CUDA graphs (CUDA only; not yet timed on a GPU, see
    GraphedTrainStep)."""
    noise: str = "auto"
    """Where z and the dropout masks come from: stream (torch's global RNG, one draw per batch),
    per-sample (each sample's own generator, keyed by seed, step and its place in the global batch,
    so any number of torchrun processes draws the same numbers; see SampleNoise), or auto
    (stream in one process, per-sample under torchrun)."""

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
        if self.noise not in ("auto", "stream", "per-sample"):
            raise ConfigError(f"--noise must be auto, stream or per-sample, got {self.noise!r}")
        if self.cuda_graph and self.noise == "per-sample":
            raise ConfigError("--cuda-graph replays the global RNG's draws; it cannot use --noise per-sample")


# ---------------------------------------------------------------------------------------
# Models
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
#: "DCGAN layout per layer"). On the machines measured, no layer gains beyond noise from
#: channels-last (Zen 4 AVX512-BF16; Sapphire Rapids AMX at 2 threads: conv2 41.5 vs 42.2 ms),
#: and the whole AMX step was slower with conv2 channels-last, so every entry is contiguous.
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
    from genlab.engine import cpu_isa

    return CHANNELS_LAST_BY_ISA.get(cpu_isa(), ())


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
    """Non-saturating generator loss -E[log D(G(z))] (Goodfellow et al. 2014, §3), nats."""
    fake_logits = fake_logits.float()
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


# ---------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------

#: Stream ids of a step's per-sample draws (:class:`SampleNoise`): z, then the two dropout layers
#: of the discriminator step, then those of the generator step.
NOISE_Z, NOISE_D_STEP, NOISE_G_STEP = 0, 1, 3


def train_step(generator: Generator, discriminator: Discriminator, opt_g: torch.optim.Optimizer,
               opt_d: torch.optim.Optimizer, real: torch.Tensor, autocast,
               noise: SampleNoise | None = None) -> torch.Tensor:
    """One alternating DCGAN step on a batch ``real`` (N, 1, 28, 28) in [-1, 1].

    Returns a float32 tensor (4,): D loss, G loss, mean D(x), mean D(G(z)) (both measured
    in the discriminator step). One generator forward per step: the fake batch of the
    discriminator step is reused for the generator step.

    ``noise``: None draws z and the dropout masks from the global RNG; a :class:`SampleNoise`
    whose ``rows`` are the places of ``real``'s images in the global batch (span: twice the
    global batch; real images take rows [0, B), their fakes [B, 2B)) draws them per sample.
    ``generator`` and ``discriminator`` may be ``DistributedDataParallel`` wrappers: the
    discriminator step runs through the wrapper (its gradients are averaged over the ranks), the
    generator step through the bare discriminator, which is frozen there (its parameters get
    no gradient, so its wrapper expects no reduction), while the generator's wrapper, whose
    forward ran once, averages the generator's gradients in that step's backward.
    """
    n = real.shape[0]
    g_module, d_module = distributed.unwrap(generator), distributed.unwrap(discriminator)
    d_noise = g_noise = None
    if noise is None:
        z = torch.randn(n, g_module.latent_dim, device=real.device)
    else:
        z = noise.with_stream(NOISE_Z).normal(g_module.latent_dim).to(real.device)  # (N, latent_dim)
        fake_rows = tuple(noise.span // 2 + r for r in noise.rows)
        d_noise = noise.with_stream(NOISE_D_STEP).with_rows(noise.rows + fake_rows)
        g_noise = noise.with_stream(NOISE_G_STEP).with_rows(fake_rows)
    # (1) Update D: maximise log D(x) + log(1 - D(G(z))). Real and fake in one forward.
    with autocast:
        fake = generator(z)  # (N, 1, 28, 28)
        logits = discriminator(torch.cat([real, fake.detach().to(real.dtype)]), d_noise)  # (2N, 1)
        real_logits, fake_logits = logits[:n], logits[n:]
        loss_d = discriminator_loss(real_logits, fake_logits)
    opt_d.zero_grad(set_to_none=True)
    loss_d.backward()
    opt_d.step()
    # (2) Update G: maximise log D(G(z)) (non-saturating), D's parameters frozen.
    d_module.requires_grad_(False)
    with autocast:
        loss_g = generator_loss(d_module(fake, g_noise))
    opt_g.zero_grad(set_to_none=True)
    loss_g.backward()
    opt_g.step()
    d_module.requires_grad_(True)
    with torch.no_grad():
        d_real = torch.sigmoid(real_logits.float()).mean()
        d_fake = torch.sigmoid(fake_logits.float()).mean()
    return torch.stack([loss_d.detach(), loss_g.detach(), d_real, d_fake])


def _optimizer_state_copy(opt: torch.optim.Optimizer) -> dict:
    """A copy of ``opt.state`` keyed by the same parameters (``copy.deepcopy`` would copy the keys too)."""
    return {param: {key: value.clone() if torch.is_tensor(value) else copy.deepcopy(value)
                    for key, value in state.items()} for param, state in opt.state.items()}


def _restore_optimizer_state_in_place(opt: torch.optim.Optimizer, before: dict) -> None:
    """Put ``opt``'s per-parameter state back to ``before`` (from :func:`_optimizer_state_copy`) without
    replacing its tensors: values copied in, or zeroed (Adam's lazy initial state) for a
    parameter that had no state yet. A graph captured afterwards then updates tensors that
    already exist; state created during capture would be re-initialised at every replay."""
    for param, state in opt.state.items():
        for key, value in state.items():
            if torch.is_tensor(value):
                if param in before:
                    value.copy_(before[param][key])
                else:
                    value.zero_()


class GraphedTrainStep:
    """:func:`train_step` captured as CUDA graphs and replayed (``--cuda-graph``; CUDA only).

    At batch 64 a DCGAN step is a few hundred small kernels, and on a large GPU their launch
    cost rather than their arithmetic sets the pace; replaying a captured graph launches them
    all at once (PyTorch docs, "CUDA Graphs", whole-network capture). What capture needs, done
    here: one static input buffer and one graph per batch shape (the full batch and the epoch's
    last, partial one); Adam with ``capturable=True`` (:func:`build`); autocast with
    ``cache_enabled=False``; a few warm-up steps on a side stream before capture (they also
    create Adam's state, which must exist before capture), after which the models, the
    optimisers' state (in place) and the RNG are restored, so the warm-up leaves no trace and a
    replayed run follows the eager one (CUDA graphs draw their random numbers from the same
    Philox offsets as eager kernels).

    Not timed yet: no GPU has been lent to this project's sessions, so ``--cuda-graph`` stays
    off by default until a GPU run has measured it and ``tests/test_dcgan_run.py`` has checked it
    against the eager step there.

    Args:
        generator, discriminator, opt_g, opt_d: as for :func:`train_step`, on one CUDA device.
        shapes: the batch shapes to capture, each (N, 1, 28, 28).
        precision: auto, bf16 or fp32, as ``--precision``.
        warmup: eager steps per shape before capture.

    Calling it with a batch ``real`` of a captured shape returns the (4,) metrics of
    :func:`train_step` (a fresh tensor). Raises ValueError off CUDA and KeyError for a batch
    shape that was not captured.
    """

    def __init__(self, generator: Generator, discriminator: Discriminator, opt_g: torch.optim.Optimizer,
                 opt_d: torch.optim.Optimizer, shapes: list[tuple[int, ...]], precision: str, warmup: int = 3):
        device = next(generator.parameters()).device
        if device.type != "cuda":
            raise ValueError(f"CUDA graphs need the models on a CUDA device, not {device}; use --device cuda")
        self.step_args = (generator, discriminator, opt_g, opt_d)  # train_step's first four arguments
        bf16 = compute_dtype(device, precision) == torch.bfloat16
        autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16, cache_enabled=False)
        self.inputs = {tuple(shape): torch.zeros(shape, device=device) for shape in shapes}

        saved_models = [copy.deepcopy(m.state_dict()) for m in (generator, discriminator)]
        saved_optim = [_optimizer_state_copy(opt) for opt in (opt_g, opt_d)]
        saved_rng = rng_state()
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for real in self.inputs.values():
                for _ in range(warmup):
                    train_step(*self.step_args, real, autocast)
        torch.cuda.current_stream(device).wait_stream(side)
        for m, state in zip((generator, discriminator), saved_models):
            m.load_state_dict(state)  # copies in place
        for opt, before in zip((opt_g, opt_d), saved_optim):
            _restore_optimizer_state_in_place(opt, before)
        set_rng_state(saved_rng)
        generator.zero_grad(set_to_none=True)
        discriminator.zero_grad(set_to_none=True)

        self.graphs: dict[tuple[int, ...], torch.cuda.CUDAGraph] = {}
        self.outputs: dict[tuple[int, ...], torch.Tensor] = {}
        for shape, real in self.inputs.items():
            self.graphs[shape] = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graphs[shape]):
                self.outputs[shape] = train_step(*self.step_args, real, autocast)

    def __call__(self, real: torch.Tensor) -> torch.Tensor:
        shape = tuple(real.shape)
        self.inputs[shape].copy_(real)
        self.graphs[shape].replay()
        return self.outputs[shape].clone()


def build(config: DCGANConfig, device: torch.device, capturable: bool = False):
    """Models and optimisers of a config, on ``device``; ``capturable`` Adam for CUDA graph capture.
    Under torchrun the generator's batch norms are global-batch ones (:func:`genlab.distributed.sync_batch_norm`)."""
    generator = distributed.sync_batch_norm(Generator(config.latent_dim, config.leaky_slope).to(device), device)
    discriminator = Discriminator(config.leaky_slope, config.dropout, layout_for(device, config.layout)).to(device)
    betas = (config.beta1, config.beta2)
    fused = device.type in ("cpu", "cuda")
    opt_g = torch.optim.Adam(generator.parameters(), lr=config.lr, betas=betas, fused=fused, capturable=capturable)
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=config.lr, betas=betas, fused=fused, capturable=capturable)
    return generator, discriminator, opt_g, opt_d


def load_images(data_dir: Path | None, split: str, device: torch.device, dataset: str = DATASET) -> torch.Tensor:
    """The split of ``dataset`` (FashionMNIST by default) as one float32 tensor (N, 1, 28, 28)
    in [-1, 1] on ``device``."""
    images, _ = load_split(dataset, split, data_dir)
    return torch.from_numpy(images.copy()).to(device).unsqueeze(1).float().div_(127.5).sub_(1.0)


@torch.no_grad()
def generate(generator: Generator, z: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """uint8 images (N, 28, 28) from latents z (N, latent_dim), generator in eval mode."""
    was_training = generator.training
    generator.eval()
    out = [generator(z[i:i + batch_size]).float().cpu() for i in range(0, len(z), batch_size)]
    generator.train(was_training)
    return ((torch.cat(out).clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).squeeze(1)


def run(config: DCGANConfig) -> Path:
    """Train the DCGAN; returns the run directory. See the module docstring.

    The run's checkpoint (:class:`genlab.engine.Run`) is written at every epoch end, every few
    minutes, and on Ctrl-C or SIGTERM; its progress holds the batch within the epoch, the
    epoch's running metric sums and the fixed noise batch, so a resumed run continues exactly.

    Under ``torchrun`` with W processes (see the module docstring), rank r trains on images
    [r B/W, (r+1) B/W) of each global batch of B; the logged metrics are the means over the
    ranks, i.e. over the global batch. An epoch's last, partial batch of b images is trained as
    its first b - (b mod W) images (at most W - 1 images an epoch are left out; none in one process).

    Raises:
        ConfigError: ``--batch-size`` not a multiple of the number of processes (naming both);
            ``--noise stream`` or ``--cuda-graph`` under torchrun; ``--cuda-graph`` off CUDA.
    """
    device = distributed.init(resolve_device(config.device))  # under torchrun: joins; cuda:LOCAL_RANK on GPUs
    world = distributed.World.current()
    if config.cuda_graph and device.type != "cuda":
        raise ConfigError(f"--cuda-graph needs a CUDA device, and this run is on {device}: drop --cuda-graph "
                          f"or use --device cuda")
    if world.size > 1:
        if config.batch_size % world.size:
            raise ConfigError(f"--batch-size {config.batch_size} does not split over {world.size} processes: each "
                              f"process trains on batch / processes images; use a multiple of {world.size}")
        if config.noise == "stream" or config.cuda_graph:
            raise ConfigError(f"{'--cuda-graph' if config.cuda_graph else '--noise stream'} draws from each "
                              f"process's own RNG, so {world.size} processes would not train the one-process "
                              f"run; use --noise per-sample (or auto)")
    per_sample = config.noise == "per-sample" or (config.noise == "auto" and world.size > 1)
    autocast = autocast_for(device, config.precision)  # may time GEMMs (global RNG): before seeding
    seed_everything(config.seed)
    generator, discriminator, opt_g, opt_d = build(config, device, capturable=config.cuda_graph)
    with Run("dcgan", config, device, generator=generator, discriminator=discriminator, opt_g=opt_g,
             opt_d=opt_d) as run:
        data = load_images(config.data_dir, "train", device)[:config.subset]  # (60000, 1, 28, 28)
        n_data = data.shape[0]
        global_batch, local_batch = config.batch_size, config.batch_size // world.size
        # the epoch's last, partial batch is trained when it has at least one image per process
        steps_per_epoch = n_data // global_batch + (1 if n_data % global_batch >= world.size else 0)
        # DDP averages gradients over the ranks at each backward. The generator's running batch-norm
        # statistics come from all-reduced batch statistics, hence equal everywhere: no broadcast at each forward.
        g_train = distributed.data_parallel(generator, device, forward_sync_buffers=False)
        d_train = distributed.data_parallel(discriminator, device)
        fixed_z = torch.randn(64, config.latent_dim, generator=torch.Generator().manual_seed(config.seed + 1))
        epoch, batch, step = 0, 0, 0
        sums = torch.zeros(4, dtype=torch.float64, device=device)  # the epoch's running sums of the step metrics
        resumed = run.resume()
        if resumed:
            epoch, batch, step = resumed["epoch"], resumed["batch"], resumed["step"]
            fixed_z, sums = resumed["fixed_z"].cpu(), resumed["epoch_sums"].to(device)
            run.dir.truncate_metrics(step, epoch)

        if config.cuda_graph:
            shapes = [(config.batch_size, 1, 28, 28)] + ([(n_data % config.batch_size, 1, 28, 28)]
                                                         if n_data % config.batch_size else [])
            step_fn = GraphedTrainStep(generator, discriminator, opt_g, opt_d, shapes, config.precision)
        else:
            def step_fn(real: torch.Tensor, noise: SampleNoise | None = None) -> torch.Tensor:
                return train_step(g_train, d_train, opt_g, opt_d, real, autocast, noise)

        pending: list[torch.Tensor] = []  # per-step metrics not yet written

        def flush_steps() -> None:
            if pending:
                values = torch.stack(pending).cpu().tolist()
                first = step - len(values) + 1
                pending.clear()
                run.log_steps([{"step": first + i, "loss_d": r[0], "loss_g": r[1], "d_real": r[2], "d_fake": r[3]}
                               for i, r in enumerate(values)], check=("loss_d", "loss_g"))

        def progress() -> dict:
            flush_steps()  # the metrics files never lag behind a checkpoint
            return {"batch": batch, "epoch_sums": sums, "fixed_z": fixed_z}

        total_steps = config.epochs * steps_per_epoch
        if config.max_steps is not None:
            total_steps = min(total_steps, config.max_steps)
        bar = tqdm(total=total_steps * config.batch_size, initial=step * config.batch_size, unit="img",
                   unit_scale=True, desc="dcgan", dynamic_ncols=True, disable=None if run.is_main else True)
        try:
            while epoch < config.epochs and step < total_steps:
                order = torch.randperm(n_data, generator=torch.Generator().manual_seed(config.seed * 1000 + epoch))
                order = order.to(device)
                while batch < steps_per_epoch and step < total_steps:
                    idx = order[batch * global_batch:(batch + 1) * global_batch]  # the global batch
                    n_local = min(local_batch, len(idx) // world.size)
                    first = world.rank * n_local  # this rank's rows in the global batch
                    noise = (SampleNoise(config.seed, step, tuple(range(first, first + n_local)), 2 * global_batch)
                             if per_sample else None)
                    if per_sample or world.size > 1:
                        metrics = distributed.all_mean(step_fn(data[idx[first:first + n_local]], noise), world)
                    else:
                        metrics = step_fn(data[idx])
                    pending.append(metrics)
                    sums += metrics.double()
                    batch += 1
                    step += 1
                    if step % config.log_every == 0:
                        flush_steps()
                        bar.update(config.log_every * config.batch_size)
                        bar.set_postfix(epoch=epoch + 1, loss_d=f"{sums[0] / batch:.3f}",
                                        loss_g=f"{sums[1] / batch:.3f}")
                    run.step_done(step, epoch, progress)
                flush_steps()
                if batch < steps_per_epoch:  # stopped by --max-steps inside the epoch
                    break
                mean = (sums / batch).tolist()
                run.dir.log_epoch({"epoch": epoch + 1, "loss_d": mean[0], "loss_g": mean[1], "d_real": mean[2],
                                   "d_fake": mean[3], "steps": step, "seconds": run.elapsed_s})
                epoch, batch = epoch + 1, 0
                sums = torch.zeros(4, dtype=torch.float64, device=device)
                if run.is_main and (epoch in config.grid_epochs or epoch == config.epochs):
                    grid = generate(generator, fixed_z.to(device)).numpy()  # (64, 28, 28) uint8
                    np.save(run.path / "figures" / f"grid_epoch{epoch:03d}.npy", grid)
                    plots.save_image_grid(grid, run.path / "figures" / f"grid_epoch{epoch:03d}.png", 8, 8,
                                          title=f"DCGAN, FashionMNIST, epoch {epoch}")
                run.checkpoint(step, epoch, progress())
                if run.is_main:
                    tqdm.write(f"epoch {epoch}: D {mean[0]:.3f}  G {mean[1]:.3f}  D(x) {mean[2]:.3f}  "
                               f"D(G(z)) {mean[3]:.3f}")
        finally:
            bar.close()
        run.checkpoint(step, epoch, progress())
        if run.is_main:  # figures and FID/KID: one process's work
            finish(run.dir, config, generator, fixed_z, device, run.elapsed_s)
    return run.path


# ---------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------

def _read_steps(run_dir: RunDir) -> list[dict]:
    path = run_dir.path / "metrics" / "steps.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line] if path.exists() else []


def plot_run(run_dir: RunDir) -> list[Path]:
    """losses.png and d_outputs.png per epoch (per step before the first epoch ends), and
    losses_steps.png: per-step losses with a moving average."""
    figs = run_dir.path / "figures"
    rows, steps = run_dir.read_epochs(), _read_steps(run_dir)
    out = []
    if steps:
        x = [r["step"] for r in steps]
        window = max(1, min(200, len(steps) // 10))
        out.append(plots.plot_curves(
            x, {"discriminator": plots.moving_average([r["loss_d"] for r in steps], window),
                "generator": plots.moving_average([r["loss_g"] for r in steps], window)},
            figs / "losses_steps.png", "optimiser step", "loss (nats)",
            f"DCGAN losses per step (moving average over {window})"))
    if rows:
        x, unit, source = [r["epoch"] for r in rows], "epoch", rows
    elif steps:
        x, unit, source = [r["step"] for r in steps], "step", steps
    else:
        return out
    ref = rows and {"discriminator": {e: v[0] for e, v in REFERENCE_LOSSES.items()},
                    "generator": {e: v[1] for e, v in REFERENCE_LOSSES.items()}}
    out.append(plots.plot_curves(
        x, {"discriminator": [r["loss_d"] for r in source], "generator": [r["loss_g"] for r in source]},
        figs / "losses.png", unit, "loss (nats)", f"DCGAN losses per {unit}", reference=ref or None,
        hlines={"D at equilibrium: 2 log 2": 2 * math.log(2), "G at equilibrium: log 2": math.log(2)}))
    ref = rows and {"D(x)": {50: REFERENCE_FINAL_D["d_real"]}, "D(G(z))": {50: REFERENCE_FINAL_D["d_fake"]}}
    out.append(plots.plot_curves(
        x, {"D(x)": [r["d_real"] for r in source], "D(G(z))": [r["d_fake"] for r in source]},
        figs / "d_outputs.png", unit, "mean discriminator output", f"Mean D(x) and D(G(z)) per {unit}",
        reference=ref or None, hlines={"1/2": 0.5}))
    return out


def evaluate_generator(generator: Generator, device: torch.device, seed: int, n: int,
                       data_dir: Path | None = None, dataset: str = DATASET) -> dict:
    """FID/KID/IS of ``n`` generated images (latents seeded by ``seed + 2``) against the 10,000
    test images of ``dataset`` (FashionMNIST by default; see :mod:`genlab.quality`)."""
    from genlab.quality import image_quality

    real = torch.from_numpy(load_split(dataset, "test", data_dir)[0].copy()).unsqueeze(1)
    z = torch.randn(n, generator.latent_dim, generator=torch.Generator().manual_seed(seed + 2)).to(device)
    fake = generate(generator, z).unsqueeze(1)
    return image_quality(fake, real, dataset, device=device)


def make_record(epochs: list[dict], quality: dict | None, train_seconds: float | None,
                eval_seconds: float | None, figures: list[Figure]) -> Record:
    """The run's record: FID/KID/IS (when evaluated), the last epoch's losses and mean
    discriminator outputs against the SPEC §1 reference of that epoch (where the reference has
    one), and the per-epoch table."""
    metrics = quality_metrics(quality) if quality else []
    notes = [f"Extractor: {quality['extractor']}."] if quality else []
    last = epochs[-1] if epochs else None
    if last is not None:
        e = int(last["epoch"])
        note = f"epoch {e}; a correct PyTorch solution, batch 64, seed 42"
        ref_losses = REFERENCE_LOSSES.get(e)
        for i, (key, what) in enumerate((("loss_d", "discriminator"), ("loss_g", "generator"))):
            ref = Reference(ref_losses[i], section="§1", note=note) if ref_losses else None
            metrics.append(Metric(key, last[key], "nats", lower_is_better=None, reference=ref, headline=True,
                                  description=f"{what} loss, mean over epoch {e}"))
        for key, what in (("d_real", "D(x)"), ("d_fake", "D(G(z))")):
            ref = Reference(REFERENCE_FINAL_D[key], section="§1", note=note) if e == 50 else None
            metrics.append(Metric(key, last[key], lower_is_better=None, reference=ref,
                                  description=f"mean {what}, epoch {e}"))
    else:
        notes.append("Stopped by --max-steps before the first epoch ended: no per-epoch losses "
                     "(metrics/steps.jsonl has the per-step ones).")
    rows = {int(r["epoch"]): r for r in epochs}
    shown = sorted(e for e in set(rows) | set(REFERENCE_LOSSES)
                   if e in REFERENCE_LOSSES or e in (1, len(rows)) or e % 10 == 0)
    table = Table("losses per epoch", ["epoch", "D loss", "G loss", "D(x)", "D(G(z))", "ref D loss", "ref G loss"],
                  [[e, *(rows[e][k] if e in rows else None for k in ("loss_d", "loss_g", "d_real", "d_fake")),
                    *REFERENCE_LOSSES.get(e, (None, None))] for e in shown],
                  "Epoch means in nats; the reference is a correct PyTorch solution (batch 64, seed 42).")
    return Record("dcgan", "DCGAN on FashionMNIST", "§1", metrics=metrics, tables=[table], figures=figures,
                  train_seconds=train_seconds, eval_seconds=eval_seconds, notes=notes,
                  extra={"final_epoch": last, "quality": quality,
                         "reference": {"losses": REFERENCE_LOSSES, **REFERENCE_FINAL_D}})


FIGURE_CAPTIONS = {
    "grid_epoch": "64 samples from one fixed noise batch",
    "grid_final": "64 samples from the fixed noise batch at the end of the run",
    "losses_steps": "discriminator and generator loss per optimiser step (moving average)",
    "losses": "discriminator and generator loss per epoch, with the SPEC §1 reference points",
    "d_outputs": "mean D(x) and D(G(z)) per epoch",
}


def finish(run_dir: RunDir, config: DCGANConfig, generator: Generator, fixed_z: torch.Tensor,
           device: torch.device, elapsed: float | None) -> dict | None:
    """Figures, FID/KID/IS, metrics.json and summary.md at the end of a run (also used by
    ``genlab eval``). Returns the FID/KID/IS dict, or None when ``fid_samples`` is 0."""
    plot_run(run_dir)
    last = sorted((run_dir.path / "figures").glob("grid_epoch*.png"))
    if not last:  # a run stopped by --max-steps before an epoch ended still shows its samples
        plots.save_image_grid(generate(generator, fixed_z.to(device)).numpy(),
                              run_dir.path / "figures" / "grid_final.png", 8, 8, title="DCGAN, end of run")
    metrics, eval_seconds = None, None
    if config.fid_samples > 0:
        start = time.time()
        metrics = evaluate_generator(generator, device, config.seed, config.fid_samples, config.data_dir)
        metrics.update(n_generated=config.fid_samples, n_real=10000)
        eval_seconds = time.time() - start
    run_dir.write_record(make_record(run_dir.read_epochs(), metrics, elapsed, eval_seconds,
                                     run_dir.figures(FIGURE_CAPTIONS)))
    return metrics


def restore_generator(run_path: Path, device: torch.device) -> tuple[dict, Generator]:
    """The last checkpoint of a run (dcgan or gan: same generator) and its generator on ``device``.

    Returns (checkpoint dict, :class:`Generator` with the saved weights, in training mode).
    Raises GenlabError for a checkpoint of another schema or of neither experiment.
    """
    path = Path(run_path) / "checkpoints" / "last.pt"
    ckpt = load_checkpoint(path, device)
    check_checkpoint(ckpt, "gan" if ckpt.get("experiment") == "gan" else "dcgan", path)  # the two share it
    cfg = ckpt["config"]
    generator = Generator(cfg["latent_dim"], cfg["leaky_slope"]).to(device)
    generator.load_state_dict(ckpt["states"]["generator"])
    return ckpt, generator


def evaluate_run(run_path: Path, experiment: str, config_cls: type, finish_fn):
    """``genlab eval`` of a dcgan-style run: restore its generator and config from the last
    checkpoint, then ``finish_fn(run_dir, config, generator, fixed_z, device, elapsed)``, which
    writes figures, metrics.json and summary.md and returns the metrics. FID/KID/IS are
    computed on the run's ``fid_samples`` images, 10,000 where the run skipped them.
    """
    device = resolve_device("auto")
    ckpt, generator = restore_generator(run_path, device)
    config = config_from_dict(config_cls, ckpt["config"], tuple_keys=("grid_epochs",), out=Path(run_path),
                              resume=True)
    if config.fid_samples == 0:
        config.fid_samples = 10000
    run_dir = RunDir(experiment, config, device)
    metrics = finish_fn(run_dir, config, generator, ckpt["progress"]["fixed_z"], device, ckpt["elapsed_s"])
    run_dir.close()
    return metrics


def evaluate(run_path: Path) -> dict:
    """``genlab eval RUN_DIR``: FID/KID/IS written into metrics.json and summary.md."""
    return evaluate_run(run_path, "dcgan", DCGANConfig, finish)


def sample(run_path: Path, n: int, seed: int = 0) -> np.ndarray:
    """``genlab sample``: ``n`` images from a run's generator (dcgan or gan), uint8 (n, 28, 28)."""
    device = resolve_device("auto")
    _, generator = restore_generator(run_path, device)
    z = torch.randn(n, generator.latent_dim, generator=torch.Generator().manual_seed(seed)).to(device)
    return generate(generator, z).numpy()


EXPERIMENT = Experiment(
    name="dcgan",
    summary="SPEC §1: DCGAN on FashionMNIST (50 epochs, batch 64, Adam 1e-4), FID/KID at the end",
    config=DCGANConfig,
    run=run,
    evaluate=evaluate,
    sample=sample,
    data_parallel=True,
)
