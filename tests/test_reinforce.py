"""SPEC §8: the score-function estimator, the black-box loss and `genlab run reinforce`."""

import csv

import numpy as np
import pytest
import torch

from conftest import genlab_here
from genlab.experiments.reinforce import (Classifier, Gradient, ReinforceConfig, RunningMean, Task, ZeroOneLoss,
                                          gradient_variance, load_task, sample_labels, score_function_surrogate,
                                          threshold_target, train)
from genlab.record import Record
from genlab.reports.reinforce import steps_to_reach


def _small_problem(n=5, d=3, seed=0):
    """A logistic-regression policy in float64, inputs (n, d) and a loss table c[i, y] that
    stands for an arbitrary black box (not a 0-1 loss, so that scale and offset matter)."""
    gen = torch.Generator().manual_seed(seed)
    model = Classifier(d, hidden=0).double()
    with torch.no_grad():
        model.net.weight.copy_(torch.randn(2, d, generator=gen, dtype=torch.float64))
        model.net.bias.copy_(torch.randn(2, generator=gen, dtype=torch.float64))
    x = torch.randn(n, d, generator=gen, dtype=torch.float64)
    table = 3.0 + torch.randn(n, 2, generator=gen, dtype=torch.float64)  # L(x_i, y) = table[i, y]
    return model, x, table


def _exact_gradient(model, x, table):
    """∇ (1/N) Σ_i Σ_{y ∈ {0, 1}} p(y | x_i) L(x_i, y): both labels enumerated, autograd."""
    p = torch.softmax(model(x), -1)  # (N, 2)
    objective = (p * table).sum(1).mean()
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(objective, list(model.parameters()))])


def _estimate(model, x, table, k, baseline, gen):
    logits = model(x)
    labels = sample_labels(logits, k, gen)  # (K, N)
    losses = table.T.gather(0, labels)  # (K, N): table[i, y_ki]
    surrogate = score_function_surrogate(logits, labels, losses, baseline)
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(surrogate, list(model.parameters()))])


