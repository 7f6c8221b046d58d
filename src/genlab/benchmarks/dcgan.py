"""DCGAN training speed: genlab's trainer against a plain-PyTorch reference loop.

The reference is the loop a course solution writes: a per-sample ``Dataset`` that scales
each uint8 image to [-1, 1], a shuffling ``DataLoader`` at batch 64, fp32, ``nn.Dropout``,
separate discriminator forwards for the real and the fake batch, and the generator run a
second time on fresh noise for its own step with the discriminator's parameters still
requiring gradients. genlab's step is :func:`genlab.experiments.dcgan.train_step`: bf16
autocast where supported, one generator forward, real and fake in one discriminator
forward, the discriminator frozen in the generator step, a cheaper dropout mask, fused
Adam, and the data set held as one tensor batched by indexing.

    genlab bench dcgan --json                 # 5 alternating pairs of 20 steps, medians
    genlab bench dcgan --layers               # also each convolution, contiguous vs channels-last
    python benchmarks/bench_dcgan.py --steps 40
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from genlab.benchmarks.common import (add_device_argument, add_json_argument, device_name, machine_info,
                                     parser_for, report, sync, time_steps)
from genlab.engine import autocast_for, bf16_supported, resolve_device
from genlab.record import Record
from genlab import dcgan_nets
from genlab.data import load_split
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


def make_reference_step(images, batch_size: int, device: torch.device, loss_name: str = "non-saturating",
                        grad_norms: bool = False, models: tuple | None = None):
    """``step(i)``: one step of the reference loop (see the module docstring) on ``images``,
    uint8 (N, 28, 28). The generator loss is the non-saturating BCE or, with
    ``loss_name="minimax"``, ``log(1 - sigmoid(h))``; ``grad_norms`` adds the course solution's
    per-step generator gradient norm, summed over parameters in Python (§2)."""
    generator, discriminator = (m.to(device) for m in (models or reference_models()))
    opt_g = torch.optim.Adam(generator.parameters(), lr=1e-4)
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=1e-4)
    bce = nn.BCEWithLogitsLoss()
    loader = DataLoader(_PerSampleFashionMNIST(images), batch_size=batch_size, shuffle=True, drop_last=True)
    state = {"it": iter(loader)}
    norms = []

    def next_batch() -> torch.Tensor:
        try:
            return next(state["it"])
        except StopIteration:  # a new epoch
            state["it"] = iter(loader)
            return next(state["it"])

    def step(i: int) -> None:
        real = next_batch().to(device)
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

    return step


def time_reference(images, steps: int, warmup: int, batch_size: int, device: torch.device,
                   loss_name: str = "non-saturating", grad_norms: bool = False) -> float:
    """Images per second of the reference loop (:func:`make_reference_step`) over ``steps`` steps
    after ``warmup``."""
    step = make_reference_step(images, batch_size, device, loss_name, grad_norms)
    return steps * batch_size / time_steps(step, steps, warmup, device)


def time_train_step(config, images, steps: int, warmup: int, device: torch.device, train_step,
                    cuda_graph: bool = False, compile: bool = False) -> float:
    """Images per second of ``train_step(generator, discriminator, opt_g, opt_d, real, autocast)``
    on the models and optimisers of ``config`` (a DCGAN or GAN config: batch_size, precision,
    layout), over ``steps`` steps after ``warmup``. ``images``: uint8 (N, 28, 28), held as one
    tensor. ``cuda_graph``: the DCGAN step replayed as a CUDA graph
    (:class:`genlab.experiments.dcgan.GraphedTrainStep`) instead; ``compile``: both networks
    through ``torch.compile`` (its compilation falls in the warm-up)."""
    step = make_step(config, images, device, train_step, cuda_graph, compile)
    return steps * config.batch_size / time_steps(step, steps, warmup, device)


def make_step(config, images, device: torch.device, train_step=dcgan.train_step, cuda_graph: bool = False,
              compile: bool = False):
    """``step(i)``: the i-th training step of genlab's trainer on batch i of a fixed permutation."""
    generator, discriminator, opt_g, opt_d = dcgan_nets.build(config, device, capturable=cuda_graph)
    if compile:
        generator, discriminator = torch.compile(generator), torch.compile(discriminator)
    data = torch.from_numpy(images.copy()).to(device).unsqueeze(1).float().div_(127.5).sub_(1.0)
    autocast = autocast_for(device, config.precision)
    order = torch.randperm(len(data), device=device)
    batch_size = config.batch_size
    graphed = (dcgan.GraphedTrainStep(generator, discriminator, opt_g, opt_d, [(batch_size, 1, 28, 28)],
                                      config.precision) if cuda_graph else None)

    def step(i: int) -> None:
        i %= len(data) // batch_size
        real = data[order[i * batch_size:(i + 1) * batch_size]]
        if graphed is not None:
            graphed(real)
        else:
            train_step(generator, discriminator, opt_g, opt_d, real, autocast)

    return step


