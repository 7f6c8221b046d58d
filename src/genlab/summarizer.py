"""What the two summarisers of SPEC §10 share: :mod:`genlab.experiments.summarize` (a Transformer
trained from scratch) and :mod:`genlab.experiments.t5_finetune` (T5 fine-tuned).

Their options (:class:`SummaryConfig`), the (document, summary) pairs and the order in which an
epoch visits them (:func:`load_data`, :func:`epoch_batches`), the teacher-forced training loop on
:class:`genlab.engine.Run` (:func:`train`: checkpoints mid-epoch, resumes bit for bit). Their
test outputs, summaries scored with ROUGE beside LEAD-1, figures and the record, are
:func:`genlab.reports.summarizer.finish`.

Data-parallel (``torchrun --nproc-per-node W -m genlab run summarize|t5-finetune``,
:mod:`genlab.distributed`; gloo on the CPU, NCCL on CUDA): the global batch stays ``--batch-size``
B, which must be a multiple of W. Every rank builds the same epoch batches of the global B
(:func:`epoch_batches`: pairs of alike source length) and trains on its share of each, pairs
r, r + W, ... (:func:`genlab.distributed.shard`: B / W pairs of the same spread of lengths). A
rank's loss, the mean over its summary tokens, is weighted by its share of the batch's tokens
(:func:`genlab.distributed.token_weighted`), so the gradient DDP averages is the gradient of the
mean over all the batch's tokens and a step is the one-process step at batch B up to the order of
floating-point sums (and the padding each shard is cut to). What is drawn at random, the dropout
masks, comes from each rank's own stream (:func:`genlab.distributed.seed_rank`): with
``--dropout 0`` W processes train the numbers of one, with dropout they train the same model on
other masks. An epoch's last batch, when it has fewer than W pairs, is left out (one process
trains it). The validation NLL is sharded over the ranks (batch i on rank i mod W) and summed;
rank 0 alone writes the run directory and generates and scores the test summaries.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from genlab import distributed
from genlab.engine import EpochsConfig, Run, load_checkpoint, resolve_device, save_checkpoint
from genlab.errors import ConfigError, GenlabError
from genlab.summaries import Pair, default_data_files, load_hf_xsum, load_pairs, split_pairs

__all__ = ["SummaryConfig", "start", "load_data", "epoch_batches", "total_steps", "train", "load_best"]


@dataclass
class SummaryConfig(EpochsConfig):
    """Options of both summarisers: the pairs (:func:`load_data`), their token lengths, the
    optimiser, the test decoding and the report. The defaults are summarize's."""

    data_dir: Path | None = None
    """Shared data folder holding xsum/, bbc-news-summary/, t5-small-tokenizer/ (default: <repo>/../shared/data)."""
    dataset: str = "xsum"
    """xsum (the protocol: test on the 2,740 official XSum test pairs of xsum_subset.jsonl; train on
    every other pair, its 1,000 train pairs and xsum_extra.jsonl's 2,764, less a 5 % validation slice
    by a hash of the id), xsum-subset (xsum_subset.jsonl alone, the same rule), bbc-news-summary
    (hash split 90/5/5), or xsum-hf (the full XSum from the Hugging Face hub, its own split; needs
    internet and `datasets`)."""
    data: Path | None = None
    """A JSONL file of pairs (fields document or article, summary, optional id, split); overrides
    --dataset. Split 90/5/5 by a hash of the id unless --official-split."""
    official_split: bool = False
    """With --data: test on the pairs labelled test and train on the others, as for xsum."""
    tokenizer: Path | None = None
    """The t5-small tokenizer folder (spiece.model); default <data-dir>/t5-small-tokenizer."""
    max_source_len: int = 256
    """Source tokens kept (EOS included); longer documents are truncated."""
    max_target_len: int = 64
    """Summary tokens kept in training (EOS included), and tokens generated at most."""
    batch_size: int = 16
    """Pairs per optimiser step (under torchrun: in all, each of the W processes taking batch / W)."""
    lr: float = 1e-3
    """AdamW peak learning rate, reached after the linear warm-up (summarize then decays it to 0 on a
    cosine; t5-finetune keeps it)."""
    warmup_steps: int = 200
    """Linear warm-up steps."""
    weight_decay: float = 0.01
    """AdamW weight decay (summarize: not on biases, LayerNorms or the embedding)."""
    grad_clip: float = 1.0
    """Clip the gradient norm to this (0: no clipping)."""
    beam_size: int = 4
    """Beams for the test summaries (1: greedy)."""
    length_penalty: float = 1.0
    """Beam-search length penalty alpha: scores divided by length^alpha."""
    no_repeat_ngram_size: int = 3
    """Never generate an n-gram twice (0: off)."""
    test_limit: int | None = None
    """Summarise only the first N test documents (smoke runs)."""
    n_examples: int = 8
    """Test documents shown with their reference and generated summaries in summary.md."""
    patience: int = 0
    """Early stopping: end training once this many epochs have passed without a lower validation
    NLL than the best so far (0: train every epoch). The test summaries come from the best epoch
    either way."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.beam_size < 1 or self.batch_size < 1:
            raise ConfigError("--beam-size and --batch-size must be >= 1")
        self.require(0, "patience")


def start(config: SummaryConfig) -> torch.device:
    """The device to train on, after joining the torchrun process group if launched by it
    (:func:`genlab.distributed.init`: ``cuda:LOCAL_RANK`` on GPUs).

    Raises:
        ConfigError: ``--batch-size`` not a multiple of the number of processes (before the
            process group is joined and anything is written).
    """
    distributed.split_batch(config.batch_size, distributed.launched_world_size(), "pairs")
    return distributed.init(resolve_device(config.device))


# ---------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------

def load_data(config: SummaryConfig) -> dict[str, list[Pair]]:
    """Train / validation / test pairs of the config's data source (:func:`genlab.summaries.split_pairs`:
    the official test part for XSum, a hash split for files without labels).

    Raises GenlabError when the train or the test part is empty (and the loaders' DataError for
    a missing or malformed file)."""
    if config.data is not None:
        pairs, official = load_pairs(config.data), config.official_split
    elif config.dataset == "xsum-hf":
        pairs, official = load_hf_xsum(), True
    else:
        files, official = default_data_files(config.dataset, config.data_dir)
        pairs = [p for f in files for p in load_pairs(f)]
    parts = split_pairs(pairs, official=official or config.official_split)
    if not parts["train"] or not parts["test"]:
        raise GenlabError(f"the data has {len(parts['train'])} train and {len(parts['test'])} test pairs; need both")
    return parts


def epoch_batches(lengths: list[int], batch_size: int, seed: int) -> list[list[int]]:
    """Shuffled batches of indices of similar source length (``lengths``): shuffle, sort
    chunks of 50 batches by length, cut into batches, shuffle the batches (less padding,
    the same batches for the same seed)."""
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    chunk = batch_size * 50
    batches = []
    for i in range(0, len(order), chunk):
        part = sorted(order[i:i + chunk], key=lambda j: lengths[j])
        batches += [part[k:k + batch_size] for k in range(0, len(part), batch_size)]
    rng.shuffle(batches)
    return batches


def rank_batches(lengths: list[int], batch_size: int, seed: int, world: distributed.World) -> list[list[int]]:
    """This rank's shares of the :func:`epoch_batches` of the global ``batch_size``, leaving out a
    batch of fewer pairs than ranks (the batches themselves in a world of one)."""
    return [distributed.shard(b, world) for b in epoch_batches(lengths, batch_size, seed) if len(b) >= world.size]


def total_steps(config: SummaryConfig, n_train: int, world: distributed.World) -> int:
    """Optimiser steps of the run: ``config.epochs`` passes of the :func:`rank_batches` of
    ``n_train`` pairs (ceil(n_train / batch) in one process), at most ``config.max_steps``."""
    per_epoch = n_train // config.batch_size + (n_train % config.batch_size >= world.size)
    steps = config.epochs * per_epoch
    return steps if config.max_steps is None else min(steps, config.max_steps)


# ---------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------

BatchNLL = Callable[[nn.Module, list[int]], tuple[torch.Tensor, int]]
"""(model, indices of a batch) -> (mean NLL per summary token of the batch, a scalar tensor in nats;
the number of those tokens)."""


@torch.no_grad()
def validation_nll(model: nn.Module, batch_nll: BatchNLL, n: int, batch_size: int, world: distributed.World) -> float:
    """Mean cross-entropy per summary token of ``n`` validation pairs (batches [i, i + batch_size)
    in order, ``model`` in eval mode), nats; nan without pairs. Under torchrun rank r takes
    batches r, r + W, ... and the sums are added over the ranks."""
    model.eval()
    total, count = 0.0, 0
    for i in range(world.rank * batch_size, n, world.size * batch_size):
        nll, tokens = batch_nll(model, list(range(i, min(i + batch_size, n))))
        total, count = total + float(nll) * tokens, count + tokens
    model.train()
    total, count = distributed.all_sum([total, count], world)
    return total / count if count else float("nan")


def train(run: Run, config: SummaryConfig, model: nn.Module, opt: torch.optim.Optimizer,
          sched: torch.optim.lr_scheduler.LRScheduler, lengths: list[int], steps: int, train_nll: BatchNLL,
          valid_nll: BatchNLL, n_valid: int, extra_columns: bool = False,
          other_source_nll: BatchNLL | None = None) -> None:
    """Teacher-forced training of ``model`` for ``config.epochs`` passes over the training pairs,
    at most ``steps`` optimiser steps; ``run`` must hold the model, ``opt`` and ``sched``.

    An epoch visits :func:`epoch_batches` of the pairs' source ``lengths`` (seeded by
    ``config.seed * 1000 + epoch``); a step minimises ``train_nll`` of the batch (AdamW, gradient
    norm clipped to ``config.grad_clip``, one ``sched`` step). Under torchrun ``model`` trains
    wrapped in DistributedDataParallel, on this rank's share of each batch (see the module
    docstring); the logged losses are those of the global batch. Logged: per step ``loss`` (nats per
    summary token) and ``lr``; per epoch ``train_loss`` (mean of the steps' losses), ``val_nll``
    (:func:`validation_nll` of ``valid_nll`` over the ``n_valid`` validation pairs), ``steps``
    and ``seconds``. ``extra_columns`` adds summarize's ``target_tokens`` per step and
    ``val_perplexity`` and ``pairs_per_s`` per epoch.

    Checkpoints (:class:`genlab.engine.Run`) are written at every epoch end, at the end, every
    few minutes and on Ctrl-C or SIGTERM; their progress holds the batch within the epoch and the
    epoch's loss sum, so ``--resume`` continues exactly where the run stopped.

    Raises TrainingDiverged (from :meth:`Run.log_steps`) at the first non-finite loss.
    """
    world = run.world
    ddp_model = distributed.data_parallel(model, run.device, forward_sync_buffers=False)  # buffers: constants
    distributed.seed_rank(config.seed, world)
    epoch, batch, step, loss_sum, best = 0, 0, 0, 0.0, math.inf
    resumed = run.resume()
    if resumed:
        epoch, batch, step, loss_sum = resumed["epoch"], resumed["batch"], resumed["step"], resumed["loss_sum"]
        best = resumed.get("best_val_nll", math.inf)

    def progress() -> dict:
        return {"batch": batch, "loss_sum": loss_sum, "best_val_nll": best}

    bar = tqdm(total=steps, initial=step, unit="step", desc=run.experiment, dynamic_ncols=True,
               disable=None if run.is_main else True)
    model.train()
    while epoch < config.epochs and step < steps and not patience_ran_out(run, getattr(config, "patience", 0)):
        epoch_start = time.time()
        batches = rank_batches(lengths, config.batch_size, config.seed * 1000 + epoch, world)
        while batch < len(batches) and step < steps:
            # Teacher forcing: predict summary token t from the source and the summary's tokens < t.
            loss, tokens = distributed.token_weighted(*train_nll(ddp_model, batches[batch]), world)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            opt.step()
            sched.step()
            step, batch = step + 1, batch + 1
            value = distributed.all_mean(loss.detach(), world).item()
            loss_sum += value
            row = {"step": step, "loss": value, "lr": sched.get_last_lr()[0]}
            run.log_steps([{**row, "target_tokens": tokens} if extra_columns else row], check=("loss",))
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{value:.3f}")
            run.step_done(step, epoch, progress)
        if batch < len(batches):  # stopped by --max-steps inside the epoch
            break
        val = validation_nll(model, valid_nll, n_valid, config.batch_size, world)
        seconds = time.time() - epoch_start
        row = {"epoch": epoch + 1, "train_loss": loss_sum / batch, "val_nll": val}
        if other_source_nll is not None:
            row["val_nll_other_source"] = validation_nll(model, other_source_nll, n_valid, config.batch_size, world)
        if extra_columns:
            row["val_perplexity"] = math.exp(val) if math.isfinite(val) else float("nan")
        row.update(steps=step, seconds=seconds, **({"pairs_per_s": len(lengths) / seconds} if extra_columns else {}))
        run.dir.log_epoch(row)
        if run.is_main and val < best:  # model selection on the validation slice
            save_checkpoint(best_model_path(run.path), {"epoch": epoch + 1, "val_nll": val, "model": model.state_dict()})
        best = min(best, val) if math.isfinite(val) else best
        epoch, batch, loss_sum = epoch + 1, 0, 0.0
        run.checkpoint(step, epoch, progress())
        if run.is_main:
            tqdm.write(f"epoch {epoch}: train loss {row['train_loss']:.3f}, validation NLL {val:.3f} nats/token "
                       f"({seconds / 60:.1f} min)")
    bar.close()
    run.checkpoint(step, epoch, progress())


def patience_ran_out(run: Run, patience: int) -> bool:
    """Whether ``patience`` > 0 epochs have ended, by the run's epochs.csv, since the one with the lowest
    validation NLL (read from the file, so a resumed run decides as an uninterrupted one; rank 0
    decides for every rank)."""
    if patience <= 0:
        return False

    def decide() -> bool:
        val = [row["val_nll"] for row in run.dir.read_epochs()]
        stale = len(val) - 1 - min(range(len(val)), key=val.__getitem__) if val else 0
        if stale >= patience:
            tqdm.write(f"early stop: {stale} epochs without a lower validation NLL than epoch "
                       f"{len(val) - stale} (--patience {patience})")
        return stale >= patience

    return distributed.main_decides(decide, run.world)


def best_model_path(run_path: Path) -> Path:
    """Where :func:`train` keeps the weights of the epoch with the lowest validation NLL."""
    return Path(run_path) / "checkpoints" / "best_model.pt"


def load_best(model: nn.Module, run_path: Path) -> int | None:
    """Load into ``model`` the weights of the epoch with the lowest validation NLL, when one was
    saved (no epoch ended: the model is left as it is); returns that epoch (1-based) or None."""
    path = best_model_path(run_path)
    if not path.exists():
        return None
    best = load_checkpoint(path, next(model.parameters()).device)
    model.load_state_dict(best["model"])
    return int(best["epoch"])
