"""The DCGAN run end to end on the real FashionMNIST: CLI smoke run, determinism, resume,
Ctrl-C, divergence handling, sampling and evaluation."""

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import genlab, genlab_here, read_epochs, read_steps
from genlab.dcgan_nets import fid_reference_features
from genlab.engine import (STOP_AFTER_STEPS_ENV, TrainingDiverged, load_checkpoint, read_csv, rng_state,
                           set_rng_state)
from genlab.errors import ConfigError
from genlab.experiments import dcgan
from genlab.record import Record
from genlab.reports.dcgan import QUALITY_FILE

SMALL = dict(subset=40, batch_size=8, fid_samples=0, log_every=1)  # 5 steps per epoch


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("smoke") / "run"
    genlab_here("run", "dcgan", "--epochs", "1", "--max-steps", "8", "--fid-samples", "2000", "--out", str(out))
    return out


def test_smoke_run_writes_every_output(smoke_run):
    for name in ("config.json", "env.json", "metrics.json", "summary.md", "checkpoints/last.pt",
                 "metrics/steps.jsonl", "figures/losses.png", "figures/d_outputs.png",
                 "figures/losses_steps.png", "figures/grid_final.png"):
        assert (smoke_run / name).is_file(), name
    assert list((smoke_run / "tb").glob("events.out.tfevents.*"))
    config = json.loads((smoke_run / "config.json").read_text())
    assert config["experiment"] == "dcgan" and config["lr"] == 1e-4 and config["batch_size"] == 64
    env = json.loads((smoke_run / "env.json").read_text())
    assert env["seed"] == 42 and env["device"] == "cpu" and env["versions"]["torch"]
    steps = read_steps(smoke_run)
    assert [r["step"] for r in steps] == list(range(1, 9))
    assert all(0 < r["d_real"] < 1 and 0 < r["d_fake"] < 1 for r in steps)
    # at initialisation D outputs about 1/2, so the losses start near 2 log 2 and log 2
    assert abs(steps[0]["loss_d"] - 2 * np.log(2)) < 0.3 and abs(steps[0]["loss_g"] - np.log(2)) < 0.3
    record = Record.read(smoke_run)
    quality = record.extra["quality"]
    assert record.metric("fid").value == quality["fid"] > 0 and record.metric("fid").headline
    assert quality["n_generated"] == 2000 and "DomainClassifier" in quality["extractor"]
    assert record.train_seconds > 0 and record.eval_seconds > 0 and record.environment["seed"] == 42
    assert {f.path for f in record.figures} >= {"figures/losses_steps.png", "figures/grid_final.png"}
    ckpt = load_checkpoint(smoke_run / "checkpoints" / "last.pt")
    assert ckpt["step"] == 8 and ckpt["epoch"] == 0 and ckpt["progress"]["batch"] == 8
    assert "| **fid** |" in (smoke_run / "summary.md").read_text()


def test_sample_and_eval_commands(smoke_run, tmp_path):
    out = tmp_path / "samples.npy"
    genlab_here("sample", str(smoke_run), "--n", "12", "--out", str(out))
    images = np.load(out)
    assert images.shape == (12, 28, 28) and images.dtype == np.uint8
    again = tmp_path / "again.npy"
    genlab_here("sample", str(smoke_run), "--n", "12", "--out", str(again))
    assert np.array_equal(images, np.load(again))  # same seed, same samples
    first = Record.read(smoke_run).metric("fid").value
    proc = genlab_here("eval", str(smoke_run))
    assert json.loads(proc.stdout)["fid"] == pytest.approx(first, rel=1e-6)  # the same generator, the same draws


@pytest.mark.parity
def test_same_seed_same_losses(tmp_path):
    a = dcgan.run(dcgan.DCGANConfig(out=tmp_path / "a", epochs=2, **SMALL))
    b = dcgan.run(dcgan.DCGANConfig(out=tmp_path / "b", epochs=2, **SMALL))
    c = dcgan.run(dcgan.DCGANConfig(out=tmp_path / "c", epochs=2, seed=7, **SMALL))
    assert read_steps(a) == read_steps(b) and len(read_steps(a)) == 10
    assert read_steps(a) != read_steps(c)


@pytest.mark.parity
def test_resume_gives_the_same_run(tmp_path):
    full = dcgan.run(dcgan.DCGANConfig(out=tmp_path / "full", epochs=3, **SMALL))
    part = tmp_path / "part"
    dcgan.run(dcgan.DCGANConfig(out=part, epochs=3, max_steps=7, **SMALL))  # stops inside epoch 2
    assert load_checkpoint(part / "checkpoints" / "last.pt")["step"] == 7
    dcgan.run(dcgan.DCGANConfig(out=part, epochs=3, resume=True, **SMALL))
    assert read_steps(part) == read_steps(full)
    assert read_epochs(part) == read_epochs(full)
    g_full = load_checkpoint(full / "checkpoints" / "last.pt")["states"]["generator"]
    g_part = load_checkpoint(part / "checkpoints" / "last.pt")["states"]["generator"]
    assert all(torch.equal(g_full[k], g_part[k]) for k in g_full)


