"""The registry of experiments: one line per experiment, one module each.

Each module defines ``EXPERIMENT = Experiment(...)`` (or ``EXPERIMENT = one_shot(...)`` for an
experiment computed in one go, without checkpoints). Modules are imported lazily so that
``genlab list`` and one experiment's run do not pay for every other one's imports.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from genlab.errors import UnknownNameError
from genlab.record import Record

REGISTRY: dict[str, str] = {
    "dcgan": "genlab.experiments.dcgan",
    "classifier": "genlab.experiments.classifier",
    "minimax": "genlab.experiments.minimax",
    "bandit": "genlab.experiments.bandit",
    "divergence": "genlab.experiments.divergence",
    "gan": "genlab.experiments.gan",
    "wgan": "genlab.experiments.wgan",
    "vae": "genlab.experiments.vae",
    "continual": "genlab.experiments.continual",
    "reinforce": "genlab.experiments.reinforce",
    "optimizers": "genlab.experiments.optimizers",
    "summarize": "genlab.experiments.summarize",
    "t5-pretrain": "genlab.experiments.t5_pretrain",
    "t5-finetune": "genlab.experiments.t5_finetune",
}


@dataclass(frozen=True)
class Experiment:
    """What the CLI needs of an experiment.

    Attributes:
        name: the registry key (``genlab run NAME``).
        summary: one line for ``genlab list``.
        config: a dataclass (a :class:`genlab.engine.RunConfig` subclass); its fields are
            the command-line options, its field docstrings their help.
        run: trains from a config, returns the run directory.
        evaluate: ``genlab eval RUN_DIR`` -> metrics dict (optional).
        sample: ``genlab sample RUN_DIR --n N`` -> uint8 (N, 28, 28) (optional).
        data_parallel: trains one model on several processes when launched by ``torchrun``
            (:mod:`genlab.distributed`); a ``torchrun`` launch of any other experiment is refused.

    ``genlab bench NAME`` runs ``genlab.benchmarks.<NAME>.main`` (the benchmark imports the experiment).
    """

    name: str
    summary: str
    config: type
    run: Callable[[Any], Path]
    evaluate: Callable[[Path], dict] | None = None
    sample: Callable[[Path, int, int], Any] | None = None
    data_parallel: bool = False


def get(name: str) -> Experiment:
    """The registered experiment ``name``. Raises UnknownNameError (a GenlabError and a KeyError)
    naming the known ones."""
    if name not in REGISTRY:
        raise UnknownNameError(f"unknown experiment {name!r}; known: {', '.join(sorted(REGISTRY))} (see `genlab list`)")
    return importlib.import_module(REGISTRY[name]).EXPERIMENT


def one_shot(name: str, summary: str, config: type, compute: Callable[[Any, Path], Record],
             captions: dict[str, str] | Callable[[Any], dict[str, str]]) -> Experiment:
    """An experiment computed in one go on the CPU, in seconds and deterministically (minimax,
    bandit, divergence): no checkpoint; ``--resume`` runs it again from the start. Its lifecycle is
    :func:`genlab.engine.run_once` (``compute(config, run_path)`` returns the run's record)."""
    from genlab.engine import run_once

    return Experiment(name, summary, config, functools.partial(run_once, name, compute=compute, captions=captions))
