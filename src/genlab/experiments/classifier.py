"""The domain classifier behind genlab's FID, KID and Inception Score (SPEC "Quality metrics").

    genlab run classifier --dataset fashion-mnist --export src/genlab/weights/fashion-mnist.pt

trains :class:`genlab.quality.DomainClassifier` with Adam and cross-entropy, reports its
test accuracy and, with ``--export``, writes the weights genlab ships.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from genlab.data import load_split
from genlab.engine import EpochsConfig, Run, resolve_device, save_checkpoint, seed_everything
from genlab.errors import ConfigError, GenlabError
from genlab.experiments import Experiment
from genlab.quality import DomainClassifier, top1_accuracy
from genlab.reports.classifier import make_record

MIN_ACCURACY = {"fashion-mnist": 0.90, "mnist": 0.99}  # SPEC "Quality metrics"


@dataclass
class ClassifierConfig(EpochsConfig):
    dataset: str = "fashion-mnist"
    """fashion-mnist or mnist."""
    epochs: int = 10
    """Passes over the 60,000 training images."""
    batch_size: int = 128
    """Minibatch size."""
    lr: float = 2e-3
    """Peak Adam learning rate of the one-cycle schedule."""
    export: Path | None = None
    """Also write the weights and their test accuracy here (the file genlab ships)."""
    test_subset: int | None = None
    """Measure the test accuracy on the first N test images only (default: all 10,000); not with --export."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.dataset not in MIN_ACCURACY:
            raise ConfigError(f"--dataset must be one of {sorted(MIN_ACCURACY)}, got {self.dataset!r}")
        if self.test_subset is not None and self.test_subset < 1:
            raise ConfigError(f"--test-subset must be >= 1, got {self.test_subset}")
        if self.test_subset is not None and self.export is not None:
            raise ConfigError("--export checks the accuracy SPEC asks of the whole test set; drop --test-subset")


def _tensor(images) -> torch.Tensor:
    return torch.from_numpy(images.copy()).unsqueeze(1).float().div_(127.5).sub_(1.0)  # (N, 1, 28, 28)


def run(config: ClassifierConfig) -> Path:
    """Train the classifier, write its record and, with ``--export``, its weights; returns the run directory.
    The checkpoint (also at every epoch end) holds the model, Adam, the one-cycle schedule and the epoch's
    batch order, position and loss sum.

    Raises:
        GenlabError: ``--export`` of a classifier below the accuracy SPEC asks of it.
    """
    device = resolve_device(config.device)
    with Run("classifier", config, device) as run:
        seed_everything(config.seed)
        images, labels = load_split(config.dataset, "train", config.data_dir)
        x_train, y_train = _tensor(images).to(device), torch.from_numpy(labels).to(device)
        images, labels = load_split(config.dataset, "test", config.data_dir)
        images, labels = images[:config.test_subset], labels[:config.test_subset]
        x_test, y_test = _tensor(images).to(device), torch.from_numpy(labels).to(device)
        model = DomainClassifier().to(device)
        opt = torch.optim.Adam(model.parameters(), lr=config.lr)
        steps_per_epoch = math.ceil(len(x_train) / config.batch_size)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, config.lr, total_steps=config.epochs * steps_per_epoch)
        run.hold(model=model, opt=opt, sched=sched)
        pos = run.resume() or {"step": 0, "epoch": 0, "batch": 0, "order": None, "loss_sum": 0.0}
        step, epoch, batch, order, total = pos["step"], pos["epoch"], pos["batch"], pos["order"], pos["loss_sum"]
        pending: list[dict] = []  # per-step rows not yet written

        def progress() -> dict:
            run.log_steps(pending, check=("loss",))  # the steps file never lags behind a checkpoint
            pending.clear()
            return {"batch": batch, "order": order, "loss_sum": total}

        total_steps = min(config.epochs * steps_per_epoch, config.max_steps or math.inf)
        acc = None  # the test accuracy of the model as it stands
        while epoch < config.epochs and (batch or step < total_steps):
            model.train()
            if batch == 0:
                order = torch.randperm(len(x_train), device=device)
            bar = tqdm(total=steps_per_epoch, initial=batch, desc=f"epoch {epoch + 1}", leave=False, disable=None)
            while batch < steps_per_epoch and step < total_steps:
                idx = order[batch * config.batch_size:(batch + 1) * config.batch_size]
                loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                step, batch = step + 1, batch + 1
                pending.append({"step": step, "loss": loss.item()})
                total += pending[-1]["loss"]
                bar.update()
                run.step_done(step, epoch, progress)
            bar.close()
            acc = top1_accuracy(model.eval(), x_test, y_test)
            run.dir.log_epoch({"epoch": epoch + 1, "train_loss": total / batch, "test_accuracy": acc})
            print(f"epoch {epoch + 1}: train loss {total / batch:.4f}, test accuracy {acc:.4f}")
            epoch, batch, total = epoch + 1, 0, 0.0
            run.checkpoint(step, epoch, progress())
        if acc is None:  # nothing trained in this session (a finished run resumed)
            acc = top1_accuracy(model.eval(), x_test, y_test)
        meta = {"dataset": config.dataset, "test_accuracy": acc, "epochs": epoch, "seed": config.seed}
        if config.test_subset is not None:
            meta["test_images"] = len(x_test)
        run.dir.write_record(make_record(meta, MIN_ACCURACY[config.dataset], run.elapsed_s))
        if config.export:
            if acc < MIN_ACCURACY[config.dataset]:
                raise GenlabError(f"test accuracy {acc:.4f} is below the required {MIN_ACCURACY[config.dataset]}; "
                                  f"not exporting to {config.export}")
            save_checkpoint(config.export, {"model": {k: v.cpu() for k, v in model.state_dict().items()}, "meta": meta})
            print(f"exported to {config.export}")
    return run.path


EXPERIMENT = Experiment(
    name="classifier", config=ClassifierConfig, run=run,
    summary="the domain classifier (CNN) behind FID/KID/IS, per dataset; --export writes the shipped weights")
