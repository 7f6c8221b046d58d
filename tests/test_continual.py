"""SPEC §9: EWC's Fisher diagonal and penalty, the replay memory, the forgetting measures, and
the experiment through the real CLI on MNIST."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import tyro
from torch import nn

from conftest import genlab_here
from genlab.engine import STOP_AFTER_STEPS_ENV
from genlab.errors import ConfigError
from genlab.experiments import continual as cl
from genlab.record import Record
from smoke_args import SMOKE_ARGS


def test_fisher_diagonal_matches_logistic_regression_closed_form():
    # Multinomial logistic regression p(y | x) = softmax(W x + b): the gradient of
    # log p(y | x) is (e_y - p) x^T for W and (e_y - p) for b, so the empirical Fisher
    # diagonal is the mean of their squares.
    torch.manual_seed(0)
    model = nn.Linear(5, 3).double()
    x, y = torch.randn(37, 5, dtype=torch.float64), torch.randint(0, 3, (37,))
    residual = F.one_hot(y, 3).double() - torch.softmax(model(x), dim=1)  # (N, 3)
    expected_w = (residual.pow(2).unsqueeze(2) * x.pow(2).unsqueeze(1)).mean(0)  # (3, 5)
    expected_b = residual.pow(2).mean(0)
    fisher = cl.fisher_diagonal(model, x, y, chunk_size=10)  # chunks of 10 and a ragged last one
    torch.testing.assert_close(fisher["weight"], expected_w, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(fisher["bias"], expected_b, rtol=1e-10, atol=1e-12)


def test_exact_fisher_matches_logistic_regression_closed_form():
    # The Fisher proper takes the expectation over y ~ p(y | x): for W,
    # Σ_c p_c (δ_kc − p_k)² x_j² = p_k (1 − p_k) x_j², and p_k (1 − p_k) for b.
    torch.manual_seed(0)
    model = nn.Linear(5, 3).double()
    x, y = torch.randn(37, 5, dtype=torch.float64), torch.randint(0, 3, (37,))
    p = torch.softmax(model(x), dim=1).detach()
    expected_w = ((p * (1 - p)).unsqueeze(2) * x.pow(2).unsqueeze(1)).mean(0)
    fisher = cl.fisher_diagonal(model, x, y, chunk_size=10, kind="exact")
    torch.testing.assert_close(fisher["weight"], expected_w, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(fisher["bias"], (p * (1 - p)).mean(0), rtol=1e-10, atol=1e-12)


@pytest.mark.parity
@pytest.mark.parametrize("kind", ["empirical", "exact"])
@pytest.mark.parametrize("make", [lambda: cl.MLP(16), cl.CNN], ids=["mlp-per-layer", "cnn-vmap"])
def test_fisher_diagonal_of_a_network_matches_per_sample_autograd(make, kind):
    # The MLP takes the per-layer closed form, the CNN the vmap path; both against one
    # backward pass per (example, label) weighted as the definition says.
    torch.manual_seed(1)
    model = make()
    x, y = torch.randn(6, 784), torch.randint(0, 10, (6,))
    expected = {k: torch.zeros_like(p) for k, p in model.named_parameters()}
    for xi, yi in zip(x, y):
        log_p = F.log_softmax(model(xi[None]), dim=1)[0]
        labels = [(int(yi), 1.0)] if kind == "empirical" else [(c, float(log_p[c].detach().exp())) for c in range(10)]
        for c, weight in labels:
            grads = torch.autograd.grad(log_p[c], list(model.parameters()), retain_graph=True)
            for (k, _), g in zip(model.named_parameters(), grads):
                expected[k] += weight * g.pow(2) / len(x)
    fisher = cl.fisher_diagonal(model, x, y, chunk_size=4, kind=kind)
    for k in expected:
        torch.testing.assert_close(fisher[k], expected[k], rtol=1e-4, atol=1e-9)


def test_fisher_diagonal_refuses_an_unknown_kind():
    with pytest.raises(ValueError, match="empirical"):
        cl.fisher_diagonal(nn.Linear(3, 2), torch.randn(4, 3), torch.zeros(4, dtype=torch.int64), kind="true")


def test_config_refuses_adam_with_the_proximal_ewc_step():
    with pytest.raises(ValueError, match="--ewc-update gradient"):
        cl.ContinualConfig(optimizer="adam")
    cl.ContinualConfig(optimizer="adam", ewc_update="gradient")
    cl.ContinualConfig(optimizer="adam", methods=("naive",))  # no EWC: nothing to refuse


@pytest.mark.parametrize("n", [-1, 60000, 70000])
def test_config_refuses_a_validation_split_outside_the_training_set(n):
    with pytest.raises(ConfigError, match="pass 0 <= N < 60000") as err:
        cl.ContinualConfig(validation=n)
    assert "\n" not in str(err.value)
    cl.ContinualConfig(validation=59999)
    with pytest.raises(ConfigError, match="--eval-samples is at most 20000"):
        cl.ContinualConfig(validation=20000, eval_samples=20001)


def test_validation_split_partitions_the_training_set_the_same_for_every_seed():
    kept, held = cl.validation_split(500)
    assert held.dtype == kept.dtype == torch.int64 and len(held) == 500 and len(kept) == 59500
    assert not bool(torch.isin(held, kept).any())
    assert torch.equal(torch.cat([kept, held]).sort().values, torch.arange(60000))
    assert not torch.equal(held, torch.arange(500)) and not torch.equal(held, torch.arange(59500, 60000))
    assert bool(torch.isin(held, cl.validation_split(1000)[1]).all())  # nested: more held out, a superset
    # The split of a run does not depend on its --seed: the same images trained on and scored.
    train_x, train_y = cl.load_mnist("train", None, torch.device("cpu"))
    runs = [cl.run_data(cl.ContinualConfig(validation=500, seed=seed), torch.device("cpu")) for seed in (1, 2)]
    for data in runs:
        assert torch.equal(data["eval_x"], train_x[held]) and torch.equal(data["eval_y"], train_y[held])
        assert torch.equal(data["train_x"], train_x[kept]) and torch.equal(data["train_y"], train_y[kept])
    test_x, _ = cl.load_mnist("test", None, torch.device("cpu"))
    default = cl.run_data(cl.ContinualConfig(), torch.device("cpu"))  # off: all 60,000 trained on, test scored
    assert torch.equal(default["train_x"], train_x) and torch.equal(default["eval_x"], test_x)


def test_smoke_run_with_validation_scores_only_held_out_training_images(tmp_path, monkeypatch):
    scored = []
    evaluate = cl.evaluate_tasks
    monkeypatch.setattr(cl, "evaluate_tasks", lambda model, x, *a, **k: scored.append(x) or evaluate(model, x, *a, **k))
    config = tyro.cli(cl.ContinualConfig, args=[*SMOKE_ARGS["continual"], "--validation", "500", "--device", "cpu",
                                                "--out", str(tmp_path / "run")])
    out = cl.run(config)
    train_x, _ = cl.load_mnist("train", None, torch.device("cpu"))
    held_x = train_x[cl.validation_split(500)[1]]
    # 3 methods x 2 tasks: the accuracy rows on the first 200 (--eval-samples) held-out images; the task-1
    # probes on the first 1,000 evaluation images, here all 500
    rows, probes = [x for x in scored if len(x) == 200], [x for x in scored if len(x) == 500]
    assert len(rows) == 6 and len(probes) == 3 * 16 // 4 and len(rows) + len(probes) == len(scored)
    assert all(torch.equal(x, held_x[:200]) for x in rows) and all(torch.equal(x, held_x) for x in probes)
    record = Record.read(out)
    assert "held-out training images" in record.title
    assert "Accuracies on validation: 200 of 500 held-out training images." in record.tables[0].caption
    assert all("mean validation accuracy" in m.description for m in record.metrics if m.name.startswith("average"))
    assert all(m.reference is None for m in record.metrics)  # no test-set anchor for validation scores
    assert "validation accuracy" in (out / "summary.md").read_text()


def _anchors(model, tasks, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [({k: torch.rand(p.shape, generator=gen, dtype=p.dtype) for k, p in model.named_parameters()},
             {k: torch.randn(p.shape, generator=gen, dtype=p.dtype) for k, p in model.named_parameters()})
            for _ in range(tasks)]


def _consolidated_ewc(model, anchors) -> cl.EWC:
    """An EWC of ``model`` with each (Fisher, θ*) of ``anchors`` consolidated at its own θ*;
    the model's parameters are then moved to a random point (torch.randn_like)."""
    ewc = cl.EWC(model)
    with torch.no_grad():
        for fisher, star in anchors:
            for k, p in model.named_parameters():
                p.copy_(star[k])
            ewc.consolidate(fisher)
        for p in model.parameters():
            p.copy_(torch.randn_like(p))
    return ewc


