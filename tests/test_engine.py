"""Checkpoints, RNG state and the run directory."""

import random

import numpy as np
import pytest
import torch

from genlab.engine import (RunConfig, RunDir, load_checkpoint, rng_state, save_checkpoint, seed_everything,
                           set_rng_state)


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
        RunConfig(epochs=0)
    with pytest.raises(ValueError, match="--resume needs --out"):
        RunConfig(resume=True)
    config = RunConfig(out=tmp_path / "run")
    run = RunDir("x", config, torch.device("cpu"))
    save_checkpoint(run.checkpoint, {"step": 1})
    with pytest.raises(FileExistsError, match="--resume"):
        RunDir("x", RunConfig(out=tmp_path / "run"), torch.device("cpu"))
    with pytest.raises(FileNotFoundError, match="drop --resume"):
        load_checkpoint(tmp_path / "none.pt")


def test_the_precision_probe_leaves_the_global_random_stream_alone():
    from genlab.engine import gemm_flops

    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    gemm_flops(torch.float32, torch.device("cpu"), n=64, repeats=1)
    torch.testing.assert_close(torch.rand(3), expected, rtol=0, atol=0)
