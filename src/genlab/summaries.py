"""Summarisation data, tokeniser, ROUGE and the LEAD-1 baseline (SPEC §10).

Data: JSONL files of (document, summary) pairs. The defaults live in the shared data folder
beside the repository (``<repo>/../shared/data``, or ``--data-dir`` / ``GENLAB_DATA_DIR``):

* ``xsum/xsum_subset.jsonl``: 3,740 real XSum pairs (Narayan et al. 2018);
* ``bbc-news-summary/bbc_news_summary.jsonl``: 2,225 BBC articles with extractive summaries;
* ``t5-small-tokenizer/spiece.model``: the t5-small SentencePiece model (Raffel et al. 2020).

With a few thousand pairs, the pairs are split by a hash of their id, not by XSum's official
split (1,000 train / 2,740 test in the subset): :func:`hash_split` sends 90 % to train, 5 %
to validation and 5 % to test, the same on every machine.

ROUGE (Lin 2004) is Google's ``rouge-score`` package with the Porter stemmer, F-measures x 100.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from genlab.errors import GenlabError

__all__ = ["Pair", "DataError", "shared_data_dir", "default_data_file", "tokenizer_dir", "load_pairs", "hash_split",
           "split_pairs", "SentencePieceTokenizer", "split_sentences", "lead_1", "rouge_scores", "ROUGE_KEYS"]

ROUGE_KEYS = ("rouge1", "rouge2", "rougeL", "rougeLsum")
DATASETS = {  # --dataset -> file under the shared data folder
    "xsum-subset": "xsum/xsum_subset.jsonl",
    "bbc-news-summary": "bbc-news-summary/bbc_news_summary.jsonl",
}
# XSum on the Hugging Face hub, for a user who is online (needs `pip install datasets`).
HF_XSUM = "EdinburghNLP/xsum"


class DataError(GenlabError, RuntimeError):
    """A data or tokenizer file is missing, truncated or in the wrong format."""


@dataclass(frozen=True)
class Pair:
    """One (document, summary) pair; ``split`` is the source's own split label if any."""

    id: str
    document: str
    summary: str
    split: str | None = None


def shared_data_dir(data_dir: str | Path | None = None) -> Path:
    """``data_dir``, else ``$GENLAB_DATA_DIR``, else ``<repository root>/../shared/data``."""
    if data_dir is not None:
        return Path(data_dir)
    if os.environ.get("GENLAB_DATA_DIR"):
        return Path(os.environ["GENLAB_DATA_DIR"])
    return Path(__file__).resolve().parents[2].parent / "shared" / "data"


def default_data_file(dataset: str, data_dir: str | Path | None = None) -> Path:
    """The JSONL file of a named dataset (``xsum-subset``, ``bbc-news-summary``)."""
    if dataset not in DATASETS:
        raise ValueError(f"unknown --dataset {dataset!r}; known: {', '.join(DATASETS)} or xsum-hf")
    return shared_data_dir(data_dir) / DATASETS[dataset]


def tokenizer_dir(path: str | Path | None = None, data_dir: str | Path | None = None) -> Path:
    """The t5-small tokenizer folder: ``path`` or ``<shared data>/t5-small-tokenizer``."""
    return Path(path) if path is not None else shared_data_dir(data_dir) / "t5-small-tokenizer"


def load_pairs(path: str | Path) -> list[Pair]:
    """Read a JSONL file of pairs: each line an object with ``document`` (or ``article``) and
    ``summary`` strings, and optionally ``id`` (default: the line number) and ``split``.

    Raises:
        DataError: missing file, a line that is not JSON, or a line without the fields; the
        message names the file and line.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file. Pass --data FILE.jsonl (fields document, summary), or --data-dir "
                        "the folder holding xsum/xsum_subset.jsonl (the shared data folder)")
    pairs = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}, line {n}: not JSON ({err}); the file is truncated or not JSONL") from err
            document = row.get("document", row.get("article")) if isinstance(row, dict) else None
            summary = row.get("summary") if isinstance(row, dict) else None
            if not isinstance(document, str) or not isinstance(summary, str):
                raise DataError(f"{path}, line {n}: needs string fields 'document' (or 'article') and 'summary'")
            pairs.append(Pair(str(row.get("id", n)), document, summary, row.get("split")))
    if not pairs:
        raise DataError(f"{path}: no pairs in the file")
    return pairs


def load_hf_xsum() -> list[Pair]:
    """XSum from the Hugging Face hub (online users; needs the ``datasets`` package)."""
    try:
        import datasets
    except ImportError as err:
        raise DataError("--dataset xsum-hf needs the `datasets` package (pip install datasets) and internet") from err
    pairs = []
    for split, name in (("train", "train"), ("validation", "validation"), ("test", "test")):
        for row in datasets.load_dataset(HF_XSUM, split=name):
            pairs.append(Pair(str(row["id"]), row["document"], row["summary"], split))
    return pairs


def hash_split(pair_id: str) -> str:
    """``"train"`` (90 %), ``"validation"`` (5 %) or ``"test"`` (5 %) from sha256(id) mod 100."""
    bucket = int(hashlib.sha256(pair_id.encode("utf-8")).hexdigest(), 16) % 100
    return "train" if bucket < 90 else "validation" if bucket < 95 else "test"


def split_pairs(pairs: list[Pair], official: bool = False) -> dict[str, list[Pair]]:
    """Pairs by split: by :func:`hash_split` of the id, or by the file's own labels
    (``official``, for the full XSum). Order within a split is the file's order."""
    out: dict[str, list[Pair]] = {"train": [], "validation": [], "test": []}
    for p in pairs:
        split = p.split if official else hash_split(p.id)
        if split not in out:
            raise DataError(f"pair {p.id}: split label {split!r} is not train, validation or test")
        out[split].append(p)
    return out