@pytest.mark.parametrize("baseline", [0.0, 2.5, -4.0])
def test_score_function_identity_exact_when_labels_are_enumerated(baseline):
    # Σ_y p(y|x) (L(x, y) − b) ∇ log p(y|x) = ∇ Σ_y p(y|x) L(x, y) exactly, for any constant b.
    model, x, table = _small_problem()
    exact = _exact_gradient(model, x, table)
    p = torch.softmax(model(x), -1).detach()
    total = torch.zeros_like(exact)
    for i in range(len(x)):
        for y in (0, 1):
            labels = torch.tensor([[y]])
            g = torch.autograd.grad(score_function_surrogate(model(x[i:i + 1]), labels, table[i:i + 1, y:y + 1],
                                                             baseline), list(model.parameters()))
            total += p[i, y] * torch.cat([t.reshape(-1) for t in g]) / len(x)
    torch.testing.assert_close(total, exact, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("baseline", [0.0, 3.0])
def test_estimator_averaged_over_many_samples_equals_exact_gradient(baseline):
    model, x, table = _small_problem()
    exact = _exact_gradient(model, x, table)
    gen = torch.Generator().manual_seed(1)
    chunks = torch.stack([_estimate(model, x, table, 20_000, baseline, gen) for _ in range(20)])  # (20, P)
    mean, stderr = chunks.mean(0), chunks.std(0) / np.sqrt(len(chunks))
    assert ((mean - exact).abs() <= 5 * stderr + 1e-9).all(), (mean, exact, stderr)
    # the check has power: the error is far below the size of the gradient itself
    assert (mean - exact).norm() < 0.05 * exact.norm()


def test_baseline_near_the_mean_loss_reduces_variance_without_bias():
    model, x, table = _small_problem()
    gen = torch.Generator().manual_seed(2)
    plain = torch.stack([_estimate(model, x, table, 1, 0.0, gen) for _ in range(1500)])
    based = torch.stack([_estimate(model, x, table, 1, float(table.mean()), gen) for _ in range(1500)])
    assert based.var(0).sum() < 0.2 * plain.var(0).sum()  # losses ~3 ± 1: b = 3 removes most of the spread
    exact = _exact_gradient(model, x, table)
    stderr = based.std(0) / np.sqrt(len(based))
    assert ((based.mean(0) - exact).abs() <= 5 * stderr + 1e-9).all()


def test_sampled_labels_follow_the_softmax():
    logits = torch.tensor([[0.0, 0.0], [2.0, -1.0], [-3.0, 1.0]])
    labels = sample_labels(logits, 200_000, torch.Generator().manual_seed(3))  # (K, N)
    assert labels.shape == (200_000, 3) and labels.dtype == torch.int64
    freq = labels.double().mean(0)
    p1 = torch.softmax(logits.double(), -1)[:, 1]
    assert ((freq - p1).abs() <= 5 * (p1 * (1 - p1) / 200_000).sqrt()).all()


def test_black_box_loss_gives_values_but_no_gradient():
    loss = ZeroOneLoss(threshold_target)
    x = torch.tensor([[1.0], [7.0], [5.0], [9.5]], requires_grad=True)
    model = Classifier(1, hidden=4)
    logits = model(x)
    y = torch.tensor([[0, 1, 1, 0], [1, 1, 0, 0]])
    out = loss(x, y)
    assert torch.equal(out, torch.tensor([[0.0, 0.0, 1.0, 1.0], [1.0, 0.0, 0.0, 1.0]]))  # t = 0, 1, 0, 1
    assert not out.requires_grad and out.grad_fn is None
    with pytest.raises(RuntimeError, match="does not require grad"):
        torch.autograd.grad(out.sum(), [x])
    # even when the "loss" is fed tensors attached to the graph, nothing reaches the parameters through it
    soft = torch.softmax(logits, -1)
    with pytest.raises(RuntimeError, match="does not require grad"):
        torch.autograd.grad(loss(x, (soft[:, 1:] > 0.5).long().T).sum(), list(model.parameters()))


def test_mnist_black_box_knows_the_true_labels_and_refuses_strangers():
    task = load_task("mnist-gt5", subset=2000)
    assert task.x_train.shape == (2000, 784) and task.x_train.dtype == torch.float32
    assert 0.0 <= task.x_train.min() and task.x_train.max() <= 1.0
    truth = task.t_train[None, :]
    assert torch.equal(task.loss(task.x_train, truth), torch.zeros(1, 2000))
    assert torch.equal(task.loss(task.x_train, 1 - truth), torch.ones(1, 2000))
    with pytest.raises(KeyError, match="input 1 of the batch"):
        task.loss(torch.stack([task.x_train[0], torch.rand(784)]), torch.zeros(1, 2, dtype=torch.long))
    assert 0.60 < task.majority_accuracy < 0.61  # 6,031 of the 10,000 test digits are <= 5


def test_running_mean_is_bias_corrected():
    b = RunningMean(0.9)
    assert b.value == 0.0
    b.update(0.4)
    assert b.value == pytest.approx(0.4)
    b.update(0.2)
    assert b.value == pytest.approx((0.9 * 0.1 * 0.4 + 0.1 * 0.2) / (1 - 0.81))


def test_gradient_variance_matches_the_closed_form():
    # one input: every minibatch is the same, so all spread comes from the sampled label y, and
    # Var = Σ_y p(y) ||g_y||² − ||Σ_y p(y) g_y||² with g_y = (L(y) − b) ∇ log p(y | x).
    model, x, table = _small_problem(n=1)
    model = model.float()
    x, table = x.float(), table.float()
    t = torch.zeros(1, dtype=torch.long)
    task = Task("toy", x, t, x, t, ZeroOneLoss(lambda _: np.zeros(1, dtype=np.int64)))
    task.loss = lambda xb, y: table[0][y]  # L(x, y) = table[0, y]
    grad = Gradient("reinforce-plain", model, task, 1, RunningMean(0.9))
    p = torch.softmax(model(x), -1)[0].detach().double()
    g = [torch.cat([a.reshape(-1) for a in torch.autograd.grad(
        score_function_surrogate(model(x), torch.tensor([[y]]), table[:, y:y + 1]), list(model.parameters()))]).double()
        for y in (0, 1)]
    mean = p[0] * g[0] + p[1] * g[1]
    var = p[0] * g[0].square().sum() + p[1] * g[1].square().sum() - mean.square().sum()
    out = gradient_variance(grad, x, t, 1, 4000, torch.Generator().manual_seed(4))
    assert out["grad_var"] == pytest.approx(var.item(), rel=0.1)
    assert out["grad_var_labels"] == pytest.approx(var.item(), rel=0.1)
    assert out["grad_sq_norm"] == pytest.approx(mean.square().sum().item(), rel=0.1, abs=0.1 * var.item())
    sup = gradient_variance(Gradient("supervised", model, task, 1, RunningMean(0.9)), x, t, 1, 8,
                            torch.Generator().manual_seed(4))
    assert sup["grad_var"] == pytest.approx(0.0, abs=1e-12) and sup["grad_var_labels"] == 0.0


@pytest.mark.parity
def test_training_on_the_toy_learns_and_is_reproducible():
    task = load_task("threshold", subset=4096)
    config = ReinforceConfig(task="threshold", steps=400, eval_every=100, variance_every=0, seeds=1)
    tensors = (task.x_train, task.t_train, task.x_test[:2000], task.t_test[:2000])
    a = train("reinforce-baseline", 5, task, config, torch.device("cpu"), *tensors)
    b = train("reinforce-baseline", 5, task, config, torch.device("cpu"), *tensors)
    assert a["curve"] == b["curve"]
    assert a["curve"][-1]["test_accuracy"] > 0.9 > a["curve"][0]["test_accuracy"]
    assert a["curve"][-1]["baseline"] > 0  # the running mean of a positive loss
    sup = train("supervised", 5, task, config, torch.device("cpu"), *tensors)
    assert sup["curve"][0]["test_accuracy"] == a["curve"][0]["test_accuracy"]  # same initial weights per seed
    assert steps_to_reach(sup["curve"], 0.0) == 0 and steps_to_reach(sup["curve"], 1.01) is None


def test_config_validation():
    with pytest.raises(ValueError, match="--samples-per-input"):
        ReinforceConfig(samples_per_input=0)
    with pytest.raises(ValueError, match="nothing to train"):
        ReinforceConfig(estimator=(), supervised=False)
    with pytest.raises(ValueError, match="--baseline-decay"):
        ReinforceConfig(baseline_decay=1.0)
    assert ReinforceConfig(estimator=("baseline", "baseline")).methods == ["reinforce-baseline", "supervised"]


@pytest.mark.parity
@pytest.mark.slow
def test_cli_smoke_on_real_mnist_writes_every_output_and_resumes(tmp_path):
    out = tmp_path / "run"
    args = ["run", "reinforce", "--steps", "20", "--seeds", "2", "--subset", "512", "--eval-every", "5",
            "--variance-every", "10", "--variance-estimates", "4", "--samples-per-input", "2", "--out", str(out)]
    genlab_here(*args)
    for name in ("config.json", "env.json", "metrics.json", "summary.md", "metrics/curves.csv",
                 "checkpoints/last.pt", "figures/accuracy.png", "figures/objective.png", "figures/grad_variance.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    record = Record.read(out)
    metrics = record.extra
    plain = record.metric("final_accuracy_reinforce-plain")
    assert plain.headline and plain.reference.value == 75 and plain.n_seeds == 2
    assert plain.value == pytest.approx(100 * np.mean(metrics["methods"]["reinforce-plain"]["final_accuracy"]))
    assert set(metrics["methods"]) == {"reinforce-plain", "reinforce-baseline", "supervised"}
    assert metrics["steps"] == 20 and len(metrics["methods"]["supervised"]["final_accuracy"]) == 2
    with (out / "metrics" / "curves.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 * 2 * 5  # methods x seeds x evaluations (0, 5, 10, 15, 20)
    assert "steps to 75 %" in (out / "summary.md").read_text()
    assert genlab_here(*args, check=False).returncode == 2  # refuses to overwrite a run
    resumed = genlab_here(*args, "--resume")
    assert "6 of 6 trainings already done" in resumed.stdout


@pytest.mark.slow
def test_cli_smoke_threshold_task(tmp_path):
    out = tmp_path / "toy"
    genlab_here("run", "reinforce", "--task", "threshold", "--estimator", "plain", "--no-supervised", "--steps", "30",
                "--seeds", "1", "--variance-every", "15", "--variance-estimates", "3", "--out", str(out))
    record = Record.read(out)
    metrics = record.extra
    assert record.metric("final_accuracy_reinforce-plain").reference is None  # SPEC §8's 75 % is MNIST's
    assert list(metrics["methods"]) == ["reinforce-plain"] and 0.4 < metrics["majority_accuracy"] < 0.6
    assert (out / "figures" / "grad_variance.png").is_file()
