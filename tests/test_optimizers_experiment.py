"""SPEC §6 experiment: the stacked grid equals plain per-run training, divergence is
recorded without stopping the grid, resume continues exactly, the CLI writes every output."""

import csv
import math

import pytest
import torch
import torch.nn.functional as F

from conftest import genlab_here
from genlab.experiments.optimizers import Cell, OptimizersConfig, StackedGrid, epoch_order, make_classifier, run
from genlab.optim import OPTIMIZERS
from genlab.errors import GenlabError
from genlab.record import Record
from genlab.reports.optimizers import final_table, format_cell

CPU = torch.device("cpu")
HYPER = {"momentum": {"momentum": 0.9}, "rmsprop": {"decay": 0.9}}


def _data(n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 784, generator=g), torch.randint(0, 10, (n,), generator=g)


def _plain_run(cell: Cell, seed: int, x, y, order_row, steps: int, batch: int, hidden=(16,)):
    """The textbook loop for one run: same initial weights and batches as the grid's run."""
    torch.manual_seed(seed)
    model = make_classifier(hidden)
    opt = OPTIMIZERS[cell.optimizer](model.parameters(), lr=cell.lr, **HYPER.get(cell.optimizer, {}))
    for i in range(steps):
        idx = order_row[i * batch:(i + 1) * batch]
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model, loss.item()


def test_classifier_size():
    assert sum(p.numel() for p in make_classifier().parameters()) == 784 * 50 + 50 + 50 * 10 + 10 == 39_760


@pytest.mark.parity
def test_stacked_grid_equals_plain_loop_and_a_diverging_run_touches_no_other():
    x, y = _data()
    seeds, steps, batch = [3, 4], 6, 32
    cells = [Cell("adam", 1e-2), Cell("momentum", 0.5), Cell("sgd", 1e20), Cell("amsgrad", 1e-2), Cell("rmsprop", 1e-3),
             Cell("adagrad", 0.1)]
    grid = StackedGrid(cells, seeds, (16,), HYPER, CPU)
    order = epoch_order(seeds, len(x), 0, CPU)
    for i in range(steps):
        idx = order[:, i * batch:(i + 1) * batch]
        losses = grid.train_step(x[idx], y[idx])
    assert grid.run_labels()[4] == ("sgd", 1e20, 3)
    for c, cell in enumerate(cells):
        for s, seed in enumerate(seeds):
            model, plain_loss = _plain_run(cell, seed, x, y, order[s], steps, batch)
            r = c * len(seeds) + s
            if cell.optimizer == "sgd":  # lr 1e20: NaN in both, confined to its own slice
                assert math.isnan(plain_loss) and math.isnan(losses[r].item())
                continue
            # The stacked and plain products sum in different orders (kernels chosen per shape and
            # ISA), so gradients agree to float32 rounding. A normalising optimiser (Adagrad,
            # RMSprop, Adam, AMSGrad) moves an entry by about lr whatever its gradient's size, so the
            # rounding of a near-cancelling gradient shows up scaled to lr: allow 1e-4 of the total
            # movement, steps x lr; a defect (another run's slice, batch or state) is off by O(lr).
            atol = max(1e-6, 1e-4 * steps * cell.lr) if cell.optimizer != "momentum" else 1e-6
            torch.testing.assert_close(grid.params[cell][0][s], model[0].weight.detach().T, rtol=1e-5, atol=atol)
            torch.testing.assert_close(grid.params[cell][3][s, 0], model[2].bias.detach(), rtol=1e-5, atol=atol)
            assert losses[r].item() == pytest.approx(plain_loss, rel=1e-5)
    acc = grid.accuracy(x, y, chunk=100)
    assert acc.shape == (len(cells) * len(seeds),) and ((acc >= 0) & (acc <= 1)).all()


@pytest.mark.parity
def test_stacked_grid_accuracy_matches_plain_model():
    x, y = _data(300, seed=5)
    grid = StackedGrid([Cell("sgd", 0.1)], [7], (16,), {}, CPU)
    torch.manual_seed(7)
    model = make_classifier((16,))
    expected = (model(x).argmax(1) == y).double().mean()
    assert grid.accuracy(x, y, chunk=128)[0].item() == pytest.approx(expected.item())


@pytest.mark.parity
def test_grid_state_dict_round_trip():
    x, y = _data()
    cells = [Cell("adam", 1e-2), Cell("momentum", 0.1)]

    def steps(grid, start, n):
        out = None
        for i in range(start, start + n):
            out = grid.train_step(x[None, i * 16:(i + 1) * 16].expand(2, -1, -1), y[None, i * 16:(i + 1) * 16].expand(2, -1))
        return out

    a = StackedGrid(cells, [0, 1], (8,), HYPER, CPU)
    steps(a, 0, 3)
    b = StackedGrid(cells, [0, 1], (8,), HYPER, CPU)
    b.load_state_dict(a.state_dict())
    assert torch.equal(steps(a, 3, 3), steps(b, 3, 3))


