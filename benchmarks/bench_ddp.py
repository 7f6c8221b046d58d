"""DCGAN training images/s against the number of torchrun processes and threads per process.

    python benchmarks/bench_ddp.py [--subset 1280] [--rounds 2] [--json]

Each configuration is the real CLI (`genlab run dcgan`, under `torchrun` for 2 processes) on
`--subset` FashionMNIST images for 2 epochs at batch 64; its speed is the second epoch's images
over the second epoch's seconds (from metrics/epochs.csv), so start-up, data loading,
rendezvous and the first steps' warm-up are left out. Configurations run one after another,
`--rounds` times in alternation, so that load from other users of the machine falls on all of
them alike; the table gives each one's median. Everything talks over 127.0.0.1.

Configurations (processes x threads per process, noise):
    1 x 2, stream       the default one-process run
    1 x 2, per-sample   the one-process run that data-parallel runs reproduce
    1 x 1, per-sample
    2 x 1, per-sample   torchrun, one thread each: the same 2 cores split by data
    2 x 2, per-sample   torchrun, oversubscribed on a 2-core machine
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CONFIGS = [(1, 2, "stream"), (1, 2, "per-sample"), (1, 1, "per-sample"), (2, 1, "per-sample"), (2, 2, "per-sample")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_model() -> str:
    """lscpu's model name (platform.processor() elsewhere)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.SubprocessError, StopIteration):
        return platform.processor() or platform.machine()


def images_per_second(procs: int, threads: int, noise: str, subset: int, precision: str, out: Path) -> float:
    """Second-epoch images/s of one `genlab run dcgan` (batch 64, 2 epochs of ``subset`` images)."""
    args = ["run", "dcgan", "--subset", str(subset), "--epochs", "2", "--batch-size", "64", "--fid-samples", "0",
            "--log-every", "10", "--precision", precision, "--noise", noise, "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MASTER_ADDR": "127.0.0.1", "GLOO_SOCKET_IFNAME": "lo"}
    if procs == 1:
        cmd = [sys.executable, "-m", "genlab", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(procs), "--master-addr",
               "127.0.0.1", "--master-port", str(_free_port()), "-m", "genlab", *args]
    subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    with (out / "metrics" / "epochs.csv").open() as f:
        rows = list(csv.DictReader(f))
    seconds = float(rows[1]["seconds"]) - float(rows[0]["seconds"])
    return (int(rows[1]["steps"]) - int(rows[0]["steps"])) * 64 / seconds


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subset", type=int, default=1280, help="training images (a multiple of 64)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating repeats of every configuration")
    parser.add_argument("--precision", default="fp32", choices=["auto", "bf16", "fp32"])
    parser.add_argument("--json", action="store_true", help="print one JSON object only")
    args = parser.parse_args(argv)
    rates: dict[str, list[float]] = {f"{p}x{t} {n}": [] for p, t, n in CONFIGS}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for p, t, n in CONFIGS:
                key = f"{p}x{t} {n}"
                rate = images_per_second(p, t, n, args.subset, args.precision, Path(tmp) / f"{r}-{p}-{t}-{n}")
                rates[key].append(rate)
                if not args.json:
                    print(f"round {r + 1}: {key:18s} {rate:7.1f} images/s", flush=True)
    result = {"cpu": cpu_model(), "cores": os.cpu_count(), "subset": args.subset, "precision": args.precision,
              "rounds": args.rounds, "images_per_s": {k: round(statistics.median(v), 1) for k, v in rates.items()},
              "all": {k: [round(x, 1) for x in v] for k, v in rates.items()}}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"\n{result['cpu']}, {result['cores']} cores, {args.precision}; median of {args.rounds} rounds")
        print("| processes x threads | noise | images/s |\n|---|---|---|")
        for k, v in result["images_per_s"].items():
            config, noise = k.split(" ")
            print(f"| {config} | {noise} | {v} |")
    return result


if __name__ == "__main__":
    main()
