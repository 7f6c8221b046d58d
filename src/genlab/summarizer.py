"""What the two summarisers of SPEC §10 share: :mod:`genlab.experiments.summarize` (a Transformer
trained from scratch) and :mod:`genlab.experiments.t5_finetune` (T5 fine-tuned).

Their options (:class:`SummaryConfig`), the (document, summary) pairs and the order in which an
epoch visits them (:func:`load_data`, :func:`epoch_batches`), the teacher-forced training loop on
:class:`genlab.engine.Run` (:func:`train`: checkpoints mid-epoch, resumes bit for bit) and the
test outputs: summaries scored with ROUGE beside LEAD-1, figures, metrics.json and summary.md
(:func:`finish`).

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

import json
import math
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from genlab import distributed, plots
from genlab.engine import EpochsConfig, Run, RunDir, load_checkpoint, resolve_device, save_checkpoint
from genlab.errors import ConfigError, GenlabError
from genlab.record import Figure, Metric, Record, Reference, Table
from genlab.summaries import (ROUGE_KEYS, VALIDATION_PERCENT, Pair, constant_sentence, default_data_files, distinct_n,
                              lead_1, load_hf_xsum, load_pairs, rouge_scores, split_pairs, unique_share, words)

__all__ = ["REFERENCE_ROUGE", "SummaryConfig", "start", "load_data", "epoch_batches", "total_steps", "train", "load_best",
           "finish"]

# SPEC §10, trained on the full XSum (204,045 training pairs): ROUGE-1 / -2 / -L.
REFERENCE_ROUGE = {"from scratch (full XSum)": (18.82, 3.02, 15.19),
                   "fine-tuned T5 (full XSum)": (26.56, 7.04, 20.75)}


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
        ConfigError: ``--batch-size`` not a multiple of the number of processes (before anything
            is written).
    """
    device = distributed.init(resolve_device(config.device))
    distributed.split_batch(config.batch_size, distributed.World.current(), "pairs")
    return device


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


# ---------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------

def protocol(config: SummaryConfig) -> str:
    """How the pairs were split, in words (for the report)."""
    if config.data is None and config.dataset in ("xsum", "xsum-subset"):
        extra = " and xsum_extra.jsonl" if config.dataset == "xsum" else ""
        return (f"official XSum test pairs of xsum_subset.jsonl; train on every other pair (xsum_subset.jsonl "
                f"non-test{extra}) less a {VALIDATION_PERCENT} % validation slice by sha256 of the id")
    if config.data is None and config.dataset == "xsum-hf":
        return "the official XSum train / validation / test split"
    if config.official_split:
        return f"the file's test labels; the others less a {VALIDATION_PERCENT} % validation slice by sha256 of the id"
    return "90 / 5 / 5 by sha256 of the id"


def diversity(texts: list[str]) -> dict[str, float]:
    """unique_share, distinct_1, distinct_2 (:mod:`genlab.summaries`), top_opening_share (the share
    of texts whose first three words are the most common such opening) and mean_words."""
    openings = Counter(tuple(words(t)[:3]) for t in texts)
    return {"unique_share": unique_share(texts), "distinct_1": distinct_n(texts, 1), "distinct_2": distinct_n(texts, 2),
            "top_opening_share": openings.most_common(1)[0][1] / len(texts) if texts else 0.0,
            "mean_words": sum(len(words(t)) for t in texts) / len(texts) if texts else 0.0}


