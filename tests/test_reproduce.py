"""genlab reproduce: the profiles table, skipping, resuming and failing runs through the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tyro

from conftest import genlab, genlab_here
from genlab import experiments, profiles, reproduce
from genlab.record import Metric, Record


@pytest.mark.parametrize("name", sorted(experiments.REGISTRY))
def test_every_experiment_has_three_profiles_that_parse(name, tmp_path):
    assert set(profiles.PROFILES[name]) == set(profiles.PROFILE_NAMES)
    config_cls = experiments.get(name).config
    for profile in profiles.PROFILE_NAMES:
        args = [a.replace(profiles.OUT_PLACEHOLDER, str(tmp_path)) for a in profiles.profile_args(name, profile)]
        assert not {"--out", "--device", "--resume", "--export"} & set(args), (name, profile)
        try:
            config = tyro.cli(config_cls, args=[*args, "--out", str(tmp_path / profile)])
        except FileNotFoundError as err:  # the model of the t5-pretrain run, which this test does not make
            assert (name, profile) == ("t5-finetune", "full") and f"{tmp_path}/t5-pretrain/model" in str(err)
            assert profiles.profile_needs(name, profile) == ["t5-pretrain"]
            continue
        assert config.out == tmp_path / profile
    # smoke runs are smaller than quick ones, quick ones no larger than full ones (where a size is given)
    smoke = tyro.cli(config_cls, args=profiles.profile_args(name, "smoke"))
    default = config_cls() if name != "t5-finetune" else None
    if default is not None and hasattr(default, "iterations"):
        assert smoke.iterations < default.iterations


def test_profile_table_errors_name_the_fix():
    with pytest.raises(KeyError, match="choose one of smoke, quick, full"):
        profiles.profile_args("dcgan", "huge")
    with pytest.raises(KeyError, match="add it to genlab/profiles.py"):
        profiles.profile_args("no-such", "smoke")
    with pytest.raises(KeyError, match="unknown experiment 'nope'"):
        reproduce.plan(["nope"], "smoke", Path("/tmp/x"))
    with pytest.raises(KeyError, match="cannot be combined"):
        reproduce.plan(["all", "dcgan"], "smoke", Path("/tmp/x"))
    assert [s.experiment for s in reproduce.plan(["all"], "smoke", Path("/tmp/x"))] == list(experiments.REGISTRY)


def test_a_run_that_reads_another_runs_output_comes_after_it_and_is_refused_without_it(tmp_path, monkeypatch):
    out = tmp_path / "course"
    monkeypatch.setitem(profiles.PROFILES["minimax"], "smoke", ["--iterations", "3", "--out-of", "{out}/bandit/x"])
    assert profiles.profile_needs("minimax", "smoke") == ["bandit"]
    specs = reproduce.plan(["minimax", "divergence", "bandit"], "smoke", out)
    assert [s.experiment for s in specs] == ["divergence", "bandit", "minimax"]
    assert specs[2].args == ["--iterations", "3", "--out-of", f"{out.resolve()}/bandit/x"]
    assert specs[2].needs == ["bandit"] and specs[0].needs == specs[1].needs == []
    with pytest.raises(ValueError, match="minimax's smoke profile reads the run of bandit.*add bandit"):
        reproduce.plan(["minimax"], "smoke", out)
    # what it needs fails: it is not started, and says why
    monkeypatch.setitem(profiles.PROFILES["bandit"], "smoke", ["--no-such-option", "1"])
    by_name = {r.experiment: r for r in reproduce.reproduce(["minimax", "bandit"], "smoke", out, live=False, threads=1)}
    assert by_name["bandit"].status == "failed" and by_name["minimax"].status == "failed"
    assert by_name["minimax"].message == "not run: it needs the run of bandit, which failed"
    assert by_name["minimax"].returncode is None and not (out / "logs" / "minimax.log").exists()
    # with bandit's record already in the folder, minimax alone may be planned
    _record(out / "bandit", "bandit")
    assert [s.experiment for s in reproduce.plan(["minimax"], "smoke", out)] == ["minimax"]


def _record(run_dir: Path, experiment: str) -> None:
    run_dir.mkdir(parents=True)
    Record(experiment, f"{experiment} (made by the test)", metrics=[Metric("m", 1.0, headline=True)]).write(run_dir)


def test_finished_runs_are_skipped_and_a_failure_does_not_stop_the_others(tmp_path, monkeypatch):
    out = tmp_path / "course"
    _record(out / "bandit", "bandit")
    before = (out / "bandit" / "metrics.json").read_text()
    # a real failure of the real CLI: an option minimax does not have
    monkeypatch.setitem(profiles.PROFILES["minimax"], "smoke", ["--no-such-option", "1"])
    results = reproduce.reproduce(["minimax", "bandit", "divergence"], "smoke", out, live=False, threads=1)
    by_name = {r.experiment: r for r in results}
    assert list(by_name) == ["minimax", "bandit", "divergence"]
    assert by_name["bandit"].status == "skipped" and (out / "bandit" / "metrics.json").read_text() == before
    assert not (out / "logs" / "bandit.log").exists()
    assert by_name["minimax"].status == "failed" and by_name["minimax"].returncode == 2
    assert "no-such-option" in by_name["minimax"].message
    # divergence ran after the failure; whether it has a record depends on its migration to genlab.record
    assert by_name["divergence"].status in ("done", "no record") and by_name["divergence"].returncode == 0
    assert (out / "divergence" / "config.json").is_file()
    state = json.loads((out / "reproduce.json").read_text())
    assert state["profile"] == "smoke" and state["planned"] == ["minimax", "bandit", "divergence"]
    assert state["runs"]["minimax"]["status"] == "failed"
    html = (out / "report.html").read_text()
    for name in ("minimax", "bandit", "divergence"):
        assert f'<tr class="run" data-experiment="{name}"' in html
    assert "no-such-option" in html
    # another profile into the same folder is refused, naming the fix
    with pytest.raises(ValueError, match="holds a 'smoke' reproduction.*--profile smoke"):
        reproduce.reproduce(["bandit"], "quick", out, live=False)


def test_interrupted_run_is_resumed(tmp_path):
    out = tmp_path / "course"
    args = profiles.profile_args("vae", "smoke")
    # an interrupted run: a checkpoint, and (after this test's tampering) no valid record
    genlab_here("run", "vae", *args, "--max-steps", "10", "--out", str(out / "vae"))
    assert (out / "vae" / "checkpoints" / "last.pt").is_file()
    (out / "vae" / "metrics.json").unlink(missing_ok=True)
    # two runs on the CPU: forks of the preloaded interpreter (the resumed one among them)
    proc = genlab("reproduce", "vae", "bandit", "--profile", "smoke", "--device", "cpu", "--threads", "1",
                  "--out", str(out), check=False)
    runs = json.loads((out / "reproduce.json").read_text())["runs"]
    state = runs["vae"]
    assert state["resumed"] is True and state["command"][-1] == "--resume"
    log = (out / "logs" / "vae.log").read_text()
    assert "--resume" in log and "resuming" in log
    assert state["status"] in ("done", "no record") and state["returncode"] == 0
    assert runs["bandit"]["status"] == "done" and runs["bandit"]["resumed"] is False
    assert proc.returncode == (0 if state["status"] == "done" else 1)
    assert (out / "report.html").is_file() and (out / "report.md").is_file()


def _without_timing(path: Path) -> dict:
    import re

    def strip(o):
        if isinstance(o, dict):
            return {k: strip(v) for k, v in o.items() if not re.search(r"seconds|git_commit|^out$", k)}
        return [strip(v) for v in o] if isinstance(o, list) else o
    return strip(json.loads(path.read_text()))


def test_a_run_forked_from_the_preloaded_interpreter_equals_a_fresh_one(tmp_path):
    """The same run as a fresh ``python -m genlab`` and as a fork of the forkserver (which imported
    torch under this process's thread count): the same record and metrics, its own thread count
    and environment, and a failing run's exit status and error line."""
    args = ["--steps", "10", "--seeds", "2", "--estimator-samples", "200"]
    reproduce._start_forkserver([experiments.REGISTRY["bandit"]])
    specs = {preload: reproduce.RunSpec("bandit", args, tmp_path / str(preload) / "bandit",
                                        tmp_path / str(preload) / "bandit.log", "cpu", 1, preload=preload)
             for preload in (False, True)}
    results = {preload: reproduce.run_one(spec) for preload, spec in specs.items()}
    assert [r.status for r in results.values()] == ["done", "done"], [r.message for r in results.values()]
    fresh, forked = (specs[p].run_dir for p in (False, True))
    assert _without_timing(fresh / "metrics.json") == _without_timing(forked / "metrics.json")
    assert json.loads((forked / "env.json").read_text())["torch_threads"] == 1
    assert _without_timing(fresh / "env.json") == _without_timing(forked / "env.json")
    assert "$ " in specs[True].log.read_text() and "run directory:" in specs[True].log.read_text()
    bad = reproduce.RunSpec("bandit", ["--steps", "0"], tmp_path / "bad" / "bandit", tmp_path / "bad.log", "cpu",
                            preload=True)
    result = reproduce.run_one(bad)
    assert result.status == "failed" and result.returncode == 2 and "--steps" in result.message


@pytest.mark.parametrize("name", sorted(experiments.REGISTRY))
def test_what_an_experiment_asks_to_preload_exists(name):
    """The forkserver skips a module it cannot import without a word: a misspelt preload would only
    make reproduce slower, so it is checked here."""
    import importlib.util

    assert set(profiles.PRELOAD) <= set(experiments.REGISTRY)
    for module in (*reproduce._PRELOAD, experiments.REGISTRY[name], *profiles.PRELOAD.get(name, ())):
        assert importlib.util.find_spec(module) is not None, (name, module)


def test_reproduce_cli_errors(tmp_path):
    proc = genlab("reproduce", "dcgan", "--profile", "huge", "--out", str(tmp_path), check=False)
    assert proc.returncode == 2 and "invalid choice: 'huge'" in proc.stderr
    proc = genlab("reproduce", "nope", "--profile", "smoke", "--out", str(tmp_path), check=False)
    assert proc.returncode == 2 and "unknown experiment 'nope'" in proc.stderr
    proc = genlab("reproduce", "dcgan", "--profile", "smoke", "--jobs", "0", "--out", str(tmp_path), check=False)
    assert proc.returncode == 2 and "--jobs must be >= 1" in proc.stderr


@pytest.mark.parametrize("log, line", [
    ("$ genlab run x\nTraceback (most recent call last):\n  File 'a.py'\nValueError: --subset must be >= 1\n",
     "ValueError: --subset must be >= 1"),
    ("$ genlab run x\nstep 3\nerror: --device cuda asked for, but no CUDA GPU is visible; use --device cpu\n",
     "error: --device cuda asked for, but no CUDA GPU is visible; use --device cpu"),
    ("\x1b[31m╭─ Unrecognized options ──╮\n│ Unrecognized options: --nope │\n│ ───── │\n"
     "│ For full helptext, run genlab run minimax --help │\n╰────╯\n", "Unrecognized options: --nope"),
    ("epoch 1\r50%\rKilled\n", "Killed"),
])
def test_error_line_says_why(tmp_path, log, line):
    (tmp_path / "x.log").write_text(log)
    assert reproduce._error_line(tmp_path / "x.log") == line


def test_without_ray_jobs_and_address_are_refused_with_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "ray", None)  # `import ray` raises ImportError
    for kwargs in ({"jobs": 2}, {"address": "auto"}):
        with pytest.raises(RuntimeError, match=r"pip install 'genlab\[ray\]'.*or use --jobs 1"):
            reproduce.reproduce(["minimax"], "smoke", tmp_path / "c", live=False, **kwargs)
    assert not (tmp_path / "c").exists()  # refused before anything was written
