"""SPEC §10, offline: pretrain a small T5 (Raffel et al. 2020) by span corruption, for ``t5-finetune --init``.

No pretrained T5 weights can be had offline, so this pretrains a small Hugging Face
``T5ForConditionalGeneration`` (the real t5-small vocabulary) with T5's objective, span corruption
(Raffel et al. 2020, §3.1.4, :func:`corrupt`), on every article text held here that is not an
official XSum test document (:func:`corpus_chunks`; ``--corpus-documents N``: the first N of them,
for quick looks and tests); the corpus size is reported beside T5's C4 pretraining, 2^35 tokens
(ibid., §3.1.2). A 2 % slice of the pieces (by a seeded shuffle) measures the validation loss,
with fixed corruption.

The model and tokenizer are saved (``save_pretrained``) in the run's ``model/`` folder, and the
same model's random initial weights in ``model_init/``, for the comparison:

    genlab run t5-pretrain --out runs/t5-pretrain
    genlab run t5-finetune --init runs/t5-pretrain/model --out runs/t5-ft-pretrained
    genlab run t5-finetune --init runs/t5-pretrain/model_init --out runs/t5-ft-random
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from genlab.engine import EpochsConfig, Run, seed_everything
from genlab.errors import ConfigError
from genlab.experiments import Experiment
from genlab.reports.t5_pretrain import make_record
from genlab.summaries import default_data_files, load_pairs, shared_data_dir, split_pairs, tokenizer_dir
from genlab.summarizer import load_best, start, total_steps, train
from genlab.t5 import batch_nll, build_optimizer

@dataclass
class T5PretrainConfig(EpochsConfig):
    """Span-corruption pretraining of a small T5 (sizes in T5Config's terms)."""

    epochs: int = 2
    """Passes over the corpus pieces."""
    data_dir: Path | None = None
    """Shared data folder holding xsum/, bbc-news-summary/, t5-small-tokenizer/ (default: <repo>/../shared/data)."""
    tokenizer: Path | None = None
    """The t5-small tokenizer folder (spiece.model); default <data-dir>/t5-small-tokenizer."""
    corpus_documents: int | None = None
    """Use only the first N corpus documents (after the test-set exclusion, in corpus order: XSum
    train, XSum validation, BBC), cut before tokenising (quick looks and tests); default: all."""
    input_length: int = 128
    """Tokens per corpus piece before corruption."""
    noise_density: float = 0.15
    """Share of each piece's tokens that are corrupted (T5: 0.15)."""
    mean_noise_span_length: float = 3.0
    """Mean length of a corrupted span (T5: 3)."""
    d_model: int = 128
    d_ff: int = 512
    d_kv: int = 32
    num_heads: int = 4
    num_layers: int = 2
    """Encoder layers, and decoder layers."""
    dropout: float = 0.1
    batch_size: int = 32
    lr: float = 1e-3
    """AdamW learning rate after the linear warm-up (then constant)."""
    warmup_steps: int = 200
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    """Clip the gradient norm to this (0: no clipping)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.noise_density < 1 or self.mean_noise_span_length < 1:
            raise ConfigError("--noise-density must be in (0, 1) and --mean-noise-span-length >= 1")
        if self.input_length < 8 or self.batch_size < 1:
            raise ConfigError("--input-length must be >= 8 and --batch-size >= 1")
        if self.corpus_documents is not None and self.corpus_documents < 1:
            raise ConfigError(f"--corpus-documents must be >= 1 (or left out: all), got {self.corpus_documents}")


def random_spans_noise_mask(length: int, noise_density: float, mean_span: float,
                            rng: np.random.Generator) -> np.ndarray:
    """T5's noise mask (Raffel et al. 2020, §3.1.4; the ``random_spans_noise_mask`` of their code):
    round(length x density) noise tokens in round(noise / mean_span) spans, span and gap lengths
    drawn by random segmentation, the first token never noise. Returns bool (length,)."""
    num_noise = min(max(int(round(length * noise_density)), 1), length - 1)
    num_spans = max(int(round(num_noise / mean_span)), 1)

    def segmentation(items: int, segments: int) -> np.ndarray:
        first = np.arange(items - 1) < segments - 1
        rng.shuffle(first)
        return np.bincount(np.cumsum(np.concatenate([[0], first])), minlength=segments)

    lengths = np.stack([segmentation(length - num_noise, num_spans), segmentation(num_noise, num_spans)], 1).reshape(-1)
    starts = np.zeros(length, dtype=np.int64)
    starts[np.cumsum(lengths)[:-1]] = 1
    return np.cumsum(starts) % 2 == 1


def corrupt(tokens: list[int], mask: np.ndarray, sentinel_0: int, eos_id: int) -> tuple[list[int], list[int]]:
    """Span corruption of ``tokens`` under ``mask``: (input ids: each noise span replaced by the
    next sentinel, then EOS; target ids: each sentinel followed by its span, then EOS). Sentinel k
    is ``sentinel_0 - k`` (T5: <extra_id_0> = 32099)."""
    inputs, targets, k = [], [], 0
    for i, (token, noise) in enumerate(zip(tokens, mask)):
        if noise and (i == 0 or not mask[i - 1]):
            inputs.append(sentinel_0 - k)
            targets.append(sentinel_0 - k)
            k += 1
        (targets if noise else inputs).append(token)
    return inputs + [eos_id], targets + [eos_id]


def corpus_chunks(config: T5PretrainConfig, tokenizer) -> tuple[list[list[int]], dict]:
    """The pretraining pieces: every non-test XSum document and every BBC News Summary article
    not equal to an XSum test document, tokenised (no EOS) and cut into ``input_length`` pieces
    (a last piece shorter than 16 tokens is dropped); only the first ``config.corpus_documents`` of
    these documents (XSum, then BBC) when it is set. Returns (pieces, counts of the documents used and
    their tokens)."""
    xsum_files, _ = default_data_files("xsum", config.data_dir)
    parts = split_pairs([p for f in xsum_files for p in load_pairs(f)], official=True)
    test_docs = {p.document.strip() for p in parts["test"]}
    xsum = [p.document for p in parts["train"] + parts["validation"]]
    bbc = [p.document for p in load_pairs(shared_data_dir(config.data_dir) / "bbc-news-summary/bbc_news_summary.jsonl")
           if p.document.strip() not in test_docs]
    documents = (xsum + bbc)[:config.corpus_documents]  # cut before tokenising, the costly part (None: all)
    ids = tokenizer(documents, add_special_tokens=False).input_ids
    n, n_xsum = config.input_length, min(len(xsum), len(documents))
    pieces = [doc[i:i + n] for doc in ids for i in range(0, len(doc), n) if len(doc[i:i + n]) >= 16]
    return pieces, {"xsum_documents": n_xsum, "bbc_articles": len(documents) - n_xsum, "tokens": sum(map(len, ids))}


class SpanCorruption:
    """The training pieces, corrupted afresh at each visit: the mask of piece i at its v-th visit
    comes from numpy's generator seeded with (seed, i, v). Its state (the visit counts) is held
    by the run, so a resumed run draws the same masks."""

    def __init__(self, pieces: list[list[int]], config: T5PretrainConfig, sentinel_0: int, eos_id: int):
        self.pieces, self.config, self.sentinel_0, self.eos_id = pieces, config, sentinel_0, eos_id
        self.visits = torch.zeros(len(pieces), dtype=torch.long)

    def batch(self, idx: list[int], count: bool = True) -> tuple[list[list[int]], list[list[int]]]:
        src, tgt = [], []
        for i in idx:
            rng = np.random.default_rng([self.config.seed, i, int(self.visits[i])])
            mask = random_spans_noise_mask(len(self.pieces[i]), self.config.noise_density,
                                           self.config.mean_noise_span_length, rng)
            s, t = corrupt(self.pieces[i], mask, self.sentinel_0, self.eos_id)
            src.append(s)
            tgt.append(t)
            if count:
                self.visits[i] += 1
        return src, tgt

    def state_dict(self) -> dict:
        return {"visits": self.visits.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.visits = state["visits"].clone()


def run(config: T5PretrainConfig) -> Path:
    """Pretrain (:func:`genlab.summarizer.train`: checkpoints, exact resume), save the model and write the
    record; returns the run directory."""
    from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration

    device = start(config)
    with Run("t5-pretrain", config, device) as run:
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir(config.tokenizer, config.data_dir)))
        pieces, counts = corpus_chunks(config, tokenizer)
        order = list(range(len(pieces)))
        random.Random(config.seed).shuffle(order)
        n_valid = max(1, len(pieces) // 50)
        valid_pieces, train_pieces = [pieces[i] for i in order[:n_valid]], [pieces[i] for i in order[n_valid:]]
        sentinel_0 = tokenizer.convert_tokens_to_ids("<extra_id_0>")
        stream = SpanCorruption(train_pieces, config, sentinel_0, tokenizer.eos_token_id)
        valid_src, valid_tgt = SpanCorruption(valid_pieces, config, sentinel_0, tokenizer.eos_token_id).batch(
            list(range(n_valid)), count=False)
        seed_everything(config.seed)
        model = T5ForConditionalGeneration(T5Config(
            vocab_size=len(tokenizer), d_model=config.d_model, d_ff=config.d_ff, d_kv=config.d_kv,
            num_heads=config.num_heads, num_layers=config.num_layers, num_decoder_layers=config.num_layers,
            dropout_rate=config.dropout, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
            decoder_start_token_id=tokenizer.pad_token_id)).to(device)
        if run.is_main and not (run.path / "model_init").exists():
            model.save_pretrained(run.path / "model_init")
            tokenizer.save_pretrained(run.path / "model_init")
        opt, sched = build_optimizer(model, config)
        run.hold(model=model, optimizer=opt, scheduler=sched, corruption=stream)
        steps = total_steps(config, len(train_pieces), run.world)
        n_params = sum(p.numel() for p in model.parameters())
        if run.is_main:
            print(f"t5-pretrain: {len(train_pieces)} train / {n_valid} validation pieces of <= {config.input_length} "
                  f"tokens, {counts['tokens']:,} corpus tokens, {n_params:,} parameters, {steps} steps")
        pad = tokenizer.pad_token_id
        train(run, config, model, opt, sched, [len(p) for p in train_pieces], steps,
              lambda m, idx: batch_nll(m, *stream.batch(idx), list(range(len(idx))), pad),
              lambda m, idx: batch_nll(m, valid_src, valid_tgt, idx, pad), n_valid, extra_columns=True)
        if run.is_main:
            selected = load_best(model, run.path)
            model.save_pretrained(run.path / "model")
            tokenizer.save_pretrained(run.path / "model")
            run.dir.write_record(make_record(run, config, counts, len(train_pieces), n_params, selected))
    return run.path


EXPERIMENT = Experiment(
    name="t5-pretrain",
    summary="SPEC §10: pretrain a small T5 by span corruption on the non-test XSum and BBC articles, "
            "for t5-finetune --init",
    config=T5PretrainConfig,
    run=run,
)
