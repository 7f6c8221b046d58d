"""The registry of experiments: one line per experiment, one module each.

Each module defines ``EXPERIMENT = Experiment(...)``. Modules are imported lazily so that
``genlab list`` and one experiment's run do not pay for every other one's imports.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from genlab.errors import GenlabError, UnknownNameError

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

    ``genlab bench NAME`` runs ``genlab.benchmarks.<NAME>.main`` (found by the CLI: an experiment
    never imports its benchmark, the benchmark imports the experiment).
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