@pytest.mark.parametrize("kwargs, match", [
    ({"optimizers": ("sgd", "lion")}, "--optimizers"),
    ({"lrs": (0.1, 0.1)}, "repeat"),
    ({"lrs": (-0.1,)}, "positive"),
    ({"repeats": 0}, "--repeats"),
    ({"subset": 10}, "--subset"),
])
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        OptimizersConfig(**kwargs)


def test_final_table_statistics_and_divergence():
    rows = [{"epoch": "2", "optimizer": "adam", "lr": "0.5", "seed": str(s), "test_accuracy": str(a), "diverged": "0",
             "last_finite_loss": "0.1", "diverged_at_step": "-1"} for s, a in ((1, 0.90), (2, 0.94), (3, 0.92))]
    rows += [{"epoch": "2", "optimizer": "sgd", "lr": "0.5", "seed": "1", "test_accuracy": "nan", "diverged": "1",
              "last_finite_loss": "37.5", "diverged_at_step": "12"},
             {"epoch": "1", "optimizer": "adam", "lr": "0.5", "seed": "1", "test_accuracy": "0.1", "diverged": "0",
              "last_finite_loss": "1", "diverged_at_step": "-1"}]  # not the last epoch: ignored
    table = final_table(rows)
    adam = table["adam"]["0.5"]
    assert adam["mean"] == pytest.approx(0.92) and adam["std"] == pytest.approx(0.02)  # sample std, ddof = 1
    assert format_cell(adam) == "92.00 ± 2.00"
    sgd = table["sgd"]["0.5"]
    assert sgd["mean"] is None and sgd["diverged"] == 1 and sgd["diverged_at_step"] == {"1": 12}
    assert format_cell(sgd) == "diverged (1/1; last finite loss 37.5)"


def _csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_resume_continues_exactly(tmp_path):
    common = {"subset": 128, "test_subset": 100, "batch_size": 64, "hidden": (8,), "optimizers": ("adam",),
              "lrs": (0.1,), "repeats": 2, "log_every": 1}
    run(OptimizersConfig(epochs=2, out=tmp_path / "straight", **common))
    run(OptimizersConfig(epochs=1, out=tmp_path / "resumed", **common))
    run(OptimizersConfig(epochs=2, out=tmp_path / "resumed", resume=True, **common))
    for name in ("runs.csv", "steps.csv"):
        assert _csv(tmp_path / "straight" / "metrics" / name) == _csv(tmp_path / "resumed" / "metrics" / name)
    before = {p: p.read_bytes() for p in (tmp_path / "resumed").rglob("*") if p.is_file()}
    with pytest.raises(GenlabError, match=r"--lrs saved \[0.1\], given \[0.2\]"):
        run(OptimizersConfig(epochs=3, out=tmp_path / "resumed", resume=True, **{**common, "lrs": (0.2,)}))
    assert {p: p.read_bytes() for p in (tmp_path / "resumed").rglob("*") if p.is_file()} == before


@pytest.mark.slow
def test_cli_smoke_grid_on_real_mnist_with_a_diverging_learning_rate(tmp_path):
    out = tmp_path / "run"
    proc = genlab_here("run", "optimizers", "--epochs", "2", "--subset", "256", "--test-subset", "200",
                       "--batch-size", "64", "--repeats", "2", "--lrs", "1e20", "0.01", "--log-every", "4",
                       "--out", str(out))
    assert "run directory" in proc.stdout
    for name in ("config.json", "env.json", "metrics.json", "summary.md", "checkpoints/last.pt", "metrics/epochs.csv",
                 "metrics/runs.csv", "metrics/steps.csv", "figures/loss_lr1e+20.png", "figures/loss_lr0.01.png",
                 "figures/test_accuracy.png"):
        assert (out / name).is_file(), name
    runs = _csv(out / "metrics" / "runs.csv")
    assert len(runs) == 2 * 6 * 2 * 2  # epochs x optimisers x lrs x seeds
    record = Record.read(out)
    table = record.extra["final_test_accuracy"]
    assert "test_accuracy_sgd_lr1e+20" not in [m.name for m in record.metrics]  # every run diverged: no number
    (best,) = record.headline()
    assert best.value == max(100 * table[name]["0.01"]["mean"] for name in OPTIMIZERS) and best.n_seeds == 2
    assert set(table) == set(OPTIMIZERS) and table["sgd"]["1e+20"]["diverged"] == 2  # recorded, the grid went on
    for name in OPTIMIZERS:
        entry = table[name]["0.01"]
        assert entry["diverged"] == 0 and 0.1 < entry["mean"] <= 1
    assert "diverged" in (out / "summary.md").read_text()