def finish(run_dir: RunDir, config: SummaryConfig, summarise_fn: Callable[[list[str]], list[str]],
           parts: dict[str, list[Pair]], elapsed: float | None, parameters: int, title: str = "Transformer summariser",
           system: str = "from scratch (this run)", experiment: str = "summarize", selected_epoch: int | None = None) -> dict:
    """Test summaries (``summarise_fn``: documents -> summaries) scored with ROUGE beside two
    baselines on the same documents, LEAD-1 and the constant sentence
    (:func:`genlab.summaries.constant_sentence` of the training summaries); the :func:`diversity` of
    each; figures, test_summaries.jsonl, metrics.json, summary.md. ``experiment`` picks the SPEC
    reference (summarize: from scratch; t5-finetune: the fine-tuned T5's). Returns the metrics dict
    (``rouge``: F, low, high x 100 per ROUGE key, of ``model``, ``lead_1`` and ``constant``;
    ``diversity``: per system and of the references)."""
    test = parts["test"][:config.test_limit]
    references = [p.summary for p in test]
    began = time.time()
    generated = summarise_fn([p.document for p in test])
    generation_s = time.time() - began
    lead = [lead_1(p.document) for p in test]
    constant = constant_sentence([p.summary for p in parts["train"]], seed=config.seed)
    scores = {"model": rouge_scores(generated, references, seed=config.seed),
              "lead_1": rouge_scores(lead, references, seed=config.seed),
              "constant": rouge_scores([constant] * len(test), references, seed=config.seed)}
    with (run_dir.path / "test_summaries.jsonl").open("w") as f:
        for p, g, l1 in zip(test, generated, lead):
            f.write(json.dumps({"id": p.id, "reference": p.summary, "generated": g, "lead_1": l1}) + "\n")
    plot_run(run_dir, scores, title, system)
    metrics = {"system": system, "rouge": scores, "constant_sentence": constant,
               "diversity": {"model": diversity(generated), "lead_1": diversity(lead), "references": diversity(references)},
               "n_test": len(test), "n_train": len(parts["train"]), "n_validation": len(parts["validation"]),
               "split": protocol(config), "final_epoch": (run_dir.read_epochs() or [None])[-1],
               "selected_epoch": selected_epoch,
               "generation_s": generation_s, "parameters": parameters, "reference_rouge_r1_r2_rl": REFERENCE_ROUGE}
    run_dir.write_record(make_record(experiment, title, config, metrics, test, generated, lead, elapsed, generation_s,
                                     run_dir.figures(FIGURE_CAPTIONS)))
    return metrics


