"""SPEC §1: a DCGAN (Radford et al. 2016) on FashionMNIST.

The networks and the losses (:mod:`genlab.dcgan_nets`) are those of the TensorFlow DCGAN
tutorial that the assignment follows: a 100-d Gaussian latent, a generator of one dense and
three transposed-convolution layers, a discriminator of two strided convolutions with dropout,
binary cross-entropy on logits (Goodfellow et al. 2014, eq. 1) and the non-saturating generator
loss (ibid., §3).

    genlab run dcgan                       # 50 epochs, batch 64, seed 42
    genlab run dcgan --epochs 3 --subset 6000 --eval-epochs 1 2 3     # FID and KID after each epoch
    torchrun --nproc-per-node 2 -m genlab run dcgan      # data-parallel: 2 processes, 32 images each

FID and KID after each of ``--eval-epochs`` (:func:`genlab.dcgan_nets.evaluate_quality`) go to
metrics/quality.csv and losses_fid_kid.png; the evaluation leaves the global RNG as it found it,
and its seconds are left out of the training time. The figures and the record:
:mod:`genlab.reports.dcgan`.

Data-parallel (``torchrun``, :mod:`genlab.distributed`): each of W processes trains on the next
B / W images of each global batch of B, ``DistributedDataParallel`` averages the gradients and the
generator's batch norms use the global batch's statistics (``nn.SyncBatchNorm`` on CUDA,
:class:`genlab.distributed.AllReduceBatchNorm` on the CPU), so a step is the one-process step up
to the order of floating-point sums. z and the dropout masks are drawn per sample
(:class:`genlab.layers.SampleNoise`), keyed by the sample's place in the global batch, so any W
draws the numbers of the one-process run ``genlab run dcgan --noise per-sample``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from genlab import distributed
from genlab.data import load_images
from genlab.dcgan_nets import (DCGANTrainingConfig, Discriminator, EpochLoop, Generator, build, discriminator_step,
                               evaluate_quality, evaluate_run, generator_loss, sample, save_grid)
from genlab.engine import Run, autocast_for, compute_dtype, resolve_device, rng_state, seed_everything, set_rng_state
from genlab.errors import ConfigError
from genlab.experiments import Experiment
from genlab.layers import SampleNoise
from genlab.reports.dcgan import QUALITY_FILE, finish

DATASET = "fashion-mnist"


@dataclass
class DCGANConfig(DCGANTrainingConfig):
    """SPEC §1 defaults."""

    grid_epochs: tuple[int, ...] = (10, 30, 50)
    """Epochs after which the fixed-noise grid is saved (the last epoch always is)."""
    eval_epochs: tuple[int, ...] = (1, 2, 5, 10, 20, 30, 40, 50)
    """Epochs after which FID and KID are computed as at the end (--fid-samples images, the same
    latents and extractor) into metrics/quality.csv; those beyond --epochs are skipped, all with
    --fid-samples 0."""
    cuda_graph: bool = False
    """Replay the training step as captured CUDA graphs (CUDA only; see GraphedTrainStep)."""
    noise: str = "auto"
    """Where z and the dropout masks come from: stream (torch's global RNG, one draw per batch),
    per-sample (each sample's own generator, keyed by seed, step and its place in the global batch,
    so any number of torchrun processes draws the same numbers; see SampleNoise), or auto
    (stream in one process, per-sample under torchrun)."""

    CONTINUABLE: ClassVar[tuple[str, ...]] = DCGANTrainingConfig.CONTINUABLE + ("eval_epochs",)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.eval_epochs = tuple(self.eval_epochs)
        if any(e < 1 for e in self.eval_epochs):
            raise ConfigError(f"--eval-epochs must all be >= 1, got {' '.join(map(str, self.eval_epochs))}")
        if self.noise not in ("auto", "stream", "per-sample"):
            raise ConfigError(f"--noise must be auto, stream or per-sample, got {self.noise!r}")
        if self.cuda_graph and self.noise == "per-sample":
            raise ConfigError("--cuda-graph replays the global RNG's draws; it cannot use --noise per-sample")


# ---------------------------------------------------------------------------------------
# Training (networks, losses and the epoch loop: genlab.dcgan_nets)
# ---------------------------------------------------------------------------------------

#: Stream ids of a step's per-sample draws (:class:`SampleNoise`): z, then the two dropout layers
#: of the discriminator step, then those of the generator step.
NOISE_Z, NOISE_D_STEP, NOISE_G_STEP = 0, 1, 3
STEP_KEYS = ("loss_d", "loss_g", "d_real", "d_fake")


def train_step(generator: Generator, discriminator: Discriminator, opt_g: torch.optim.Optimizer,
               opt_d: torch.optim.Optimizer, real: torch.Tensor, autocast,
               noise: SampleNoise | None = None) -> torch.Tensor:
    """One alternating DCGAN step on a batch ``real`` (N, 1, 28, 28) in [-1, 1]; returns float32
    (4,) in the order of :data:`STEP_KEYS` (D(x) and D(G(z)) of the D step). The D step's fake
    batch is reused for the G step: one generator forward.

    ``noise``: None draws z and the dropout masks from the global RNG; a :class:`SampleNoise`
    whose ``rows`` are ``real``'s places in the global batch (span 2B: real rows [0, B), their
    fakes [B, 2B)) draws them per sample. Under DDP the D step runs through the discriminator's
    wrapper (gradients averaged over the ranks), the G step through the bare, frozen
    discriminator (no gradient, no reduction), and the generator's wrapper averages its gradients.
    """
    g_module, d_module = distributed.unwrap(generator), distributed.unwrap(discriminator)
    d_noise = g_noise = None
    if noise is None:
        z = torch.randn(real.shape[0], g_module.latent_dim, device=real.device)
    else:
        z = noise.with_stream(NOISE_Z).normal(g_module.latent_dim).to(real.device)  # (N, latent_dim)
        fake_rows = tuple(noise.span // 2 + r for r in noise.rows)
        d_noise = noise.with_stream(NOISE_D_STEP).with_rows(noise.rows + fake_rows)
        g_noise = noise.with_stream(NOISE_G_STEP).with_rows(fake_rows)
    # (1) Update D: maximise log D(x) + log(1 - D(G(z))), real and fake in one forward.
    fake, loss_d, d_real, d_fake = discriminator_step(generator, discriminator, opt_d, real, z, autocast, d_noise)
    # (2) Update G: maximise log D(G(z)) (non-saturating), D's parameters frozen.
    d_module.requires_grad_(False)
    with autocast:
        loss_g = generator_loss(d_module(fake, g_noise))
    opt_g.zero_grad(set_to_none=True)
    loss_g.backward()
    opt_g.step()
    d_module.requires_grad_(True)
    return torch.stack([loss_d, loss_g.detach(), d_real, d_fake])


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
    """:func:`train_step` captured as CUDA graphs and replayed (``--cuda-graph``; CUDA only): a
    step's few hundred small kernels launched at once (PyTorch docs, "CUDA Graphs").

    One static input and one graph per batch shape (the full batch and the epoch's last one);
    Adam with ``capturable=True`` (:func:`build`); autocast with ``cache_enabled=False``. A few
    warm-up steps on a side stream create Adam's state before capture; then the models, the
    optimisers' state (in place) and the RNG are restored, so a replayed run follows the eager
    one (graphs draw from the same Philox offsets as eager kernels).

    Args:
        generator, discriminator, opt_g, opt_d: as for :func:`train_step`, on one CUDA device.
        shapes: the batch shapes to capture, each (N, 1, 28, 28).
        precision: auto, bf16 or fp32, as ``--precision``.
        warmup: eager steps per shape before capture.

    Called on a batch of a captured shape, returns :func:`train_step`'s (4,) metrics (a fresh
    tensor). Raises ValueError off CUDA and KeyError for a shape that was not captured.
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