def step_flops(config, device: torch.device) -> float:
    """FLOPs of one genlab DCGAN training step (matrix products and convolutions, forward and
    backward), counted by ``torch.utils.flop_counter.FlopCounterMode``."""
    from torch.utils.flop_counter import FlopCounterMode

    generator, discriminator, opt_g, opt_d = dcgan_nets.build(config, device)
    real = torch.rand(config.batch_size, 1, 28, 28, device=device) * 2 - 1
    with FlopCounterMode(display=False) as counter:
        dcgan.train_step(generator, discriminator, opt_g, opt_d, real, autocast_for(device, config.precision))
    return float(counter.get_total_flops())


def time_layers(device: torch.device, precision: str, batch_size: int, repeats: int = 10) -> list[dict]:
    """Forward + backward milliseconds (median of ``repeats``) of each DCGAN convolution at its
    training shape, on contiguous and on channels-last inputs, alternated: what the per-ISA
    layout table (:data:`genlab.dcgan_nets.CHANNELS_LAST_BY_ISA`) is read from."""
    import statistics
    import time

    from torch import nn

    layers = {
        "generator.deconv1": (nn.ConvTranspose2d(256, 128, 5, 1, 2, bias=False), (batch_size, 256, 7, 7)),
        "generator.deconv2": (nn.ConvTranspose2d(128, 64, 5, 2, 2, output_padding=1, bias=False), (batch_size, 128, 7, 7)),
        "generator.deconv3": (nn.ConvTranspose2d(64, 1, 5, 2, 2, output_padding=1, bias=False), (batch_size, 64, 14, 14)),
        "discriminator.conv1": (nn.Conv2d(1, 64, 5, 2, 2), (2 * batch_size, 1, 28, 28)),
        "discriminator.conv2": (nn.Conv2d(64, 128, 5, 2, 2), (2 * batch_size, 64, 14, 14)),
    }
    rows = []
    for name, (layer, shape) in layers.items():
        layer = layer.to(device)
        x = torch.randn(shape, device=device, requires_grad=True)
        times: dict[str, list[float]] = {"contiguous": [], "channels_last": []}
        for i in range(repeats + 2):
            for fmt_name, fmt in (("contiguous", torch.contiguous_format), ("channels_last", torch.channels_last)):
                sync(device)
                t0 = time.perf_counter()
                with autocast_for(device, precision):
                    y = layer(x.contiguous(memory_format=fmt))
                y.float().sum().backward()
                sync(device)
                if i >= 2:
                    times[fmt_name].append((time.perf_counter() - t0) * 1e3)
        rows.append({"layer": name, **{k: round(statistics.median(v), 3) for k, v in times.items()}})
    return rows


