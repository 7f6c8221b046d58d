"""SPEC §2: the non-saturating and the minimax GAN on MNIST, and the vanishing gradient.

The networks, the discriminator loss, the optimisers, the mixed precision and the epoch loop
are those of §1 (:mod:`genlab.dcgan_nets`); what changes is the generator loss (Goodfellow et
al. 2014, eq. 1 and §3), chosen with ``--generator-loss``:

* minimax:         L_G = E[log(1 - D(G(z)))]       (minimised; D = sigmoid(h), h the logit)
* non-saturating:  L_G = -E[log D(G(z))]

With h the discriminator's logit, dL_G/dh = -D(G(z)) for the minimax loss and
-(1 - D(G(z))) for the non-saturating one, so the minimax generator gradient is
-E[D(G(z)) dh/dtheta] and vanishes as D(G(z)) -> 0, which is where the generator starts
(SPEC §12; checked in tests/test_theory.py). During the first epoch the run measures, at
every step and at the same parameters, the generator gradient norm of both losses. The figures
and the record: :mod:`genlab.reports.gan`.

    genlab run gan --generator-loss minimax
    genlab run gan --epochs 1 --max-steps 20 --fid-samples 200 --out /tmp/smoke
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F

from genlab.data import load_images
from genlab.dcgan_nets import (DCGANTrainingConfig, Discriminator, EpochLoop, Generator, build, discriminator_step,
                               evaluate_run, sample)
from genlab.dcgan_nets import generator_loss as non_saturating_generator_loss
from genlab.engine import Run, autocast_for, resolve_device, seed_everything
from genlab.errors import ConfigError
from genlab.experiments import Experiment
from genlab.reports.gan import finish

DATASET = "mnist"
GeneratorLoss = Literal["non-saturating", "minimax"]


@dataclass
class GANConfig(DCGANTrainingConfig):
    """SPEC §2: §1's networks and optimisers on MNIST, with a choice of generator loss."""

    epochs: int = 10
    """Passes over the 60,000 MNIST training images."""
    generator_loss: GeneratorLoss = "non-saturating"
    """non-saturating: -E[log D(G(z))]; minimax: E[log(1 - D(G(z)))]."""
    probe_steps: int | None = None
    """Steps from the start at which both losses' generator gradient norms are measured
    (default: the first epoch; 0 turns the probe off)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.generator_loss not in GENERATOR_LOSSES:
            raise ConfigError(f"--generator-loss must be one of {sorted(GENERATOR_LOSSES)}, "
                              f"got {self.generator_loss!r}")
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


# ---------------------------------------------------------------------------------------
# Training (the epoch loop: genlab.dcgan_nets.EpochLoop)
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
    z = torch.randn(real.shape[0], generator.latent_dim, device=real.device)
    # (1) Update D: maximise log D(x) + log(1 - D(G(z))), real and fake in one forward.
    fake, loss_d, d_real, d_fake = discriminator_step(generator, discriminator, opt_d, real, z, autocast)
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
        norms[other] = torch.nn.utils.get_total_norm(grads, foreach=False)  # of the concatenation
    opt_g.zero_grad(set_to_none=True)
    loss_g.backward()
    norms[loss_name] = torch.nn.utils.get_total_norm([p.grad for p in params], foreach=False)
    opt_g.step()
    discriminator.requires_grad_(True)
    d_fake_g = torch.sigmoid(fake_logits_g.detach().float()).mean()
    return torch.stack([loss_d, loss_g.detach(), d_real, d_fake, d_fake_g,
                        norms["non-saturating"].to(d_real), norms["minimax"].to(d_real)])


def run(config: GANConfig) -> Path:
    """Train the GAN (resumable: :class:`genlab.dcgan_nets.EpochLoop`); returns the run directory."""
    device = resolve_device(config.device)
    autocast = autocast_for(device, config.precision)  # may time GEMMs (global RNG): before seeding
    seed_everything(config.seed)
    generator, discriminator, opt_g, opt_d = build(config, device)
    with Run("gan", config, device, generator=generator, discriminator=discriminator, opt_g=opt_g,
             opt_d=opt_d) as run:
        data = load_images(DATASET, "train", config.data_dir, device)[:config.subset]  # (60000, 1, 28, 28)
        steps_per_epoch = data.shape[0] // config.batch_size  # full batches only
        probe_steps = steps_per_epoch if config.probe_steps is None else config.probe_steps
        loop = EpochLoop(run, config, device, STEP_KEYS, n_fixed=200)  # resumes the run

        def train_batch(idx: torch.Tensor, step: int) -> torch.Tensor:
            return train_step(generator, discriminator, opt_g, opt_d, data[idx], autocast, config.generator_loss,
                              probe=step < probe_steps)

        trained_norm = "grad_norm_" + config.generator_loss.replace("-", "_")
        loop.train(data.shape[0], steps_per_epoch, train_batch, f"gan {config.generator_loss}",
                   epoch_extra=lambda mean: {"grad_norm_g": mean[trained_norm]})
        finish(run.dir, config, generator, loop.fixed_z, device, run.elapsed_s, DATASET)
    return run.path


EXPERIMENT = Experiment(
    name="gan",
    summary="SPEC §2: non-saturating vs minimax GAN on MNIST, generator gradient norms, FID/KID",
    config=GANConfig,
    run=run,
    evaluate=partial(evaluate_run, experiment="gan", config_cls=GANConfig,
                     finish_fn=partial(finish, dataset=DATASET)),  # genlab eval: FID/KID/IS, record rewritten
    sample=sample,
)
