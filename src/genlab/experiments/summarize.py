"""SPEC §10: abstractive summarisation with an encoder-decoder Transformer trained from scratch.

The model (:mod:`genlab.transformer`: pre-LN, shared embeddings, padding masks) is trained by
teacher forcing with label-smoothed cross-entropy (Vaswani et al. 2017, §5.4) on
(document, summary) pairs, tokenised with the t5-small SentencePiece model. The test summaries
(beam search, cached keys and values) are scored with ROUGE beside LEAD-1 and a constant
sentence (:func:`genlab.reports.summarizer.finish`).

Protocol (``--dataset xsum``, the default): test on the 2,740 official XSum test pairs of
``../shared/data/xsum/xsum_subset.jsonl``; train on every other pair (its 1,000 official train
pairs and the 2,764 of ``xsum_extra.jsonl``, none from the test split), less a 5 % validation
slice by a hash of the id for model selection: 3,566 train / 198 validation / 2,740 test.

    genlab run summarize                                   # the documented CPU run
    genlab run summarize --data my_pairs.jsonl             # fields: id, document, summary
    genlab run summarize --dataset xsum-hf --d-model 512 --n-layers 6   # online, GPU: the full XSum
    torchrun --nproc-per-node 2 -m genlab run summarize   # data-parallel (genlab.summarizer)
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn.utils.rnn import pad_sequence
from tqdm.auto import tqdm

from genlab import distributed
from genlab.engine import Run, RunDir, autocast_for, reopen, resolve_device, seed_everything
from genlab.errors import ConfigError
from genlab.experiments import Experiment
from genlab.summaries import Pair, SentencePieceTokenizer, tokenizer_dir
from genlab.reports.summarizer import finish
from genlab.summarizer import SummaryConfig, load_best, load_data, start, total_steps, train
from genlab.transformer import Transformer, TransformerConfig, beam_search, greedy_decode, label_smoothed_nll


@dataclass
class SummarizeConfig(SummaryConfig):
    """SPEC §10 from-scratch Transformer; defaults are the documented CPU run (the data, length,
    optimiser and decoding options are :class:`genlab.summarizer.SummaryConfig`'s)."""

    epochs: int = 20
    """Passes over the training part at most (the test summaries come from the epoch of the lowest
    validation NLL)."""
    patience: int = 3
    """Early stopping: end training after this many epochs without a lower validation NLL (0: off)."""
    d_model: int = 128
    """Model width."""
    n_heads: int = 4
    """Attention heads."""
    n_layers: int = 2
    """Encoder layers, and decoder layers."""
    d_ff: int = 512
    """Feed-forward inner width."""
    dropout: float = 0.1
    """Dropout on embeddings, attention weights, sub-layer outputs and the feed-forward hidden layer."""
    label_smoothing: float = 0.1
    """Label smoothing eps of the training loss (0: plain cross-entropy)."""
    precision: str = "auto"
    """auto (bf16 autocast where the hardware supports it), bf16 or fp32, for training."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ConfigError(f"--precision must be auto, bf16 or fp32, got {self.precision!r}")
        if self.d_model % self.n_heads:
            raise ConfigError(f"--d-model ({self.d_model}) must be a multiple of --n-heads ({self.n_heads})")
        if self.max_source_len < 2 or self.max_target_len < 2:
            raise ConfigError("--max-source-len and --max-target-len must be >= 2")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"--label-smoothing must be in [0, 1), got {self.label_smoothing}")


# ---------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------

@dataclass
class Encoded:
    """Token ids of a split: sources and targets (each ends with EOS)."""

    src: list[list[int]]
    tgt: list[list[int]]


def encode(tokenizer: SentencePieceTokenizer, pairs: list[Pair], config: SummarizeConfig) -> Encoded:
    return Encoded(tokenizer.encode([p.document for p in pairs], config.max_source_len),
                   tokenizer.encode([p.summary for p in pairs], config.max_target_len))


def pad(rows: list[list[int]], pad_id: int, device: torch.device) -> torch.Tensor:
    """Right-padded int64 (len(rows), max length) of non-empty rows of ids."""
    return pad_sequence([torch.tensor(r) for r in rows], batch_first=True, padding_value=pad_id).to(device)


def make_batch(data: Encoded, idx: list[int], c: TransformerConfig, device: torch.device):
    """src (B, S), decoder input (B, T) = [start] + summary[:-1], labels (B, T) = summary; padded."""
    src = pad([data.src[i] for i in idx], c.pad_id, device)
    labels = pad([data.tgt[i] for i in idx], c.pad_id, device)
    tgt_in = torch.cat([torch.full_like(labels[:, :1], c.decoder_start_id), labels[:, :-1]], dim=1)
    return src, tgt_in, labels


# ---------------------------------------------------------------------------------------
# Model, optimiser, evaluation
# ---------------------------------------------------------------------------------------

def model_config(config: SummarizeConfig, tokenizer: SentencePieceTokenizer) -> TransformerConfig:
    return TransformerConfig(vocab_size=tokenizer.vocab_size, d_model=config.d_model, n_heads=config.n_heads,
                             n_encoder_layers=config.n_layers, n_decoder_layers=config.n_layers, d_ff=config.d_ff,
                             dropout=config.dropout, max_len=max(config.max_source_len, config.max_target_len + 1),
                             pad_id=tokenizer.pad_id, eos_id=tokenizer.eos_id, decoder_start_id=tokenizer.pad_id)


def build_optimizer(model: Transformer, config: SummarizeConfig, total_steps: int):
    """AdamW with decay on weight matrices only; linear warm-up then cosine decay to 0."""
    decay = [p for n, p in model.named_parameters() if p.ndim == 2 and not n.startswith("embed")]
    rest = [p for n, p in model.named_parameters() if not (p.ndim == 2 and not n.startswith("embed"))]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                             {"params": rest, "weight_decay": 0.0}], lr=config.lr, betas=(0.9, 0.98), eps=1e-9)

    def schedule(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        progress = (step - config.warmup_steps) / max(1, total_steps - config.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, schedule)


def batch_nll(model: torch.nn.Module, data: Encoded, idx: list[int], smoothing: float = 0.0,
              autocast: contextlib.AbstractContextManager = contextlib.nullcontext()) -> tuple[torch.Tensor, int]:
    """Label-smoothed NLL (:func:`genlab.transformer.label_smoothed_nll`, eps ``smoothing``) of the
    pairs ``idx`` of ``data``, teacher-forced, the forward under ``autocast``: (scalar, nats per
    summary token; the number of summary tokens)."""
    c = distributed.unwrap(model).config
    src, tgt_in, labels = make_batch(data, idx, c, next(model.parameters()).device)
    with autocast:
        logits = model(src, tgt_in)  # (B, T, V)
    return label_smoothed_nll(logits, labels, c.pad_id, smoothing), int((labels != c.pad_id).sum())


@torch.no_grad()
def summarise(model: Transformer, tokenizer: SentencePieceTokenizer, documents: list[str], config: SummarizeConfig,
              device: torch.device, batch_size: int = 16) -> list[str]:
    """Generated summaries of ``documents`` (beam search, cached), in the input order."""
    src = tokenizer.encode(documents, config.max_source_len)
    order = sorted(range(len(src)), key=lambda i: len(src[i]))
    out: list[str] = [""] * len(src)
    for i in tqdm(range(0, len(order), batch_size), desc="summarise", disable=None, leave=False):
        idx = order[i:i + batch_size]
        batch = pad([src[j] for j in idx], tokenizer.pad_id, device)
        if config.beam_size == 1:
            ids = greedy_decode(model, batch, config.max_target_len, no_repeat_ngram_size=config.no_repeat_ngram_size)
        else:
            ids = beam_search(model, batch, config.beam_size, config.max_target_len, config.length_penalty,
                              config.no_repeat_ngram_size)
        for j, row in zip(idx, ids):
            out[j] = tokenizer.decode(row)
    return out


# ---------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------

def run(config: SummarizeConfig) -> Path:
    """Train (:func:`genlab.summarizer.train`), then summarise the test part with the weights of the
    epoch of the lowest validation NLL and score it; returns the run directory.

    Raises:
        ConfigError: ``--batch-size`` not a multiple of the number of torchrun processes.
    """
    device = start(config)
    with Run("summarize", config, device) as run:
        tokenizer = SentencePieceTokenizer(tokenizer_dir(config.tokenizer, config.data_dir))
        parts = load_data(config)
        train_data, valid = encode(tokenizer, parts["train"], config), encode(tokenizer, parts["validation"], config)
        valid_other = Encoded(valid.src[1:] + valid.src[:1], valid.tgt)  # each summary with the next pair's document
        steps = total_steps(config, len(train_data.src), run.world)
        seed_everything(config.seed)
        model = Transformer(model_config(config, tokenizer)).to(device)
        opt, sched = build_optimizer(model, config, steps)
        autocast = autocast_for(device, config.precision)
        run.hold(model=model, optimizer=opt, scheduler=sched)
        n_params = sum(p.numel() for p in model.parameters())
        if run.is_main:
            print(f"summarize: {len(train_data.src)} train / {len(valid.src)} validation / {len(parts['test'])} "
                  f"test pairs, {n_params:,} parameters, {steps} steps")
        train(run, config, model, opt, sched, [len(s) for s in train_data.src], steps,
              lambda m, idx: batch_nll(m, train_data, idx, config.label_smoothing, autocast),
              lambda m, idx: batch_nll(m, valid, idx), len(valid.src), extra_columns=True,
              other_source_nll=lambda m, idx: batch_nll(m, valid_other, idx))
        if run.is_main:  # the test summaries, by the epoch of the lowest validation NLL: one process's work
            selected = load_best(model, run.path)
            finish(run.dir, config, lambda docs: summarise(model, tokenizer, docs, config, device), parts,
                   run.elapsed_s, n_params, selected_epoch=selected)
    return run.path


def evaluate(run_path: Path) -> dict:
    """``genlab eval RUN_DIR``: summarise the test part again with the model of the lowest validation
    NLL (else the last checkpoint's) and rescore; returns :func:`genlab.reports.summarizer.finish`'s ROUGE
    dict. Raises GenlabError for a checkpoint of another schema or experiment."""
    device = resolve_device("auto")
    ckpt, config = reopen(run_path, "summarize", SummarizeConfig, device)
    run_dir = RunDir("summarize", config, device)
    tokenizer = SentencePieceTokenizer(tokenizer_dir(config.tokenizer, config.data_dir))
    model = Transformer(model_config(config, tokenizer)).to(device)
    model.load_state_dict(ckpt["states"]["model"])
    selected = load_best(model, run_path)
    metrics = finish(run_dir, config, lambda docs: summarise(model, tokenizer, docs, config, device),
                     load_data(config), None, sum(p.numel() for p in model.parameters()), selected_epoch=selected)
    run_dir.close()
    return metrics["rouge"]


EXPERIMENT = Experiment(
    name="summarize",
    summary="SPEC §10: Transformer summariser from scratch on XSum (official test pairs; cached beam search), "
            "ROUGE vs LEAD-1 and a constant sentence",
    config=SummarizeConfig,
    run=run,
    evaluate=evaluate,
    data_parallel=True,
)
