"""Checkpoints, RNG state and the run directory."""

import json
import os
import random
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from genlab.errors import GenlabError
from genlab.engine import (CHECKPOINT_SCHEMA, CurrentUnit, EpochsConfig, Run, RunConfig, RunDir, TrainingDiverged,
                           append_csv, check_checkpoint, load_checkpoint, read_csv, rng_state, save_checkpoint,
                           seed_everything, set_rng_state)


def test_rng_state_roundtrip_through_weights_only_checkpoint(tmp_path):
    seed_everything(3)
    torch.rand(5), np.random.rand(5), random.random()
    save_checkpoint(tmp_path / "c.pt", {"rng": rng_state()})
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.rand(100), np.random.rand(100), random.random()
    set_rng_state(load_checkpoint(tmp_path / "c.pt")["rng"])
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], got[0]) and np.array_equal(expected[1], got[1]) and expected[2] == got[2]


def test_checkpoint_is_atomic_and_weights_only(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, {"w": torch.ones(3), "step": 1})

    def broken_save(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        save_checkpoint(path, {"w": torch.zeros(3), "step": 2})
    monkeypatch.undo()
    state = load_checkpoint(path)  # the previous checkpoint survives intact
    assert state["step"] == 1 and torch.equal(state["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # no temporary left behind


def test_weights_only_refuses_arbitrary_objects(tmp_path):
    import datetime

    torch.save({"x": datetime.date(2020, 1, 1)}, tmp_path / "evil.pt")  # not an allow-listed type
    with pytest.raises(Exception, match="weights_only|Unsupported global"):
        load_checkpoint(tmp_path / "evil.pt")


def test_config_validation_and_run_dir_guard(tmp_path):
    with pytest.raises(ValueError, match="--epochs"):
        EpochsConfig(epochs=0)
    with pytest.raises(ValueError, match="--resume needs --out"):
        RunConfig(resume=True)
    config = RunConfig(out=tmp_path / "run")
    run = RunDir("x", config, torch.device("cpu"))
    save_checkpoint(run.checkpoint, {"step": 1})
    with pytest.raises(GenlabError, match="--resume"):
        RunDir("x", RunConfig(out=tmp_path / "run"), torch.device("cpu"))
    with pytest.raises(GenlabError, match="drop --resume"):
        load_checkpoint(tmp_path / "none.pt")


def test_truncate_rows_keeps_the_first_rows_of_csv_and_jsonl_files_byte_for_byte(tmp_path):
    run = RunDir("x", RunConfig(out=tmp_path / "run"), torch.device("cpu"))
    tasks, results = run.path / "metrics" / "tasks.csv", run.path / "metrics" / "results.jsonl"
    append_csv(tasks, [{"job": "a", "loss": 0.5}, {"job": "a", "loss": 0.25}])
    kept = tasks.read_bytes()  # header and two rows, each ending in \r\n
    append_csv(tasks, [{"job": "b", "loss": 0.125}])
    results.write_text('{"job": "a"}\n{"job": "b"}\n')
    run.truncate_rows({"tasks.csv": 2, "results.jsonl": 1, "absent.csv": 3})
    assert tasks.read_bytes() == kept and read_csv(tasks) == [{"job": "a", "loss": "0.5"}, {"job": "a", "loss": "0.25"}]
    assert results.read_text() == '{"job": "a"}\n'
    run.truncate_rows({"tasks.csv": 0})
    assert tasks.read_bytes() == b"job,loss\r\n" and read_csv(tasks) == []


def _linear_run(tmp_path, **config):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters())
    return model, opt, Run("x", RunConfig(out=tmp_path / "run", **config), torch.device("cpu"), model=model, opt=opt)


def test_sigterm_writes_a_checkpoint_and_exits_cleanly(tmp_path):
    model, opt, run = _linear_run(tmp_path)
    with pytest.raises(SystemExit) as stop, run:
        model(torch.ones(1, 3)).sum().backward()
        opt.step()
        os.kill(os.getpid(), signal.SIGTERM)  # handled by the Run: no exit yet
        run.step_done(1, 0, lambda: {"batch": 1})
    assert stop.value.code == 128 + signal.SIGTERM
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert ckpt["schema"] == CHECKPOINT_SCHEMA and ckpt["experiment"] == "x" and ckpt["step"] == 1
    assert torch.equal(ckpt["states"]["model"]["weight"], model.weight) and ckpt["progress"] == {"batch": 1}
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is given back


def test_resume_falls_back_to_the_previous_checkpoint_when_the_last_is_unreadable(tmp_path, capsys):
    model, opt, run = _linear_run(tmp_path)
    with run:
        run.checkpoint(1, 0)
        saved = model.weight.detach().clone()
        with torch.no_grad():
            model.weight.add_(1.0)
        run.checkpoint(2, 0)
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:100])  # truncated
    model, opt, run = _linear_run(tmp_path, resume=True)
    with run:
        assert run.resume()["step"] == 1
    assert torch.equal(model.weight, saved)
    err = capsys.readouterr().err
    assert f"{last} is unreadable" in err and "falling back to previous.pt" in err