def test_ewc_penalty_by_hand():
    params = {"w": torch.tensor([1.0, 2.0])}
    anchors = [({"w": torch.tensor([0.5, 2.0])}, {"w": torch.tensor([0.0, 1.0])}),
               ({"w": torch.tensor([1.0, 0.0])}, {"w": torch.tensor([3.0, 5.0])})]
    # λ/2 [0.5·1² + 2·1² + 1·(−2)² + 0] = 3 · 6.5 / 2
    assert float(cl.ewc_penalty(params, anchors, 3.0)) == pytest.approx(3.0 * 6.5 / 2)
    assert float(cl.ewc_penalty(params, [], 3.0)) == 0.0


@pytest.mark.parity
def test_consolidated_ewc_penalty_and_gradient_match_the_per_task_sum():
    torch.manual_seed(2)
    model = cl.MLP(hidden=8).double()
    anchors = _anchors(model, tasks=3)
    ewc = _consolidated_ewc(model, anchors)
    lam = 7.5
    params = dict(model.named_parameters())
    penalty = cl.ewc_penalty(params, anchors, lam)
    assert ewc.tasks == 3
    assert ewc.penalty(lam) == pytest.approx(float(penalty.detach()), rel=1e-10)
    penalty.backward()
    expected = {k: p.grad.clone() for k, p in params.items()}
    model.zero_grad(set_to_none=True)
    ewc.add_gradient_(lam)
    for k, p in params.items():
        torch.testing.assert_close(p.grad, expected[k], rtol=1e-10, atol=1e-12)
    # The penalty vanishes at θ*, when only one task is stored.
    single = cl.EWC(model)
    single.consolidate(anchors[0][0])
    assert single.penalty(lam) == pytest.approx(0.0, abs=1e-9)