@pytest.mark.parity
@pytest.mark.slow
def test_fid_over_epochs_leaves_the_training_run_unchanged_and_resumes(tmp_path, monkeypatch):
    """FID and KID after epochs 1 and 2 of 2: the per-step losses are byte for byte those of a run
    that does not evaluate (epoch 2 draws z and dropout masks from the global RNG after an
    evaluation, so an evaluation that drew from it would change them), the last one is the end of
    the run's FID, and a run stopped inside epoch 2 and resumed writes the same rows."""
    small = {**SMALL, "fid_samples": 200, "epochs": 2}
    # the first evaluation builds the classifier for the test features, as in a fresh run on a machine
    # whose cache folder (fid_reference_features keeps them there) does not hold them yet
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    fid_reference_features.cache_clear()
    with_eval = dcgan.run(dcgan.DCGANConfig(out=tmp_path / "eval", eval_epochs=(1, 2, 7), **small))
    without = dcgan.run(dcgan.DCGANConfig(out=tmp_path / "plain", eval_epochs=(), **small))
    assert (with_eval / "metrics/steps.jsonl").read_bytes() == (without / "metrics/steps.jsonl").read_bytes()
    assert not (without / "metrics" / QUALITY_FILE).exists()
    rows = [{k: float(v) for k, v in r.items()} for r in read_csv(with_eval / "metrics" / QUALITY_FILE)]
    assert [(r["epoch"], r["step"]) for r in rows] == [(1, 5), (2, 10)]  # epoch 7 is past --epochs
    assert all(r["fid"] > 0 and r["kid_std"] > 0 and r["seconds"] > 0 for r in rows)
    assert rows[0]["fid"] != rows[1]["fid"]
    record = Record.read(with_eval)
    table = next(t for t in record.tables if t.name == "FID and KID over epochs")
    assert [row[:4] for row in table.rows] == [[int(r["epoch"]), int(r["step"]), r["fid"], r["kid"]] for r in rows]
    assert "figures/losses_fid_kid.png" in {f.path for f in record.figures}
    assert record.metric("fid").value == rows[1]["fid"] == Record.read(without).metric("fid").value

    part = tmp_path / "part"
    dcgan.run(dcgan.DCGANConfig(out=part, eval_epochs=(1, 2), max_steps=7, **small))  # stops inside epoch 2
    dcgan.run(dcgan.DCGANConfig(out=part, eval_epochs=(1, 2), resume=True, **small))
    assert (part / "metrics/steps.jsonl").read_bytes() == (with_eval / "metrics/steps.jsonl").read_bytes()
    resumed = [{k: float(v) for k, v in r.items()} for r in read_csv(part / "metrics" / QUALITY_FILE)]
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in resumed] == \
        [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def test_eval_epochs_below_one_are_refused_with_the_fix():
    with pytest.raises(ConfigError, match="--eval-epochs must all be >= 1, got 0 5"):
        dcgan.DCGANConfig(eval_epochs=(0, 5))


def test_an_interrupt_keeps_the_previous_checkpoint_beside_the_latest(tmp_path):
    """Stopped by the Run's test hook at step 7 (inside epoch 2): exit status 130, last.pt at
    step 7 with its position in the epoch, previous.pt at the end of epoch 1."""
    args = ["--subset", "40", "--batch-size", "8", "--epochs", "2", "--fid-samples", "0", "--device", "cpu"]
    run = tmp_path / "run"
    proc = genlab("run", "dcgan", *args, "--out", str(run), check=False, env_extra={STOP_AFTER_STEPS_ENV: "7"})
    assert proc.returncode == 130 and "--resume" in proc.stdout, proc.stderr
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    assert (ckpt["step"], ckpt["epoch"], ckpt["progress"]["batch"]) == (7, 1, 2)
    assert load_checkpoint(run / "checkpoints" / "previous.pt")["step"] == 5


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    calls = {"n": 0}
    real_loss = dcgan.generator_loss

    def poisoned(logits):
        calls["n"] += 1
        loss = real_loss(logits)
        return loss * float("nan") if calls["n"] >= 8 else loss

    monkeypatch.setattr(dcgan, "generator_loss", poisoned)
    with pytest.raises(TrainingDiverged, match="non-finite loss at step 8.*last good checkpoint"):
        dcgan.run(dcgan.DCGANConfig(out=tmp_path / "nan", epochs=3, **SMALL))
    ckpt = load_checkpoint(tmp_path / "nan" / "checkpoints" / "last.pt")
    assert ckpt["step"] == 5 and ckpt["epoch"] == 1  # end of epoch 1, before the NaN
    assert all(torch.isfinite(v).all() for v in ckpt["states"]["generator"].values() if v.is_floating_point())


def test_existing_run_is_not_overwritten(smoke_run):
    proc = genlab_here("run", "dcgan", "--max-steps", "1", "--out", str(smoke_run), check=False)
    assert proc.returncode == 2 and "--resume" in proc.stderr


def test_bad_options_are_refused_with_the_fix():
    proc = genlab("run", "dcgan", "--batch-size", "1", check=False)
    assert proc.returncode == 2 and "--batch-size must be >= 2" in proc.stderr
    proc = genlab_here("run", "no-such-experiment", check=False)
    assert proc.returncode == 2 and "unknown experiment" in proc.stderr and "dcgan" in proc.stderr
    assert "dcgan" in genlab_here("list").stdout


def test_cuda_graph_is_refused_off_cuda_with_the_fix(tmp_path):
    proc = genlab_here("run", "dcgan", "--cuda-graph", "--device", "cpu", "--max-steps", "1",
                       "--out", str(tmp_path / "g"), check=False)
    assert proc.returncode == 2 and "--cuda-graph needs a CUDA device" in proc.stderr
    assert not (tmp_path / "g").exists()
    generator, discriminator, opt_g, opt_d = dcgan.build(dcgan.DCGANConfig(), torch.device("cpu"))
    with pytest.raises(ValueError, match="CUDA device"):
        dcgan.GraphedTrainStep(generator, discriminator, opt_g, opt_d, [(64, 1, 28, 28)], "fp32")


@pytest.mark.parity
def test_warm_up_is_undone_in_place_as_graph_capture_needs():
    """GraphedTrainStep's restore after its warm-up steps, on the CPU: the models, the RNG and
    Adam's state return to where they were (fresh, then after one step) without replacing
    Adam's state tensors, and the next step is the one an un-warmed run takes."""
    cpu = torch.device("cpu")
    torch.manual_seed(0)
    generator, discriminator, opt_g, opt_d = dcgan.build(dcgan.DCGANConfig(), cpu)
    real = torch.rand(8, 1, 28, 28) * 2 - 1
    autocast = torch.autocast("cpu", enabled=False)
    optimizers = (opt_g, opt_d)

    def step():
        metrics = dcgan.train_step(generator, discriminator, opt_g, opt_d, real, autocast)
        return metrics, [p.detach().clone() for p in generator.parameters()]

    for _ in range(2):  # from a fresh optimiser, then from one with state
        models = [copy.deepcopy(m.state_dict()) for m in (generator, discriminator)]
        states = [dcgan._optimizer_state_copy(opt) for opt in optimizers]
        rng = rng_state()
        expected = step()
        tensors = [id(v) for opt in optimizers for state in opt.state.values() for v in state.values()]
        step()  # a "warm-up" step to undo
        for m, state in zip((generator, discriminator), models):
            m.load_state_dict(state)
        for opt, before in zip(optimizers, states):
            dcgan._restore_optimizer_state_in_place(opt, before)
        set_rng_state(rng)
        assert [id(v) for opt in optimizers for state in opt.state.values() for v in state.values()] == tensors
        again = step()
        torch.testing.assert_close(again[0], expected[0], rtol=0, atol=0)
        for a, b in zip(again[1], expected[1]):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parity
@pytest.mark.cuda
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cuda_graph_replays_the_eager_step(precision):
    """Replayed graphs (a full and a partial batch shape) give the eager step's metrics and weights."""
    cuda = torch.device("cuda")
    data = torch.rand(200, 1, 28, 28, device=cuda) * 2 - 1
    batches = [data[:64], data[64:128], data[128:192], data[192:]]  # the last is partial (8)
    config = dcgan.DCGANConfig(precision=precision, cuda_graph=True)

    def train(graphed: bool):
        torch.manual_seed(0)
        models = dcgan.build(config, cuda, capturable=True)
        if graphed:
            step = dcgan.GraphedTrainStep(*models, [(64, 1, 28, 28), (8, 1, 28, 28)], precision)
        else:
            autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision == "bf16")
            step = lambda real: dcgan.train_step(*models, real, autocast)  # noqa: E731
        metrics = torch.stack([step(b) for b in batches * 2])  # two "epochs"
        return metrics, models[0].state_dict()

    eager, graphed = train(False), train(True)
    torch.testing.assert_close(graphed[0], eager[0], rtol=2e-3, atol=2e-3)
    for name, value in eager[1].items():
        torch.testing.assert_close(graphed[1][name], value, rtol=2e-3, atol=2e-3, msg=name)


def test_bench_quality_mode_trains_both_loops_from_the_given_seed(monkeypatch, capsys):
    """`genlab bench dcgan --quality-epochs E --seed S` hands E and S to the equal-epochs comparison
    (the training itself is a real-data run too long for the suite) and prints its JSON."""
    from genlab.benchmarks import dcgan as bench

    calls = []

    def compare(images, epochs, seed, device):
        calls.append((images.shape, epochs, seed))
        return {"seed": seed}

    monkeypatch.setattr(bench, "quality_at_equal_epochs", compare)
    bench.main(["--quality-epochs", "3", "--seed", "7", "--device", "cpu", "--json"])
    assert calls == [((60000, 28, 28), 3, 7)]
    assert json.loads(capsys.readouterr().out) == {"seed": 7}
