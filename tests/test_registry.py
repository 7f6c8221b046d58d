"""Every registered experiment is reachable through the CLI with documented options, refuses a
resume that does not match, and resumes to the uninterrupted run's numbers.

The CLI runs in the test's process (conftest.genlab_here): these tests are about what the commands
write, and a new interpreter per command cost about 4 s of imports each, 40 commands here.
"""

import json

import pytest
import tyro

from conftest import genlab_here
from genlab import experiments
from genlab.engine import STOP_AFTER_STEPS_ENV, RunConfig, config_from_dict, config_to_dict, load_checkpoint
from smoke_args import RESUME_ARGS, SMOKE_ARGS


@pytest.mark.parametrize("name", sorted(experiments.REGISTRY))
def test_experiment_is_registered_with_a_documented_config(name):
    exp = experiments.get(name)
    assert exp.name == name
    assert issubclass(exp.config, RunConfig)
    help_text = genlab_here("run", name, "--help").stdout
    # options an experiment has no use for (e.g. --epochs of the 2-D WGAN) may be suppressed; these never are
    for option in ("--seed", "--out", "--device"):
        assert option in help_text, (name, option)
    assert "Random seed" in help_text  # field docstrings become the help


def test_list_names_every_experiment():
    listed = genlab_here("list").stdout
    for name in experiments.REGISTRY:
        assert name in listed


def test_every_experiment_has_a_smoke_configuration():
    assert set(SMOKE_ARGS) == set(experiments.REGISTRY)


def _with_pairs(args, request):
    """``args`` with ``{pairs}`` replaced by the path of the ``pairs`` file (conftest)."""
    return [str(request.getfixturevalue("pairs")) if a == "{pairs}" else a for a in args]


@pytest.mark.parametrize("name", sorted(experiments.REGISTRY))
def test_every_config_comes_back_equal_from_its_saved_json(name, tmp_path, request):
    """What a run saves of its config (config.json, the checkpoint) rebuilds the same config, tuples
    and Paths included, by the field types alone (genlab eval and --resume rely on it)."""
    exp = experiments.get(name)
    config = tyro.cli(exp.config, args=[*_with_pairs(SMOKE_ARGS[name], request), "--out", str(tmp_path / "run")])
    saved = json.loads(json.dumps(config_to_dict(config)))
    assert config_from_dict(exp.config, saved) == config


def _files(path):
    return {p.relative_to(path): p.read_bytes() for p in path.rglob("*") if p.is_file()}


def test_resume_is_validated_before_the_run_directory_changes(tmp_path):
    out = tmp_path / "run"
    args = [*SMOKE_ARGS["minimax"], "--device", "cpu", "--out", str(out)]
    genlab_here("run", "minimax", *args)
    before = _files(out)
    proc = genlab_here("run", "bandit", "--resume", "--out", str(out), check=False)
    assert proc.returncode == 2 and "holds a minimax run, not a bandit run" in proc.stderr
    changed = [*args, "--iterations", "31", "--resume"]  # the last --iterations wins
    proc = genlab_here("run", "minimax", *changed, check=False)
    assert proc.returncode == 2 and "--iterations saved 30, given 31" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert _files(out) == before
    proc = genlab_here("run", "minimax", *args, "--resume")  # same options, no checkpoint yet: from the start
    assert "no checkpoint yet; starting the run from the beginning" in proc.stdout


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(RESUME_ARGS))
def test_interrupted_and_resumed_equals_uninterrupted(name, tmp_path, request):
    """The Run's test hook stops the run at step k as Ctrl-C would; the checkpoint loads, and
    the resumed run writes the same per-step metrics, bit for bit, as the uninterrupted one."""
    args, k, compared = RESUME_ARGS[name]
    args = [*_with_pairs(args, request), "--device", "cpu"]
    straight, part = tmp_path / "straight", tmp_path / "part"
    genlab_here("run", name, *args, "--out", str(straight))
    proc = genlab_here("run", name, *args, "--out", str(part), check=False, env_extra={STOP_AFTER_STEPS_ENV: str(k)})
    assert proc.returncode == 130 and f"interrupted at step {k}" in proc.stdout, proc.stderr
    assert load_checkpoint(part / "checkpoints" / "last.pt")["step"] == k
    assert "resuming" in genlab_here("run", name, *args, "--out", str(part), "--resume").stdout
    assert (part / compared).read_bytes() == (straight / compared).read_bytes()


@pytest.mark.parametrize("name", ["minimax", "bandit", "divergence"])
def test_one_shot_experiments_refuse_epochs_and_data_dir(name, tmp_path):
    """They read no data and have no epochs: the options do not exist, rather than being ignored."""
    assert not {"epochs", "data_dir"} & set(experiments.get(name).config.__dataclass_fields__)
    proc = genlab_here("run", name, "--epochs", "3", "--data-dir", str(tmp_path), "--out", str(tmp_path / "run"),
                       check=False)
    assert proc.returncode == 2 and "--epochs" in proc.stderr and "--data-dir" in proc.stderr
    assert not (tmp_path / "run").exists()


def test_every_training_experiment_is_resumed_through_the_engine():
    """Every experiment but the three computed in one go in seconds (their --resume reruns them)
    checkpoints through genlab.engine.Run and is in the registry-wide resume test above."""
    one_shot = {"minimax", "bandit", "divergence"}
    assert set(RESUME_ARGS) == set(experiments.REGISTRY) - one_shot