def test_ewc_proximal_step_solves_its_subproblem():
    # θ' = argmin_u ||u − θ||² / (2η) + λ/2 Σ_t F_t (u − θ*_t)²  <=>  (θ' − θ)/η + ∇penalty(θ') = 0,
    # and the step stays finite where a gradient step with the same η would overshoot.
    torch.manual_seed(3)
    model = cl.MLP(hidden=6).double()
    anchors = _anchors(model, tasks=2)
    ewc = _consolidated_ewc(model, anchors)
    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    lr, lam = 0.1, 1e4  # lr·λ·F up to 2e3: far past the gradient step's stability limit of 2
    ewc.proximal_(lam, lr)
    params = dict(model.named_parameters())
    penalty = cl.ewc_penalty(params, anchors, lam)
    penalty.backward()
    for k, p in params.items():
        optimality = (p.detach() - before[k]) / lr + p.grad
        torch.testing.assert_close(optimality, torch.zeros_like(p), rtol=0, atol=1e-8 * lam)
    # The new point lies between the old one and the Fisher-weighted mean of the anchors.
    center = {k: sum(f[k] * s[k] for f, s in anchors) / sum(f[k] for f, _ in anchors) for k in params}
    for k, p in params.items():
        assert bool(((p.detach() - center[k]).abs() <= (before[k] - center[k]).abs() + 1e-12).all())


def test_replay_memory_is_balanced_across_tasks():
    gen = torch.Generator().manual_seed(0)
    memory = cl.ReplayMemory(per_task=50)
    with pytest.raises(ValueError, match="empty"):
        memory.sample(4, gen)
    for _ in range(3):
        memory.add_task(1000, gen)
    assert len(memory) == 150 and memory.tasks == 3
    for stored in memory.indices:
        assert len(torch.unique(stored)) == 50 and int(stored.max()) < 1000
    for n in (300, 10, 2):
        tasks, idx = memory.sample(n, gen)
        counts = torch.bincount(tasks, minlength=3)
        assert int(counts.sum()) == n and int(counts.max() - counts.min()) <= 1
        for t in range(3):  # every index replayed for task t was stored for task t
            assert bool(torch.isin(idx[tasks == t], memory.indices[t]).all())
    # The remainder goes to different tasks over draws, so no task is favoured.
    extra = torch.zeros(3)
    for _ in range(300):
        extra += torch.bincount(memory.sample(4, gen)[0], minlength=3) - 1
    assert extra.min() > 60