def run(config: DCGANConfig) -> Path:
    """Train the DCGAN (resumable: :class:`genlab.dcgan_nets.EpochLoop`); returns the run directory.

    Under ``torchrun`` with W processes, rank r trains on images [r B/W, (r+1) B/W) of each
    global batch of B and the logged metrics are the means over the global batch. An epoch's
    last, partial batch of b images is trained as its first b - (b mod W) images.

    Raises:
        ConfigError: ``--batch-size`` not a multiple of the number of processes (naming both);
            ``--noise stream`` or ``--cuda-graph`` under torchrun; ``--cuda-graph`` off CUDA.
    """
    world_size = distributed.launched_world_size()  # refused before joining: no rank left waiting
    local_batch = distributed.split_batch(config.batch_size, world_size, "images")
    if world_size > 1 and (config.noise == "stream" or config.cuda_graph):
        raise ConfigError(f"{'--cuda-graph' if config.cuda_graph else '--noise stream'} draws from each "
                          f"process's own RNG, so {world_size} processes would not train the one-process "
                          f"run; use --noise per-sample (or auto)")
    device = distributed.init(resolve_device(config.device))  # under torchrun: joins; cuda:LOCAL_RANK on GPUs
    world = distributed.World.current()
    if config.cuda_graph and device.type != "cuda":
        raise ConfigError(f"--cuda-graph needs a CUDA device, and this run is on {device}: drop --cuda-graph "
                          f"or use --device cuda")
    per_sample = config.noise == "per-sample" or (config.noise == "auto" and world.size > 1)
    autocast = autocast_for(device, config.precision)  # may time GEMMs (global RNG): before seeding
    seed_everything(config.seed)
    generator, discriminator, opt_g, opt_d = build(config, device, capturable=config.cuda_graph)
    with Run("dcgan", config, device, generator=generator, discriminator=discriminator, opt_g=opt_g,
             opt_d=opt_d) as run:
        data = load_images(DATASET, "train", config.data_dir, device)[:config.subset]  # (60000, 1, 28, 28)
        n_data = data.shape[0]
        # the epoch's last, partial batch is trained when it has at least one image per process
        steps_per_epoch = n_data // config.batch_size + (1 if n_data % config.batch_size >= world.size else 0)
        # DDP averages gradients over the ranks at each backward. The generator's running batch-norm
        # statistics come from all-reduced batch statistics, hence equal everywhere: no broadcast at each forward.
        g_train = distributed.data_parallel(generator, device, forward_sync_buffers=False)
        d_train = distributed.data_parallel(discriminator, device)
        loop = EpochLoop(run, config, device, STEP_KEYS, n_fixed=64)  # resumes the run

        if config.cuda_graph:  # captured after the resume, on the optimisers' restored state
            shapes = [(config.batch_size, 1, 28, 28)] + ([(n_data % config.batch_size, 1, 28, 28)]
                                                         if n_data % config.batch_size else [])
            step_fn = GraphedTrainStep(generator, discriminator, opt_g, opt_d, shapes, config.precision)
        else:
            def step_fn(real: torch.Tensor, noise: SampleNoise | None = None) -> torch.Tensor:
                return train_step(g_train, d_train, opt_g, opt_d, real, autocast, noise)

        def train_batch(idx: torch.Tensor, step: int) -> torch.Tensor:  # idx: the global batch
            if not per_sample and world.size == 1:
                return step_fn(data[idx])
            n_local = min(local_batch, len(idx) // world.size)
            first = world.rank * n_local  # this rank's rows in the global batch
            noise = (SampleNoise(config.seed, step, tuple(range(first, first + n_local)), 2 * config.batch_size)
                     if per_sample else None)
            return distributed.all_mean(step_fn(data[idx[first:first + n_local]], noise), world)

        at_last_epoch: dict = {}  # the evaluation after the last epoch, which is the end of the run's

        def end_epoch(epoch: int) -> None:  # grid and FID/KID: one process's work
            if not run.is_main:
                return
            if epoch in config.grid_epochs or epoch == config.epochs:
                path = run.path / "figures" / f"grid_epoch{epoch:03d}"
                np.save(path.with_suffix(".npy"), save_grid(generator, loop.fixed_z, device, path.with_suffix(".png"),
                                                            8, 8, f"DCGAN, FashionMNIST, epoch {epoch}"))
            if epoch in config.eval_epochs and config.fid_samples:
                quality, seconds = evaluate_quality(generator, config, device, DATASET)
                run.elapsed_before -= seconds  # the run's training seconds leave the evaluation out
                run.log_rows(QUALITY_FILE, [{"epoch": epoch, "step": loop.step, "fid": quality["fid"],
                                             "kid": quality["kid_mean"], "kid_std": quality["kid_std"],
                                             "seconds": seconds}])
                if epoch == config.epochs:
                    at_last_epoch.update(quality=quality, seconds=seconds)

        loop.train(n_data, steps_per_epoch, train_batch, "dcgan", on_epoch_end=end_epoch)
        if run.is_main:  # figures and FID/KID: one process's work
            finish(run.dir, config, generator, loop.fixed_z, device, run.elapsed_s, DATASET, **at_last_epoch)
    return run.path


EXPERIMENT = Experiment(
    name="dcgan",
    summary="SPEC §1: DCGAN on FashionMNIST (50 epochs, batch 64, Adam 1e-4), FID/KID at the end",
    config=DCGANConfig,
    run=run,
    evaluate=partial(evaluate_run, experiment="dcgan", config_cls=DCGANConfig,
                     finish_fn=partial(finish, dataset=DATASET)),  # genlab eval: FID/KID/IS, record rewritten
    sample=sample,
    data_parallel=True,
)