def quality_at_equal_epochs(images, epochs: int, seed: int, device: torch.device, n: int = 10000) -> dict:
    """FID/KID/IS (genlab's domain classifier, ``n`` samples vs the 10,000 test images) of the
    reference loop and of genlab's trainer (``genlab run dcgan``), each trained ``epochs`` epochs
    from ``seed`` at batch 64: the check that genlab's speed costs no quality."""
    import contextlib
    import sys
    import tempfile
    import time

    from genlab.quality import image_quality

    torch.manual_seed(seed)
    generator, discriminator = reference_models()
    step = make_reference_step(images, 64, device, models=(generator, discriminator))
    t0 = time.perf_counter()
    for i in range(epochs * (len(images) // 64)):
        step(i)
    ref_seconds = time.perf_counter() - t0
    real = torch.from_numpy(load_split(dcgan.DATASET, "test")[0].copy()).unsqueeze(1)
    z = torch.randn(n, 100, generator=torch.Generator().manual_seed(seed + 2)).to(device)
    generator.eval()
    with torch.no_grad():
        fake = torch.cat([generator(z[i:i + 1000]).float().cpu() for i in range(0, n, 1000)])
    fake = ((fake.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    reference = image_quality(fake, real, dcgan.DATASET, device=device)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(sys.stderr):  # its epoch lines; stdout keeps the JSON alone
            out = dcgan.run(dcgan.DCGANConfig(epochs=epochs, seed=seed, fid_samples=n, device=device.type,
                                              out=Path(tmp) / "run"))
        ours = Record.read(out).extra["quality"]
        genlab_seconds = time.perf_counter() - t0
    return {"epochs": epochs, "seed": seed, "samples": n,
            "reference": {**reference, "train_seconds": round(ref_seconds, 1)},
            "genlab": {**ours, "seconds_with_eval": round(genlab_seconds, 1)}}


def main(argv: list[str] | None = None) -> dict:
    import statistics

    from genlab.engine import cpu_isa, gemm_flops

    parser = parser_for("dcgan", __doc__)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per loop and round")
    parser.add_argument("--rounds", type=int, default=5,
                        help="alternating (reference, genlab) pairs; the figures are their medians")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before each timed loop")
    parser.add_argument("--batch-size", type=int, default=64)
    add_device_argument(parser)
    parser.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    parser.add_argument("--layout", default="auto", choices=["auto", "contiguous", "channels_last"])
    parser.add_argument("--cuda-graph", action="store_true", help="time genlab's step replayed as a CUDA graph")
    parser.add_argument("--compile", action="store_true", help="time genlab's step with torch.compile'd networks")
    parser.add_argument("--layers", action="store_true",
                        help="also time each convolution contiguous vs channels-last (the layout table's source)")
    parser.add_argument("--quality-epochs", type=int, default=0,
                        help="instead of timing: train the reference loop and genlab this many epochs each "
                             "(from --seed) and compare their FID/KID/IS")
    parser.add_argument("--seed", type=int, default=42, help="seed of both trainings with --quality-epochs")
    add_json_argument(parser)
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    if args.quality_epochs > 0:
        images, _ = load_split(dcgan.DATASET, "train")
        result = quality_at_equal_epochs(images, args.quality_epochs, args.seed, device)
        return report(result, args.json, json.dumps(result, indent=2))
    if args.cuda_graph and device.type != "cuda":
        parser.error(f"--cuda-graph needs a CUDA device, and this benchmark runs on {device}")
    if args.cuda_graph and args.compile:
        parser.error("choose one of --cuda-graph and --compile")
    torch.manual_seed(0)
    images, _ = load_split(dcgan.DATASET, "train")
    config = dcgan.DCGANConfig(batch_size=args.batch_size, precision=args.precision, layout=args.layout,
                               cuda_graph=args.cuda_graph)
    reference = make_reference_step(images, args.batch_size, device)
    ours = make_step(config, images, device, dcgan.train_step, args.cuda_graph, args.compile)
    refs, oursr = [], []
    for _ in range(args.rounds):  # alternate, so that a slow minute of the host hits both loops
        refs.append(args.steps * args.batch_size / time_steps(reference, args.steps, args.warmup, device))
        oursr.append(args.steps * args.batch_size / time_steps(ours, args.steps, args.warmup, device))
    ratios = [o / r for o, r in zip(oursr, refs)]
    ref, mine, ratio = statistics.median(refs), statistics.median(oursr), statistics.median(ratios)
    n_peak = 2048 if device.type == "cpu" else 8192
    bf16_peak, fp32_peak = (gemm_flops(dtype, device, n_peak) for dtype in (torch.bfloat16, torch.float32))
    flops = step_flops(config, device)
    result = {
        "reference_images_per_s": round(ref, 1),
        "genlab_images_per_s": round(mine, 1),
        "ratio": round(ratio, 3),
        "ratios": [round(r, 3) for r in ratios],
        "rounds": args.rounds,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "device": device_name(device),
        "isa": cpu_isa() if device.type == "cpu" else "cuda",
        "precision": args.precision,
        "bf16": bf16_supported(device) if args.precision == "auto" else args.precision == "bf16",
        "layout_channels_last": list(dcgan_nets.layout_for(device, args.layout)),
        "cuda_graph": args.cuda_graph,
        "compile": args.compile,
        "gemm_bf16_gflops": round(bf16_peak / 1e9, 1),
        "gemm_fp32_gflops": round(fp32_peak / 1e9, 1),
        "step_gflop": round(flops / 1e9, 3),
        "achieved_gflops": round(flops * mine / args.batch_size / 1e9, 1),
        **machine_info(),
    }
    if args.layers:
        result["layers_ms"] = time_layers(device, args.precision, args.batch_size)
    text = (f"reference {ref:8.1f} images/s\ngenlab    {mine:8.1f} images/s\nratio     {ratio:8.2f}x "
            f"(median of {args.rounds} alternating pairs: {', '.join(f'{r:.2f}' for r in ratios)})\n"
            f"ISA {result['isa']}; GEMM peaks bf16 {result['gemm_bf16_gflops']} / fp32 {result['gemm_fp32_gflops']} "
            f"GFLOP/s; step {result['step_gflop']} GFLOP at {result['achieved_gflops']} GFLOP/s")
    for row in result.get("layers_ms", []):
        text += f"\n{row['layer']:22s} contiguous {row['contiguous']:8.2f} ms   channels-last {row['channels_last']:8.2f} ms"
    return report(result, args.json, text)