def test_forgetting_measures_by_hand():
    r = np.array([[0.9, np.nan, np.nan],
                  [0.7, 0.95, np.nan],
                  [0.6, 0.9, 0.97]])
    assert cl.average_accuracy(r) == pytest.approx((0.6 + 0.9 + 0.97) / 3)
    assert cl.backward_transfer(r) == pytest.approx(((0.6 - 0.9) + (0.9 - 0.95)) / 2)
    assert cl.forgetting(r) == pytest.approx(((0.9 - 0.6) + (0.95 - 0.9)) / 2)
    assert cl.plasticity(r) == pytest.approx((0.9 + 0.95 + 0.97) / 3)
    assert cl.backward_transfer(r[:1, :1]) == 0.0 and cl.forgetting(r[:1, :1]) == 0.0


def test_permutations_are_permutations_fixed_by_the_seed():
    perms = cl.permutations(4, seed=3)
    assert perms.shape == (4, 784) and perms.dtype == torch.int64
    for p in perms:
        assert torch.equal(torch.sort(p).values, torch.arange(784))
    assert torch.equal(perms, cl.permutations(4, seed=3))
    assert not torch.equal(perms[0], perms[1]) and not torch.equal(perms, cl.permutations(4, seed=4))


@pytest.mark.slow
def test_cli_smoke_run_writes_every_output_and_resumes(tmp_path):
    out = tmp_path / "run"
    common = ["--tasks", "2", "--max-steps", "16", "--batch-size", "32", "--replay-batch", "16",
              "--memory-per-task", "32", "--fisher-samples", "32", "--eval-samples", "200", "--probe-every", "4",
              "--model", "mlp", "cnn", "--hidden", "32", "--methods", "naive", "ewc", "rehearsal", "--ewc-lambdas", "1",
              "100", "--out", str(out)]
    genlab_here("run", "continual", *common)
    for name in ("config.json", "env.json", "metrics.json", "summary.md", "checkpoints/last.pt",
                 "metrics/results.jsonl", "metrics/tasks.csv", "metrics/summary.csv"):
        assert (out / name).is_file(), name
    labels = ["naive", "ewc1", "ewc100", "rehearsal"]
    for model in ("mlp", "cnn"):
        for label in labels:
            assert (out / "metrics" / f"accuracy_{model}_{label}.csv").is_file()
            assert (out / "figures" / f"accuracy_{model}_{label}.png").is_file()
        for fig in ("task1_accuracy", "average_accuracy", "ewc_lambda_sweep"):
            assert (out / "figures" / f"{fig}_{model}.png").is_file()
    results = [json.loads(line) for line in (out / "metrics" / "results.jsonl").read_text().splitlines()]
    assert len(results) == 8 and all(res["steps"] == 16 for res in results)
    r = np.loadtxt(out / "metrics" / "accuracy_mlp_naive.csv", delimiter=",", skiprows=1)
    assert r.shape == (2, 2) and np.isnan(r[0, 1]) and 0.1 < r[1, 1] <= 1.0
    summary = (out / "summary.md").read_text()
    assert "MLP vs CNN" in summary and "| mlp | rehearsal |" in summary
    record = Record.read(out)
    table = record.extra["table"]
    for model in ("mlp", "cnn"):  # the headline: the best EWC λ of each model
        (headline,) = [m for m in record.headline() if m.name.startswith(f"average_accuracy_{model}_")]
        assert headline.value == max(row["average_accuracy"] for row in table
                                     if row["model"] == model and row["method"] == "ewc")
    # A finished run resumed does no work again and rebuilds the same table.
    steps = (out / "metrics" / "steps.jsonl").read_bytes()
    genlab_here("run", "continual", *common, "--resume")
    assert Record.read(out).extra["table"] == table and (out / "metrics" / "steps.jsonl").read_bytes() == steps
    # Stopped inside the CNN's first EWC job, in its second task (after a consolidation by the
    # vmap Fisher), the run resumes exactly: the same losses, accuracy matrices and probes.
    part = tmp_path / "part"
    args = [*common[:-1], str(part)]
    proc = genlab_here("run", "continual", *args, check=False, env_extra={STOP_AFTER_STEPS_ENV: "92"})
    assert proc.returncode == 130, proc.stderr
    assert "resuming" in genlab_here("run", "continual", *args, "--resume").stdout
    assert (part / "metrics" / "steps.jsonl").read_bytes() == (out / "metrics" / "steps.jsonl").read_bytes()
    resumed = [json.loads(line) for line in (part / "metrics" / "results.jsonl").read_text().splitlines()]
    assert [{**r, "seconds": 0} for r in resumed] == [{**r, "seconds": 0} for r in results]
