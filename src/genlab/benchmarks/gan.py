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

import torch

from genlab.benchmarks import dcgan as bench_dcgan
from genlab.benchmarks.common import (add_device_argument, add_json_argument, device_name, machine_info,
                                     parser_for, report)
from genlab.data import load_split
from genlab.engine import bf16_supported, resolve_device
from genlab.experiments import gan


def time_reference(images, steps: int, warmup: int, batch_size: int, device: torch.device, loss_name: str) -> float:
    """Images per second of the reference loop over ``steps`` steps after ``warmup``: §1's, with
    ``loss_name``'s generator loss and the generator gradient norm taken at every step."""
    return bench_dcgan.time_reference(images, steps, warmup, batch_size, device, loss_name, grad_norms=True)


def time_genlab(images, steps: int, warmup: int, batch_size: int, device: torch.device, precision: str,
                loss_name: str, probe: bool) -> float:
    """Images per second of :func:`genlab.experiments.gan.train_step` after ``warmup`` steps."""
    config = gan.GANConfig(batch_size=batch_size, precision=precision, generator_loss=loss_name)
    return bench_dcgan.time_train_step(
        config, images, steps, warmup, device,
        lambda g, d, opt_g, opt_d, real, autocast: gan.train_step(g, d, opt_g, opt_d, real, autocast, loss_name, probe))


def main(argv: list[str] | None = None) -> dict:
    parser = parser_for("gan", __doc__)
    parser.add_argument("--steps", type=int, default=30, help="timed steps per loop")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--generator-loss", default="minimax", choices=["minimax", "non-saturating"])
    add_device_argument(parser)
    parser.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    add_json_argument(parser)
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
        "device": device_name(device),
        "precision": args.precision,
        "bf16": bf16_supported(device) if args.precision == "auto" else args.precision == "bf16",
        **machine_info(),
    }
    return report(result, args.json,
                  f"reference          {ref:8.1f} images/s\ngenlab             {ours:8.1f} images/s\n"
                  f"genlab, probe on   {probed:8.1f} images/s\nratio              {ours / ref:8.2f}x")