def plot_run(run_dir: RunDir, scores: dict, title: str, system: str) -> None:
    """loss_steps.png, loss_epochs.png (when an epoch ended) and rouge.png."""
    figs = run_dir.path / "figures"
    path = run_dir.path / "metrics" / "steps.jsonl"
    steps = [json.loads(line) for line in path.read_text().splitlines() if line] if path.exists() else []
    if steps:
        plots.plot_curves([r["step"] for r in steps], {"training loss (label-smoothed)": [r["loss"] for r in steps]},
                          figs / "loss_steps.png", "optimiser step", "nats per summary token",
                          f"{title}: training loss per step")
    epochs = run_dir.read_epochs()
    if epochs:
        curves = {"train (label-smoothed)": [r["train_loss"] for r in epochs],
                  "validation NLL": [r["val_nll"] for r in epochs]}
        if "val_nll_other_source" in epochs[0]:
            curves["validation NLL, another pair's document"] = [r["val_nll_other_source"] for r in epochs]
        plots.plot_curves([r["epoch"] for r in epochs], curves,
                          figs / "loss_epochs.png", "epoch", "nats per summary token",
                          f"{title}: loss per epoch")
    import matplotlib.pyplot as plt

    labels = ["ROUGE-1", "ROUGE-2", "ROUGE-L"]
    bars = {system: [scores["model"][k]["f"] for k in ROUGE_KEYS[:3]],
            "LEAD-1 (this test part)": [scores["lead_1"][k]["f"] for k in ROUGE_KEYS[:3]],
            "constant sentence (this test part)": [scores["constant"][k]["f"] for k in ROUGE_KEYS[:3]],
            **{name: list(v) for name, v in REFERENCE_ROUGE.items()}}
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    width = 0.8 / len(bars)
    for i, (name, values) in enumerate(bars.items()):
        ax.bar([j + i * width for j in range(3)], values, width, label=name)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(3)], labels)
    ax.set_ylabel("F-measure x 100")
    ax.set_title("ROUGE on the test part, with the SPEC references (full XSum)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(figs / "rouge.png", dpi=120)
    plt.close(fig)


FIGURE_CAPTIONS = {
    "loss_steps": "label-smoothed training loss per optimiser step",
    "loss_epochs": "training loss and validation NLL per epoch (summarize: also with each summary scored against "
                   "another pair's document: the gap is what the model takes from its source)",
    "rouge": "ROUGE-1/2/L of this run, of LEAD-1 and of the constant sentence on the test part, with the SPEC "
             "references (full XSum)",
}


def make_record(experiment: str, title: str, config: SummaryConfig, metrics: dict, test: list[Pair],
                generated: list[str], lead: list[str], train_seconds: float | None, eval_seconds: float,
                figures: list[Figure]) -> Record:
    """The run's record: ROUGE-1/2/L/Lsum (F x 100) of the model, ROUGE-1 headline, against SPEC
    §10's reference for the experiment (trained on the full XSum), LEAD-1's and the constant
    sentence's on the same documents, the model's :func:`diversity`; the ROUGE table with 95 %
    bootstrap intervals, the diversity table and the first ``config.n_examples`` summaries."""
    s = metrics["rouge"]
    ref_name = "from scratch (full XSum)" if experiment == "summarize" else "fine-tuned T5 (full XSum)"
    refs = dict(zip(ROUGE_KEYS, REFERENCE_ROUGE[ref_name]))
    out = [Metric(key, s["model"][key]["f"], lower_is_better=False, headline=key == "rouge1",
                  reference=Reference(refs[key], section="§10", note=ref_name) if key in refs else None,
                  description=f"{key} F-measure x 100 (rouge-score, stemming), {metrics['n_test']} test pairs, "
                              f"95 % bootstrap interval [{s['model'][key].get('low', 0):.2f}, "
                              f"{s['model'][key].get('high', 0):.2f}]")
           for key in ROUGE_KEYS]
    for name, label in (("lead_1", "LEAD-1 baseline"), ("constant", "constant-sentence baseline")):
        out += [Metric(f"{name}_{key}", s[name][key]["f"], lower_is_better=False,
                       description=f"{label} {key} on the same test pairs") for key in ROUGE_KEYS]
    d = metrics["diversity"]
    out += [Metric("unique_share", d["model"]["unique_share"], lower_is_better=False,
                   description="share of the test summaries that are distinct (exact string)"),
            Metric("distinct_1", d["model"]["distinct_1"], lower_is_better=False,
                   description="distinct unigrams / unigrams over all test summaries (Li et al. 2016)"),
            Metric("distinct_2", d["model"]["distinct_2"], lower_is_better=False,
                   description="distinct bigrams / bigrams over all test summaries (Li et al. 2016)"),
            Metric("top_opening_share", d["model"]["top_opening_share"], lower_is_better=True,
                   description="share of test summaries that begin with the most common first three words")]

    def cell(sc: dict) -> str:
        return f"{sc['f']:.2f} [{sc.get('low', 0):.1f}, {sc.get('high', 0):.1f}]"

    rouge = Table("ROUGE", ["system", "ROUGE-1", "ROUGE-2", "ROUGE-L", "ROUGE-Lsum"],
                  [[metrics["system"], *(cell(s["model"][k]) for k in ROUGE_KEYS)],
                   ["LEAD-1", *(cell(s["lead_1"][k]) for k in ROUGE_KEYS)],
                   ["constant sentence", *(cell(s["constant"][k]) for k in ROUGE_KEYS)],
                   *([f"ref: {name}", *v, None] for name, v in REFERENCE_ROUGE.items())],
                  "F-measure x 100 (rouge-score, stemming), mean [95 % interval, rouge-score's BootstrapAggregator, "
                  "1,000 resamples]. Constant sentence: the training summary with the highest mean ROUGE-1 against "
                  f"500 other training summaries: \"{metrics['constant_sentence']}\"")
    keys = ("unique_share", "distinct_1", "distinct_2", "top_opening_share", "mean_words")
    div = Table("diversity", ["summaries", "unique share", "distinct-1", "distinct-2", "top 3-word opening share",
                              "mean words"],
                [[name, *(round(d[k][key], 3) for key in keys)]
                 for name, k in ((metrics["system"], "model"), ("LEAD-1", "lead_1"), ("references", "references"))],
                "Over the test summaries; words are rouge-score's tokens without stemming.")
    examples = Table("examples", ["id", "document", "reference", "generated", "LEAD-1"],
                     [[p.id, p.document[:300].replace("\n", " ") + "...", p.summary, g, l1]
                      for p, g, l1 in list(zip(test, generated, lead))[:config.n_examples]])
    notes = [f"{metrics['n_train']} train / {metrics['n_validation']} validation / {metrics['n_test']} test pairs "
             f"(split: {metrics['split']}), {metrics['parameters']:,} parameters; beam {config.beam_size}, length "
             f"penalty {config.length_penalty}, no-repeat {config.no_repeat_ngram_size}-grams."]
    if metrics.get("selected_epoch"):
        notes.append(f"Test summaries from the weights of epoch {metrics['selected_epoch']}, the lowest validation NLL.")
    last = metrics["final_epoch"]
    if last:
        notes.append(f"Last epoch: training loss {last['train_loss']:.3f}, validation NLL {last['val_nll']:.3f} "
                     f"nats/token" + (f" (perplexity {last['val_perplexity']:.1f})" if "val_perplexity" in last else "")
                     + (f"; {last['val_nll_other_source']:.3f} with another pair's document (the source is worth "
                        f"{last['val_nll_other_source'] - last['val_nll']:.3f} nats/token)."
                        if "val_nll_other_source" in last else "."))
    return Record(experiment, title, "§10", metrics=out, tables=[rouge, div, examples], figures=figures,
                  train_seconds=train_seconds, eval_seconds=eval_seconds, notes=notes, extra=metrics)