def test_reopen_for_eval_falls_back_too_and_names_the_fix_when_nothing_is_readable(tmp_path, capsys):
    """genlab eval / sample (engine.reopen) read checkpoints as resume does: previous.pt when last.pt
    is truncated, the config rebuilt with out and resume set; neither readable: one GenlabError."""
    from genlab.engine import reopen

    _, _, run = _linear_run(tmp_path, seed=7)
    with run:
        run.checkpoint(1, 0)
        run.checkpoint(2, 0)
    checkpoints = tmp_path / "run" / "checkpoints"
    (checkpoints / "last.pt").write_bytes((checkpoints / "last.pt").read_bytes()[:100])
    ckpt, config = reopen(tmp_path / "run", "x", RunConfig, torch.device("cpu"))
    assert ckpt["step"] == 1 and config == RunConfig(seed=7, out=tmp_path / "run", resume=True)
    assert "falling back to previous.pt" in capsys.readouterr().err
    (checkpoints / "previous.pt").unlink()
    with pytest.raises(GenlabError, match=r"last.pt: no readable checkpoint \(nor previous.pt\); is it the "
                                          r"directory of a finished `genlab run`\?"):
        reopen(tmp_path / "run", "x", RunConfig, torch.device("cpu"))


def test_resume_refuses_a_checkpoint_of_another_experiment_or_schema(tmp_path):
    _, _, run = _linear_run(tmp_path)
    with run:
        run.checkpoint(1, 0)
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    with pytest.raises(GenlabError, match="checkpoint of a x run, not of y"):
        check_checkpoint(ckpt, "y", Path("last.pt"))
    with pytest.raises(GenlabError, match="schema none .*reads genlab.checkpoint/1"):
        check_checkpoint({"generator": {}}, "x", Path("last.pt"))


def test_step_done_checkpoints_when_the_interval_has_passed(tmp_path):
    _, _, run = _linear_run(tmp_path)
    with run:
        run.step_done(1, 0, lambda: {})
        assert not run.dir.checkpoint.exists()  # the interval has not passed
        run.every_s = 0.0
        run.step_done(2, 0, lambda: {"batch": 2})
    assert load_checkpoint(run.dir.checkpoint)["step"] == 2


def test_the_precision_probe_leaves_the_global_random_stream_alone():
    from genlab.engine import gemm_flops

    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    gemm_flops(torch.float32, torch.device("cpu"), n=64, repeats=1)
    torch.testing.assert_close(torch.rand(3), expected, rtol=0, atol=0)


def test_current_unit_resumes_its_own_unit_with_its_states_loop_state_and_rng(tmp_path):
    """A checkpoint inside unit "b" gives b back its objects, loop state and global RNG states when b
    starts again (after its objects were built from other draws); any other unit starts fresh, and
    a checkpoint between units holds no unit."""
    def session(resume):
        unit = CurrentUnit()
        return unit, Run("x", RunConfig(out=tmp_path / "run", resume=resume), torch.device("cpu"), unit=unit)

    unit, run = session(False)
    with run:
        unit.start("a", {"k": 0})
        unit.end()
        run.checkpoint(3, 1)
        assert load_checkpoint(run.dir.checkpoint)["states"]["unit"] == {}
        torch.manual_seed(0)
        model = torch.nn.Linear(3, 1)
        unit.start("b", {"k": 0}, model=model)["k"] = 5
        run.checkpoint(8, 1)
        weight, draws = model.weight.detach().clone(), torch.rand(4)  # the draws that follow the checkpoint
    unit, run = session(True)
    with run:
        run.resume()
        torch.manual_seed(1)
        model = torch.nn.Linear(3, 1)
        assert unit.start("b", {"k": 0}, model=model) == {"k": 5}
        assert torch.equal(model.weight, weight) and torch.equal(torch.rand(4), draws)
    unit, run = session(True)
    with run:
        run.resume()
        assert unit.start("c", {"k": 0}) == {"k": 0}


def test_log_rows_files_are_cut_back_to_the_checkpoint_on_resume(tmp_path):
    """Rows written after the last checkpoint are dropped on resume, byte for byte back to the rows
    the checkpoint counted; a file the checkpoint did not count starts afresh."""
    _, _, run = _linear_run(tmp_path)
    with run:
        run.log_rows("a.csv", [{"step": 1, "x": 0.5}, {"step": 2, "x": 1.5}])
        run.log_rows("b.jsonl", [{"step": 1, "y": [1, 2]}])
        run.checkpoint(2, 0)
        kept = {name: (run.path / "metrics" / name).read_bytes() for name in ("a.csv", "b.jsonl")}
        run.log_rows("a.csv", [{"step": 3, "x": 2.5}])
        run.log_rows("b.jsonl", [{"step": 3, "y": []}])
        run.log_rows("c.csv", [{"step": 3, "z": 1}])
    assert (run.path / "metrics" / "a.csv").read_text().splitlines() == ["step,x", "1,0.5", "2,1.5", "3,2.5"]
    _, _, run = _linear_run(tmp_path, resume=True)
    with run:
        run.resume()
        assert {name: (run.path / "metrics" / name).read_bytes() for name in ("a.csv", "b.jsonl")} == kept
        run.log_rows("c.csv", [{"step": 3, "z": 2}])
    assert (run.path / "metrics" / "c.csv").read_text().splitlines() == ["step,z", "3,2"]


