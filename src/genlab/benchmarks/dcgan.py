"""DCGAN training speed: genlab's trainer against a plain-PyTorch reference loop.

The reference is the loop a course solution writes: a per-sample ``Dataset`` that scales
each uint8 image to [-1, 1], a shuffling ``DataLoader`` at batch 64, fp32, ``nn.Dropout``,
separate discriminator forwards for the real and the fake batch, and the generator run a
second time on fresh noise for its own step with the discriminator's parameters still
requiring gradients. genlab's step is :func:`genlab.experiments.dcgan.train_step`: bf16
autocast where supported, one generator forward, real and fake in one discriminator
forward, the discriminator frozen in the generator step, a cheaper dropout mask, fused
Adam, and the data set held as one tensor batched by indexing.

    genlab bench dcgan --steps 40 --json
    python benchmarks/bench_dcgan.py --steps 40
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from genlab.benchmarks.common import (add_device_argument, add_json_argument, device_name, machine_info,
                                     parser_for, report, time_steps)
from genlab.engine import autocast_for, bf16_supported, resolve_device
from genlab.experiments import dcgan


class _PerSampleFashionMNIST(Dataset):
    def __init__(self, images):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        x = torch.from_numpy(self.images[i].copy()).float().div(255.0)  # ToTensor
        return ((x - 0.5) / 0.5).unsqueeze(0)  # Normalize((0.5,), (0.5,)) -> (1, 28, 28)


def reference_models(latent_dim: int = 100):
    """The SPEC §1 networks written plainly with nn.Sequential and nn.Dropout."""
    generator = nn.Sequential(
        nn.Linear(latent_dim, 7 * 7 * 256, bias=False), nn.BatchNorm1d(7 * 7 * 256), nn.LeakyReLU(0.3),
        nn.Unflatten(1, (256, 7, 7)),
        nn.ConvTranspose2d(256, 128, 5, 1, 2, bias=False), nn.BatchNorm2d(128), nn.LeakyReLU(0.3),
        nn.ConvTranspose2d(128, 64, 5, 2, 2, output_padding=1, bias=False), nn.BatchNorm2d(64), nn.LeakyReLU(0.3),
        nn.ConvTranspose2d(64, 1, 5, 2, 2, output_padding=1, bias=False), nn.Tanh())
    discriminator = nn.Sequential(
        nn.Conv2d(1, 64, 5, 2, 2), nn.LeakyReLU(0.3), nn.Dropout(0.3),
        nn.Conv2d(64, 128, 5, 2, 2), nn.LeakyReLU(0.3), nn.Dropout(0.3),
        nn.Flatten(), nn.Linear(128 * 7 * 7, 1))
    return generator, discriminator


def time_reference(images, steps: int, warmup: int, batch_size: int, device: torch.device,
                   loss_name: str = "non-saturating", grad_norms: bool = False) -> float:
    """Images per second of the reference loop over ``steps`` steps after ``warmup``.

    ``images``: uint8 (N, 28, 28). The generator loss is the non-saturating BCE or, with
    ``loss_name="minimax"``, ``log(1 - sigmoid(h))``; ``grad_norms`` adds the course
    solution's per-step generator gradient norm, summed over parameters in Python (§2).
    """
    generator, discriminator = (m.to(device) for m in reference_models())
    opt_g = torch.optim.Adam(generator.parameters(), lr=1e-4)
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=1e-4)
    bce = nn.BCEWithLogitsLoss()
    loader = DataLoader(_PerSampleFashionMNIST(images), batch_size=batch_size, shuffle=True, drop_last=True)
    it = iter(loader)
    norms = []

    def step(i: int) -> None:
        real = next(it).to(device)
        z = torch.randn(batch_size, 100, device=device)
        fake = generator(z)
        out_real, out_fake = discriminator(real), discriminator(fake.detach())
        loss_d = bce(out_real, torch.ones_like(out_real)) + bce(out_fake, torch.zeros_like(out_fake))
        opt_d.zero_grad()
        loss_d.backward()
        opt_d.step()
        z = torch.randn(batch_size, 100, device=device)
        out = discriminator(generator(z))
        if loss_name == "minimax":
            loss_g = torch.log(1 - torch.sigmoid(out)).mean()
        else:
            loss_g = bce(out, torch.ones_like(out))
        opt_g.zero_grad()
        loss_g.backward()
        if grad_norms:
            norms.append(sum(p.grad.norm() ** 2 for p in generator.parameters()).sqrt().item())
        opt_g.step()

    return steps * batch_size / time_steps(step, steps, warmup, device)


def time_train_step(config, images, steps: int, warmup: int, device: torch.device, train_step,
                    cuda_graph: bool = False) -> float:
    """Images per second of ``train_step(generator, discriminator, opt_g, opt_d, real, autocast)``
    on the models and optimisers of ``config`` (a DCGAN or GAN config: batch_size, precision),
    over ``steps`` steps after ``warmup``. ``images``: uint8 (N, 28, 28), held as one tensor.
    ``cuda_graph``: the DCGAN step replayed as a CUDA graph
    (:class:`genlab.experiments.dcgan.GraphedTrainStep`) instead."""
    generator, discriminator, opt_g, opt_d = dcgan.build(config, device, capturable=cuda_graph)
    data = torch.from_numpy(images.copy()).to(device).unsqueeze(1).float().div_(127.5).sub_(1.0)
    autocast = autocast_for(device, config.precision)
    order = torch.randperm(len(data), device=device)
    batch_size = config.batch_size
    graphed = (dcgan.GraphedTrainStep(generator, discriminator, opt_g, opt_d, [(batch_size, 1, 28, 28)],
                                      config.precision) if cuda_graph else None)

    def step(i: int) -> None:
        real = data[order[i * batch_size:(i + 1) * batch_size]]
        if graphed is not None:
            graphed(real)
        else:
            train_step(generator, discriminator, opt_g, opt_d, real, autocast)

    return steps * batch_size / time_steps(step, steps, warmup, device)


def time_genlab(images, steps: int, warmup: int, batch_size: int, device: torch.device, precision: str,
                cuda_graph: bool = False) -> float:
    """Images per second of genlab's trainer step over ``steps`` steps after ``warmup``; with
    ``cuda_graph``, of its replayed CUDA graph."""
    config = dcgan.DCGANConfig(batch_size=batch_size, precision=precision, cuda_graph=cuda_graph)
    return time_train_step(config, images, steps, warmup, device, dcgan.train_step, cuda_graph)


def main(argv: list[str] | None = None) -> dict:
    parser = parser_for("dcgan", __doc__)
    parser.add_argument("--steps", type=int, default=40, help="timed steps per loop")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--batch-size", type=int, default=64)
    add_device_argument(parser)
    parser.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    parser.add_argument("--cuda-graph", action="store_true", help="time genlab's step replayed as a CUDA graph")
    add_json_argument(parser)
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    if args.cuda_graph and device.type != "cuda":
        parser.error(f"--cuda-graph needs a CUDA device, and this benchmark runs on {device}")
    torch.manual_seed(0)
    images, _ = dcgan.load_split(dcgan.DATASET, "train")
    ref = time_reference(images, args.steps, args.warmup, args.batch_size, device)
    ours = time_genlab(images, args.steps, args.warmup, args.batch_size, device, args.precision, args.cuda_graph)
    result = {
        "reference_images_per_s": round(ref, 1),
        "genlab_images_per_s": round(ours, 1),
        "ratio": round(ours / ref, 2),
        "steps": args.steps,
        "batch_size": args.batch_size,
        "device": device_name(device),
        "precision": args.precision,
        "cuda_graph": args.cuda_graph,
        "bf16": bf16_supported(device) if args.precision == "auto" else args.precision == "bf16",
        **machine_info(),
    }
    return report(result, args.json,
                  f"reference {ref:8.1f} images/s\ngenlab    {ours:8.1f} images/s\nratio     {ours / ref:8.2f}x")
