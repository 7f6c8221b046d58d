"""SPEC §10: fine-tuning T5 (Raffel et al. 2020) for summarisation with Hugging Face ``transformers``.

``T5ForConditionalGeneration`` is loaded from a local checkpoint folder (``--init DIR``, e.g. a
downloaded ``t5-small``), trained by teacher forcing on "summarize: " + document -> summary
(cross-entropy, AdamW), and its test summaries (``generate``, beam search) are scored as
``genlab run summarize``'s are, on the same protocol (:mod:`genlab.experiments.summarize`).

No pretrained T5 weights can be obtained on the machines this project is built on, so the tests
and smoke runs use ``--random-init``: a tiny randomly initialised T5 with the real t5-small
tokenizer. With real weights (online: ``huggingface-cli download t5-small --local-dir t5-small``):

    genlab run t5-finetune --init t5-small --epochs 3 --batch-size 8
    torchrun --nproc-per-node 2 -m genlab run t5-finetune --init t5-small   # data-parallel (genlab.summarizer)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from genlab.engine import Run, seed_everything
from genlab.errors import ConfigError, GenlabError, NotFoundError
from genlab.experiments import Experiment
from genlab.summaries import Pair, tokenizer_dir
from genlab.reports.summarizer import finish
from genlab.summarizer import SummaryConfig, load_best, load_data, start, total_steps, train
from genlab.t5 import batch_nll, build_optimizer

PREFIX = "summarize: "
# The tiny random T5 of --random-init (tests, smoke runs): 4 heads of 16, 2 + 2 layers.
TINY_T5 = {"d_model": 64, "d_ff": 128, "d_kv": 16, "num_heads": 4, "num_layers": 2, "num_decoder_layers": 2,
           "dropout_rate": 0.1}


@dataclass
class T5FinetuneConfig(SummaryConfig):
    """SPEC §10 T5 fine-tuning (the data, length, optimiser and decoding options are
    :class:`genlab.summarizer.SummaryConfig`'s, with T5's defaults)."""

    init: Path | None = None
    """Local T5 checkpoint folder (config.json + weights, e.g. a downloaded t5-small) to fine-tune."""
    random_init: bool = False
    """Start from a tiny randomly initialised T5 instead of --init (tests and smoke runs; no pretraining)."""
    tokenizer: Path | None = None
    """Tokenizer folder; default: --init if it holds spiece.model, else <data-dir>/t5-small-tokenizer."""
    max_source_len: int = 512
    """Source tokens kept (prefix and EOS included)."""
    batch_size: int = 8
    lr: float = 3e-4
    warmup_steps: int = 100
    weight_decay: float = 0.0
    dropout: float | None = None
    """Dropout rate of the T5 (default: the --init checkpoint's own; 0.1 for --random-init)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if (self.init is None) == (not self.random_init):
            raise ConfigError("give exactly one of --init DIR (a local T5 checkpoint) and --random-init")
        if self.dropout is not None and not 0 <= self.dropout < 1:
            raise ConfigError(f"--dropout must be in [0, 1), got {self.dropout}")
        if self.init is not None and not (Path(self.init) / "config.json").exists():
            raise NotFoundError(f"{self.init}: no config.json; --init needs a T5 checkpoint folder "
                              "(e.g. `huggingface-cli download t5-small --local-dir t5-small`)")


def load_tokenizer(config: T5FinetuneConfig):
    from transformers import AutoTokenizer

    if config.tokenizer is not None:
        path = Path(config.tokenizer)
    elif config.init is not None and (Path(config.init) / "spiece.model").exists():
        path = Path(config.init)
    else:
        path = tokenizer_dir(None, config.data_dir)
    if not (path / "spiece.model").exists():
        raise GenlabError(f"{path}: no spiece.model; pass --tokenizer DIR (the t5-small tokenizer folder)")
    return AutoTokenizer.from_pretrained(str(path))


def load_model(config: T5FinetuneConfig, tokenizer, seed: int):
    """T5ForConditionalGeneration from --init, or the tiny random one (seeded); --dropout, when
    given, replaces the model's dropout rate."""
    from transformers import T5Config, T5ForConditionalGeneration

    dropout = {} if config.dropout is None else {"dropout_rate": config.dropout}
    if config.init is not None:
        return T5ForConditionalGeneration.from_pretrained(str(config.init), **dropout)
    torch.manual_seed(seed)
    t5_config = T5Config(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.pad_token_id,
                         **{**TINY_T5, **dropout})
    return T5ForConditionalGeneration(t5_config)


def tokenize(tokenizer, pairs: list[Pair], config: T5FinetuneConfig) -> tuple[list[list[int]], list[list[int]]]:
    """Source ids of PREFIX + document and target ids of the summary (both end with EOS)."""
    src = tokenizer([PREFIX + p.document for p in pairs], max_length=config.max_source_len, truncation=True).input_ids
    tgt = tokenizer([p.summary for p in pairs], max_length=config.max_target_len, truncation=True).input_ids
    return src, tgt


@torch.no_grad()
def summarise(model, tokenizer, documents: list[str], config: T5FinetuneConfig, device: torch.device,
              batch_size: int = 16) -> list[str]:
    """``model.generate`` summaries of documents (beam search, length penalty, no-repeat n-grams)."""
    model.eval()
    out: list[str] = []
    for i in tqdm(range(0, len(documents), batch_size), desc="summarise", disable=None, leave=False):
        enc = tokenizer([PREFIX + d for d in documents[i:i + batch_size]], max_length=config.max_source_len,
                        truncation=True, padding=True, return_tensors="pt").to(device)
        ids = model.generate(**enc, max_new_tokens=config.max_target_len, num_beams=config.beam_size,
                             length_penalty=config.length_penalty, no_repeat_ngram_size=config.no_repeat_ngram_size,
                             early_stopping=True, do_sample=False)
        out += tokenizer.batch_decode(ids, skip_special_tokens=True)
    return out


def run(config: T5FinetuneConfig) -> Path:
    """Fine-tune (:func:`genlab.summarizer.train`), then summarise the test part and score it;
    returns the run directory (the fine-tuned model, the weights of the epoch of the lowest validation
    NLL, is saved in its model/ folder). Data-parallel
    under torchrun (:mod:`genlab.summarizer`).

    Raises:
        ConfigError: ``--batch-size`` not a multiple of the number of torchrun processes.
    """
    device = start(config)
    with Run("t5-finetune", config, device) as run:
        tokenizer = load_tokenizer(config)
        parts = load_data(config)
        (src, tgt), (valid_src, valid_tgt) = (tokenize(tokenizer, parts[k], config) for k in ("train", "validation"))
        steps = total_steps(config, len(src), run.world)
        seed_everything(config.seed)
        model = load_model(config, tokenizer, config.seed).to(device)
        opt, sched = build_optimizer(model, config)
        run.hold(model=model, optimizer=opt, scheduler=sched)
        n_params = sum(p.numel() for p in model.parameters())
        if run.is_main:
            print(f"t5-finetune: {len(src)} train / {len(parts['test'])} test pairs, {n_params:,} parameters, "
                  f"{'random init' if config.random_init else config.init}, {steps} steps")
        pad_id = tokenizer.pad_token_id
        train(run, config, model, opt, sched, [len(s) for s in src], steps,
              lambda m, idx: batch_nll(m, src, tgt, idx, pad_id),
              lambda m, idx: batch_nll(m, valid_src, valid_tgt, idx, pad_id), len(valid_src))
        if run.is_main:  # the saved model and the test summaries, of the best validation epoch: one process's work
            selected = load_best(model, run.path)
            model.save_pretrained(run.path / "model")
            tokenizer.save_pretrained(run.path / "model")
            title = "T5 fine-tuned" + (" (tiny, random init)" if config.random_init else f" from {config.init}")
            finish(run.dir, config, lambda docs: summarise(model, tokenizer, docs, config, device), parts,
                   run.elapsed_s, n_params, title=title, system="T5 (this run)", experiment="t5-finetune",
                   selected_epoch=selected)
    return run.path


EXPERIMENT = Experiment(
    name="t5-finetune",
    summary="SPEC §10: fine-tune T5ForConditionalGeneration ('summarize: ') from --init DIR on XSum (official test "
            "pairs), ROUGE vs LEAD-1 and a constant sentence",
    config=T5FinetuneConfig,
    run=run,
    data_parallel=True,
)