def test_steps_numbered_by_a_unit_and_written_after_the_checkpoint_are_dropped_on_resume(tmp_path):
    """steps.jsonl is cut back to the rows the checkpoint counted, not only to its step: a unit
    that logs its own iteration numbers (wgan: 1..n per method) after the run's step has passed
    them leaves no duplicate rows when the run is resumed from the checkpoint before."""
    _, _, run = _linear_run(tmp_path)
    with run:
        run.log_steps([{"step": 1, "a/loss": 0.5}, {"step": 2, "a/loss": 0.25}])  # unit a's iterations 1, 2
        run.checkpoint(2, 1)
        kept = (run.path / "metrics" / "steps.jsonl").read_bytes()
        run.log_steps([{"step": 1, "b/loss": 0.75}, {"step": 2, "b/loss": 0.5}])  # unit b, run step 4
    _, _, run = _linear_run(tmp_path, resume=True)
    with run:
        run.resume()
        assert (run.path / "metrics" / "steps.jsonl").read_bytes() == kept
        run.log_steps([{"step": 1, "b/loss": 0.75}])
        run.checkpoint(3, 1)
    _, _, run = _linear_run(tmp_path, resume=True)
    with run:
        run.resume()
        assert [json.loads(line) for line in (run.path / "metrics" / "steps.jsonl").read_text().splitlines()] == [
            {"step": 1, "a/loss": 0.5}, {"step": 2, "a/loss": 0.25}, {"step": 1, "b/loss": 0.75}]


def test_non_finite_loss_names_the_step_and_the_checkpoint_kept(tmp_path):
    _, _, run = _linear_run(tmp_path)
    with run:
        run.log_steps([{"step": 1, "loss": 0.5}], check=("loss",))
        run.checkpoint(1, 0)
        with pytest.raises(TrainingDiverged, match=r"non-finite loss at step 2 \(loss = nan\); the last good "
                                                   r"checkpoint .*last.pt is kept"):
            run.log_steps([{"step": 2, "loss": float("nan")}], check=("loss",))


def test_non_finite_loss_before_any_checkpoint_says_that_none_is_kept(tmp_path):
    _, _, run = _linear_run(tmp_path)
    with run:
        with pytest.raises(TrainingDiverged) as err:
            run.log_rows("curves.csv", [{"step": 1, "objective": float("inf")}], check=("objective",))
    message = str(err.value)
    assert "non-finite loss at step 1 (objective = inf)" in message
    assert "no checkpoint was written yet" in message and "is kept" not in message
    assert not (run.path / "metrics" / "curves.csv").exists()  # the bad row is not written


def test_bf16_speedup_is_measured_once_per_machine_and_read_back(tmp_path, monkeypatch):
    """--precision auto reads one stored measurement, so a loaded machine cannot flip it between runs."""
    from genlab import engine

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)  # uncapped first, whatever the caller's cap
    ratios = iter([2.5, 0.1, 0.05])  # a second measurement would disagree with the first
    calls = []
    monkeypatch.setattr(engine, "_measure_bf16_speedup", lambda device: calls.append(device) or next(ratios))
    cpu = torch.device("cpu")
    engine.bf16_speedup.cache_clear()
    try:
        assert engine.bf16_speedup(cpu) == 2.5
        engine.bf16_speedup.cache_clear()  # a new process
        assert engine.bf16_speedup(cpu) == 2.5 and len(calls) == 1
        assert engine.bf16_supported(cpu) == (engine.cpu_isa() != "none")
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")  # other kernels: a new measurement
        engine.bf16_speedup.cache_clear()
        assert engine.bf16_speedup(cpu) == 0.1 and len(calls) == 2
        assert len(json.loads(engine.speedup_cache_file().read_text())) == 2
    finally:
        engine.bf16_speedup.cache_clear()


def test_deterministic_switch_sets_and_clears_torch_and_cudnn(monkeypatch):
    """--deterministic turns torch's deterministic algorithms and cuDNN's determinism on (and its
    autotuning off); the default turns them off again, in the same process."""
    from genlab.engine import use_deterministic_algorithms

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    try:
        use_deterministic_algorithms(True)
        assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
        assert not torch.backends.cudnn.benchmark and os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        use_deterministic_algorithms(False)
        assert not torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.deterministic
    finally:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic = False
