"""GAN (SPEC §2) training speed: genlab's step against a plain-PyTorch reference loop.

The reference is the loop a course solution writes for §2: a per-sample ``Dataset`` over
MNIST, a shuffling ``DataLoader`` at batch 64, fp32, ``nn.Dropout``, separate discriminator
forwards for the real and the fake batch, the generator run again on fresh noise for its
own step, the generator loss written as ``log(1 - sigmoid(h))`` (minimax) or BCE
(non-saturating), and the generator gradient norm summed over parameters in Python.
genlab's step is :func:`genlab.experiments.gan.train_step` (the §1 engine: bf16 autocast
where supported, one generator forward, one discriminator forward for real and fake, D
frozen in the G step, cheaper dropout masks, fused Adam, the data as one tensor), timed
with the gradient probe off (after the first epoch) and on (the first epoch).

    genlab bench gan --steps 30 --generator-loss minimax --json
    python benchmarks/bench_gan.py --steps 30
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch
from torch import nn
from torch.utils.data import DataLoader

from genlab.benchmarks.dcgan import _PerSampleFashionMNIST as _PerSampleImages
from genlab.benchmarks.dcgan import _sync, reference_models
from genlab.data import load_split
from genlab.engine import resolve_device
from genlab.experiments import dcgan, gan


def time_reference(images, steps: int, warmup: int, batch_size: int, device: torch.device, loss_name: str) -> float:
    """Images per second of the reference loop over ``steps`` steps after ``warmup``."""
    generator, discriminator = (m.to(device) for m in reference_models())
    opt_g = torch.optim.Adam(generator.parameters(), lr=1e-4)
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=1e-4)
    bce = nn.BCEWithLogitsLoss()
    loader = DataLoader(_PerSampleImages(images), batch_size=batch_size, shuffle=True, drop_last=True)
    it = iter(loader)
    norms = []
    start = None
    for i in range(warmup + steps):
        if i == warmup:
            _sync(device)
            start = time.perf_counter()
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
        norms.append(sum(p.grad.norm() ** 2 for p in generator.parameters()).sqrt().item())
        opt_g.step()
    _sync(device)
    return steps * batch_size / (time.perf_counter() - start)


def time_genlab(images, steps: int, warmup: int, batch_size: int, device: torch.device, precision: str,
                loss_name: str, probe: bool) -> float:
    """Images per second of :func:`genlab.experiments.gan.train_step` after ``warmup`` steps."""
    config = gan.GANConfig(batch_size=batch_size, precision=precision, generator_loss=loss_name)
    generator, discriminator, opt_g, opt_d = dcgan.build(config, device)
    data = torch.from_numpy(images.copy()).to(device).unsqueeze(1).float().div_(127.5).sub_(1.0)
    autocast = dcgan.autocast_for(device, precision)
    order = torch.randperm(len(data), device=device)
    start = None
    for i in range(warmup + steps):
        if i == warmup:
            _sync(device)
            start = time.perf_counter()
        real = data[order[i * batch_size:(i + 1) * batch_size]]
        gan.train_step(generator, discriminator, opt_g, opt_d, real, autocast, loss_name, probe)
    _sync(device)
    return steps * batch_size / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="genlab bench gan", description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=30, help="timed steps per loop")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--generator-loss", default="minimax", choices=["minimax", "non-saturating"])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    parser.add_argument("--json", action="store_true", help="print one JSON object only")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    torch.manual_seed(0)
    images, _ = load_split(gan.DATASET, "train")
    ref = time_reference(images, args.steps, args.warmup, args.batch_size, device, args.generator_loss)
    ours = time_genlab(images, args.steps, args.warmup, args.batch_size, device, args.precision,
                       args.generator_loss, probe=False)
    probed = time_genlab(images, args.steps, args.warmup, args.batch_size, device, args.precision,
                         args.generator_loss, probe=True)
    result = {
        "reference_images_per_s": round(ref, 1),
        "genlab_images_per_s": round(ours, 1),
        "genlab_probe_images_per_s": round(probed, 1),
        "ratio": round(ours / ref, 2),
        "generator_loss": args.generator_loss,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "precision": args.precision,
        "bf16": dcgan.bf16_supported(device) if args.precision == "auto" else args.precision == "bf16",
        "torch_threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"reference          {ref:8.1f} images/s\ngenlab             {ours:8.1f} images/s\n"
              f"genlab, probe on   {probed:8.1f} images/s\nratio              {ours / ref:8.2f}x")
    return result