class SentencePieceTokenizer:
    """The t5-small SentencePiece model: text -> ids + [EOS] (as T5's tokenizer does).

    ids: pad 0, EOS 1, unk 2; 32,000 pieces. Raises DataError if ``spiece.model`` is missing.
    """

    def __init__(self, directory: str | Path):
        import sentencepiece as spm

        model = Path(directory) / "spiece.model"
        if not model.exists():
            raise DataError(f"{model}: no SentencePiece model. Pass --tokenizer DIR (the t5-small tokenizer "
                            "folder holding spiece.model) or --data-dir the shared data folder")
        self.sp = spm.SentencePieceProcessor(model_file=str(model))
        self.vocab_size = self.sp.get_piece_size()
        self.pad_id, self.eos_id, self.unk_id = self.sp.pad_id(), self.sp.eos_id(), self.sp.unk_id()

    def encode(self, texts: list[str], max_len: int) -> list[list[int]]:
        """Token ids of each text, truncated to ``max_len - 1`` pieces, then EOS."""
        return [ids[:max_len - 1] + [self.eos_id] for ids in self.sp.encode(list(texts))]

    def decode(self, ids: list[int]) -> str:
        """Text of ids; stops at the first EOS, skips padding."""
        if self.eos_id in ids:
            ids = ids[:ids.index(self.eos_id)]
        return self.sp.decode([i for i in ids if i != self.pad_id])


_SENTENCE_END = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"'\u201d\u2019)]))\s+(?=[\"'\u201c\u2018(]*[A-Z0-9])")


def split_sentences(text: str) -> list[str]:
    """Sentences of a text: line breaks, then ., ! or ? followed by space and a capital or a
    digit (a rule, not a trained splitter: NLTK's punkt data is not available offline)."""
    out = []
    for line in text.splitlines():
        out += [s.strip() for s in _SENTENCE_END.split(line.strip()) if s.strip()]
    return out


def lead_1(document: str) -> str:
    """The LEAD-1 baseline: the document's first sentence."""
    sentences = split_sentences(document)
    return sentences[0] if sentences else ""


def rouge_scores(predictions: list[str], references: list[str], bootstrap: int = 1000,
                 seed: int = 0) -> dict[str, dict[str, float]]:
    """ROUGE-1, -2, -L and -Lsum F-measures x 100 (``rouge-score``, Porter stemmer on).

    ROUGE-Lsum sees one sentence per line (:func:`split_sentences`).

    Returns: per key, ``{"f": mean, "low": ..., "high": ...}``: the mean over pairs and a 95 %
    bootstrap interval of it (``bootstrap`` resamples, numpy seed ``seed``; 0 skips it).
    Raises ValueError if the lists differ in length or are empty.
    """
    from rouge_score import rouge_scorer

    if len(predictions) != len(references) or not predictions:
        raise ValueError(f"need as many predictions as references (> 0), got {len(predictions)} and {len(references)}")
    scorer = rouge_scorer.RougeScorer(list(ROUGE_KEYS), use_stemmer=True)
    per_pair = np.zeros((len(predictions), len(ROUGE_KEYS)))
    for i, (pred, ref) in enumerate(zip(predictions, references)):
        s = scorer.score("\n".join(split_sentences(ref)), "\n".join(split_sentences(pred)))  # (target, prediction)
        per_pair[i] = [s[k].fmeasure for k in ROUGE_KEYS]
    per_pair *= 100
    out = {k: {"f": float(per_pair[:, j].mean())} for j, k in enumerate(ROUGE_KEYS)}
    if bootstrap:
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, len(per_pair), size=(bootstrap, len(per_pair)))
        means = per_pair[idx].mean(axis=1)  # (bootstrap, keys)
        for j, k in enumerate(ROUGE_KEYS):
            out[k]["low"], out[k]["high"] = (float(v) for v in np.percentile(means[:, j], [2.5, 97.5]))
    return out


def format_rouge(scores: dict[str, dict[str, float]]) -> str:
    """'R1 / R2 / RL / RLsum', the F-measures x 100 with two decimals."""
    return " / ".join(f"{scores[k]['f']:.2f}" for k in ROUGE_KEYS)
