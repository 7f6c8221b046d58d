"""The GPU paths: resume on CUDA, deterministic CUDA runs, FID on the device, the bf16 probe.

Every test here is marked ``cuda`` and skipped without a GPU; the CPU suite hides the GPUs
(see conftest.py). Run them with ``GENLAB_TEST_CUDA=1 pytest -m cuda`` (scripts/gpu_check.sh).
"""

import json

import numpy as np
import pytest
import torch

from conftest import genlab, read_steps
from genlab.engine import BF16_MIN_SPEEDUP, bf16_speedup, bf16_supported, load_checkpoint
from genlab import dcgan_nets
from genlab.summaries import default_data_file

pytestmark = pytest.mark.cuda
CUDA = ["--device", "cuda"]



def test_bf16_probe_measures_native_bf16_on_this_gpu():
    device = torch.device("cuda")
    native = torch.cuda.get_device_capability(device) >= (8, 0)
    assert bf16_supported(device) == (native and bf16_speedup(device) >= BF16_MIN_SPEEDUP)
    if native:  # tensor cores: bf16 GEMMs run well above float32's (TF32 off by default)
        assert bf16_speedup(device) > BF16_MIN_SPEEDUP


def test_dcgan_resumed_on_cuda_equals_the_straight_run_when_deterministic(tmp_path):
    small = ["--subset", "320", "--fid-samples", "0", "--log-every", "1", "--epochs", "3", "--deterministic", *CUDA]
    genlab("run", "dcgan", *small, "--out", str(tmp_path / "full"))
    genlab("run", "dcgan", *small, "--max-steps", "7", "--out", str(tmp_path / "part"))
    assert load_checkpoint(tmp_path / "part" / "checkpoints" / "last.pt", "cuda")["step"] == 7
    genlab("run", "dcgan", *small, "--resume", "--out", str(tmp_path / "part"))  # RNG states mapped to CUDA
    assert read_steps(tmp_path / "part") == read_steps(tmp_path / "full")
    assert json.loads((tmp_path / "full" / "env.json").read_text())["device"] == "cuda"


@pytest.mark.parametrize("graph", [False, True])
def test_dcgan_same_seed_same_losses_on_cuda_when_deterministic(tmp_path, graph):
    args = ["--subset", "320", "--fid-samples", "0", "--log-every", "1", "--epochs", "1", "--deterministic", *CUDA]
    args += ["--cuda-graph"] if graph else []
    genlab("run", "dcgan", *args, "--out", str(tmp_path / "a"))
    genlab("run", "dcgan", *args, "--out", str(tmp_path / "b"))
    assert read_steps(tmp_path / "a") == read_steps(tmp_path / "b")


def test_gan_resumes_on_cuda(tmp_path):
    out = tmp_path / "run"
    common = ["--subset", "192", "--batch-size", "32", "--log-every", "2", "--fid-samples", "0", *CUDA, "--out", str(out)]
    genlab("run", "gan", *common, "--epochs", "1")
    genlab("run", "gan", *common, "--epochs", "2", "--resume")
    assert (out / "metrics.json").is_file()


def test_vae_resumes_on_cuda_and_refuses_to_continue_on_the_cpu(tmp_path):
    out = tmp_path / "run"
    small = ["--seeds", "2", "--batch-size", "50", "--subset", "1000", "--test-subset", "100", "--iw-samples", "5",
             "--eval-every", "10", "--log-every", "5", "--checkpoint-every", "10", "--out", str(out)]
    genlab("run", "vae", *small, "--iterations", "10", *CUDA)
    genlab("run", "vae", *small, "--iterations", "20", "--resume", *CUDA)
    proc = genlab("run", "vae", *small, "--iterations", "30", "--resume", "--device", "cpu", check=False)
    assert proc.returncode != 0 and "--device" in proc.stderr


def test_continual_resumes_on_cuda(tmp_path):
    out = tmp_path / "run"
    common = ["--tasks", "2", "--batch-size", "32", "--replay-batch", "16", "--memory-per-task", "32",
              "--fisher-samples", "32", "--eval-samples", "200", "--probe-every", "4", "--model", "mlp",
              "--hidden", "32", "--methods", "rehearsal", *CUDA, "--out", str(out)]
    genlab("run", "continual", *common, "--max-steps", "8")
    genlab("run", "continual", *common, "--max-steps", "16", "--resume")
    assert (out / "metrics.json").is_file()


@pytest.mark.parametrize("experiment", ["summarize", "t5-finetune"])
def test_transformers_resume_on_cuda(tmp_path, experiment):
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(default_data_file("xsum-subset").read_text().splitlines(keepends=True)[:200]))
    out = tmp_path / "run"
    common = ["--data", str(data), "--test-limit", "3", "--batch-size", "4", "--max-source-len", "64",
              "--max-target-len", "12", *CUDA, "--out", str(out)]
    if experiment == "summarize":
        common += ["--epochs", "1", "--d-model", "32", "--d-ff", "64", "--n-layers", "1"]
    else:
        common += ["--random-init", "--beam-size", "2"]
    genlab("run", experiment, *common, "--max-steps", "2")
    genlab("run", experiment, *common, "--max-steps", "4", "--resume")
    assert (out / "metrics.json").is_file()


def test_fid_on_the_gpu_equals_fid_on_the_cpu():
    from genlab.data import load_split
    from genlab.quality import image_quality

    test = torch.from_numpy(load_split("fashion-mnist", "test")[0].copy()).unsqueeze(1)
    real, fake = test[:2000], test[2000:4000]
    on_cpu = image_quality(fake, real, "fashion-mnist", kid_subsets=10, device="cpu")
    on_gpu = image_quality(fake, real, "fashion-mnist", kid_subsets=10, device="cuda")
    # cuDNN runs the classifier's convolutions in TF32 (torch.backends.cudnn.allow_tf32 is on by
    # default: 10-bit mantissas, u = 2^-11), so features and logits differ by ~1e-3 relative; FID
    # averages that out in its float64 statistics, the Inception Score exponentiates logits
    # (measured on an H200: FID within 1e-3, IS 8.3609 vs 8.3523, 1.0e-3).
    assert on_gpu["fid"] == pytest.approx(on_cpu["fid"], rel=5e-3)
    assert on_gpu["inception_score"] == pytest.approx(on_cpu["inception_score"], rel=5e-3)


def test_sample_draws_the_same_images_on_cuda(tmp_path):
    out = tmp_path / "run"
    genlab("run", "dcgan", "--subset", "320", "--fid-samples", "0", "--epochs", "1", *CUDA, "--out", str(out))
    genlab("sample", str(out), "--n", "16", "--out", str(tmp_path / "a.npy"))
    genlab("sample", str(out), "--n", "16", "--out", str(tmp_path / "b.npy"))
    assert np.array_equal(np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy"))
    _, generator = dcgan_nets.restore_generator(out, torch.device("cuda"))
    assert next(generator.parameters()).is_cuda
