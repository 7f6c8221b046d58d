"""Scaffolding shared by the benchmarks: device sync, machine fields, CLI flags and output."""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable

import torch


def sync(device: torch.device) -> None:
    """Wait for the queued CUDA work on ``device`` (a no-op elsewhere), so timings are honest."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step: Callable[[int], object], steps: int, warmup: int, device: torch.device) -> float:
    """Wall seconds of ``step(i)`` for i = warmup .. warmup + steps - 1, after ``warmup`` untimed
    calls (i = 0 .. warmup - 1); ``device`` is synchronised before and after the timed calls."""
    start = None
    for i in range(warmup + steps):
        if i == warmup:
            sync(device)
            start = time.perf_counter()
        step(i)
    sync(device)
    return time.perf_counter() - start


def device_name(device: torch.device) -> str:
    """``"cpu"`` on the CPU, the GPU's name (e.g. ``"NVIDIA H200"``) on CUDA."""
    return str(device) if device.type == "cpu" else torch.cuda.get_device_name(device)


def machine_info() -> dict:
    """The result fields every benchmark reports about the machine: torch_threads (int),
    cpu (str) and torch (its version string), in that order."""
    return {"torch_threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
            "torch": torch.__version__}


def parser_for(name: str, doc: str) -> argparse.ArgumentParser:
    """The ``genlab bench NAME`` parser, described by the first paragraph of ``doc``."""
    return argparse.ArgumentParser(prog=f"genlab bench {name}", description=doc.split("\n\n")[0])


def add_device_argument(parser: argparse.ArgumentParser, default: str = "auto") -> None:
    """``--device {auto,cpu,cuda}``."""
    parser.add_argument("--device", default=default, choices=["auto", "cpu", "cuda"])


def add_json_argument(parser: argparse.ArgumentParser) -> None:
    """``--json``: print one JSON object only (see :func:`report`)."""
    parser.add_argument("--json", action="store_true", help="print one JSON object only")


def report(result: dict, as_json: bool, text: str) -> dict:
    """Print ``result`` as one line of JSON when ``as_json``, else the human-readable ``text``;
    returns ``result``."""
    print(json.dumps(result) if as_json else text)
    return result
