"""Every registered experiment is reachable through the CLI with documented options."""

import dataclasses

import pytest

from conftest import genlab
from genlab import experiments
from genlab.engine import RunConfig


@pytest.mark.parametrize("name", sorted(experiments.REGISTRY))
def test_experiment_is_registered_with_a_documented_config(name):
    exp = experiments.get(name)
    assert exp.name == name
    assert issubclass(exp.config, RunConfig)
    help_text = genlab("run", name, "--help").stdout
    # options an experiment has no use for (e.g. --epochs of the 2-D WGAN) may be suppressed; these never are
    for option in ("--seed", "--out", "--device"):
        assert option in help_text, (name, option)
    assert "Random seed" in help_text  # field docstrings become the help
    names = [f.name for f in dataclasses.fields(exp.config)]
    assert len(names) == len(set(names))


def test_list_names_every_experiment():
    listed = genlab("list").stdout
    for name in experiments.REGISTRY:
        assert name in listed
