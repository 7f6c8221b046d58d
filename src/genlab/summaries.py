"""Summarisation data, tokeniser, ROUGE and the LEAD-1 baseline (SPEC §10).

Data: JSONL files of (document, summary) pairs. The defaults live in the shared data folder
beside the repository (``<repo>/../shared/data``, or ``--data-dir`` / ``GENLAB_DATA_DIR``):

* ``xsum/xsum_subset.jsonl``: 3,740 real XSum pairs (Narayan et al. 2018), each with its official
  split (1,000 train, 2,740 test);
* ``xsum/xsum_extra.jsonl``: 2,764 more XSum pairs, none of them from the official test split;
* ``bbc-news-summary/bbc_news_summary.jsonl``: 2,225 BBC articles with extractive summaries;
* ``t5-small-tokenizer/spiece.model``: the t5-small SentencePiece model (Raffel et al. 2020).

The XSum protocol (``--dataset xsum``, the default; :func:`split_pairs` with ``official``): test on
the 2,740 official test pairs; train on every other pair (the subset's 1,000 train pairs and the
2,764 extra ones), less a validation slice of 5 % chosen by a hash of the id (:func:`hash_split`)
for model selection. Files without split labels are split 90 / 5 / 5 by that hash.

ROUGE (Lin 2004) is Google's ``rouge-score`` package with the Porter stemmer, F-measures x 100,
with its ``BootstrapAggregator`` for 95 % intervals. Beside it: the share of distinct summaries,
distinct-n (Li et al. 2016), and two baselines: LEAD-1 and one constant sentence
(:func:`constant_sentence`, chosen on training summaries only).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from genlab.errors import ConfigError, GenlabError

__all__ = ["Pair", "DataError", "shared_data_dir", "default_data_file", "default_data_files", "tokenizer_dir", "load_pairs", "hash_split",
           "split_pairs", "SentencePieceTokenizer", "split_sentences", "lead_1", "rouge_scores", "ROUGE_KEYS",
           "words", "distinct_n", "unique_share", "constant_sentence"]

ROUGE_KEYS = ("rouge1", "rouge2", "rougeL", "rougeLsum")
DATASETS = {  # --dataset -> files under the shared data folder, and whether their split labels are used
    "xsum": (("xsum/xsum_subset.jsonl", "xsum/xsum_extra.jsonl"), True),
    "xsum-subset": (("xsum/xsum_subset.jsonl",), True),
    "bbc-news-summary": (("bbc-news-summary/bbc_news_summary.jsonl",), False),
}
VALIDATION_PERCENT = 5
"""The validation slice of the non-test pairs, in % (by :func:`hash_split` of the id)."""
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


def default_data_files(dataset: str, data_dir: str | Path | None = None) -> tuple[list[Path], bool]:
    """The JSONL files of a named dataset (``xsum``, ``xsum-subset``, ``bbc-news-summary``) and
    whether their own split labels define the test part (True for XSum).

    Raises ConfigError for an unknown name."""
    if dataset not in DATASETS:
        raise ConfigError(f"unknown --dataset {dataset!r}; known: {', '.join(DATASETS)} or xsum-hf")
    files, official = DATASETS[dataset]
    return [shared_data_dir(data_dir) / f for f in files], official


def default_data_file(dataset: str, data_dir: str | Path | None = None) -> Path:
    """The first JSONL file of a named dataset (:func:`default_data_files`)."""
    return default_data_files(dataset, data_dir)[0][0]


def tokenizer_dir(path: str | Path | None = None, data_dir: str | Path | None = None) -> Path:
    """The t5-small tokenizer folder: ``path`` or ``<shared data>/t5-small-tokenizer``."""
    return Path(path) if path is not None else shared_data_dir(data_dir) / "t5-small-tokenizer"


def load_pairs(path: str | Path) -> list[Pair]:
    """Read a JSONL file of pairs: each line an object with ``document`` (or ``article``) and
    ``summary`` strings, and optionally ``id`` (missing or null: ``<file stem>:<line number>``) and
    ``split``.

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
            pair_id = row.get("id")
            pairs.append(Pair(f"{path.stem}:{n}" if pair_id is None else str(pair_id), document, summary,
                              row.get("split")))
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
    """Pairs by split, in the file's order within a split.

    Without ``official``: by :func:`hash_split` of the id (90 / 5 / 5). With ``official`` (the
    XSum protocol): the pairs labelled ``test`` are the test part; the others (labelled train,
    validation or unlabelled) are for training, less the validation slice: those labelled
    ``validation`` when there are any (the full XSum), else the :data:`VALIDATION_PERCENT` % whose
    ``sha256(id) mod 100`` is below it.

    Raises DataError for a split label other than train, validation, test or none.
    """
    out: dict[str, list[Pair]] = {"train": [], "validation": [], "test": []}
    labelled_validation = official and any(p.split == "validation" for p in pairs)
    for p in pairs:
        if p.split not in (None, *out):
            raise DataError(f"pair {p.id}: split label {p.split!r} is not train, validation, test or null")
        if not official:
            split = hash_split(p.id)
        elif p.split == "test" or labelled_validation:
            split = p.split or "train"
        else:
            bucket = int(hashlib.sha256(p.id.encode("utf-8")).hexdigest(), 16) % 100
            split = "validation" if bucket < VALIDATION_PERCENT else "train"
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

    Returns: per key, ``{"f": mean, "low": ..., "high": ...}``: the mean over pairs and the 95 %
    bootstrap interval of it from ``rouge_score.scoring.BootstrapAggregator`` (``bootstrap``
    resamples drawn from numpy's global generator seeded with ``seed``, its state restored after;
    0 skips it). Raises ValueError if the lists differ in length or are empty.
    """
    from rouge_score import rouge_scorer, scoring

    if len(predictions) != len(references) or not predictions:
        raise ValueError(f"need as many predictions as references (> 0), got {len(predictions)} and {len(references)}")
    scorer = rouge_scorer.RougeScorer(list(ROUGE_KEYS), use_stemmer=True)
    scores = [scorer.score("\n".join(split_sentences(ref)), "\n".join(split_sentences(pred)))  # (target, prediction)
              for pred, ref in zip(predictions, references)]
    out = {k: {"f": 100 * float(np.mean([s[k].fmeasure for s in scores]))} for k in ROUGE_KEYS}
    if bootstrap:
        aggregator = scoring.BootstrapAggregator(confidence_interval=0.95, n_samples=bootstrap)
        for s in scores:
            aggregator.add_scores(s)
        state = np.random.get_state()
        np.random.seed(seed)
        try:
            intervals = aggregator.aggregate()
        finally:
            np.random.set_state(state)
        for k in ROUGE_KEYS:
            out[k]["low"], out[k]["high"] = 100 * intervals[k].low.fmeasure, 100 * intervals[k].high.fmeasure
    return out


def words(text: str) -> list[str]:
    """ROUGE's word tokens of a text (``rouge-score``'s tokenizer: lower case, runs of letters and
    digits), without stemming."""
    from rouge_score import tokenize

    return tokenize.tokenize(text, None)


def distinct_n(texts: list[str], n: int) -> float:
    """distinct-n (Li et al. 2016, "A diversity-promoting objective function for neural
    conversation models", §4.3): distinct n-grams over all n-grams of all ``texts`` (:func:`words`),
    in [0, 1]; 0 when there is no n-gram."""
    grams = [tuple(w[i:i + n]) for w in map(words, texts) for i in range(len(w) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def unique_share(texts: list[str]) -> float:
    """Distinct texts (exact string match after stripping) over all texts, in [0, 1]."""
    return len({t.strip() for t in texts}) / len(texts) if texts else 0.0


def _unigram_f(a: Counter, b: Counter) -> float:
    overlap = sum((a & b).values())
    return 2 * overlap / (sum(a.values()) + sum(b.values())) if overlap else 0.0


def mean_unigram_f_plain(bags: list[Counter], others: list[int]) -> list[float]:
    """For each bag i, the mean over j in ``others``, j != i, of the unigram F-measure of bags i and
    j (ROUGE-1 F of token-count bags), summed in the order of ``others``; 0.0 when no j. The plain
    definition, O(len(bags) * len(others)) Counter intersections; :func:`mean_unigram_f` is the
    same numbers, vectorised."""
    means = []
    for i in range(len(bags)):
        total, n = 0.0, 0
        for j in others:
            if j != i:
                total, n = total + _unigram_f(bags[i], bags[j]), n + 1
        means.append(total / n if n else 0.0)
    return means


def mean_unigram_f(bags: list[Counter], others: list[int], rows: int = 2048) -> list[float]:
    """:func:`mean_unigram_f_plain`, bit for bit, as sparse matrix products.

    The overlap of two bags, sum_w min(a_w, b_w), is sum_k sum_w [a_w >= k][b_w >= k]: one sparse
    product of 0/1 "count >= k" matrices per count level k (exact integers in float64). Each F is
    the plain version's one division 2 overlap / (|a| + |b|) and each mean the same left-to-right sum
    (``np.cumsum``; the excluded j = i adds 0.0), so the numbers are the same floats. ``rows`` bags
    are done at a time (memory: rows x len(others) float64).
    """
    from scipy import sparse

    vocab: dict[str, int] = {}
    indptr, indices, data = [0], [], []
    for bag in bags:
        for word, count in bag.items():
            indices.append(vocab.setdefault(word, len(vocab)))
            data.append(count)
        indptr.append(len(indices))
    counts = sparse.csr_matrix((np.asarray(data, dtype=np.float64), indices, indptr),
                               shape=(len(bags), max(1, len(vocab))))
    lengths = np.asarray(counts.sum(axis=1), dtype=np.float64).ravel()  # (n,) tokens per bag
    cols = np.asarray(others, dtype=np.int64)
    levels = [((counts >= k).astype(np.float64), (counts[cols] >= k).astype(np.float64).T.tocsc())
              for k in range(1, int(counts.max()) + 1)] if counts.nnz else []
    means = []
    for start in range(0, len(bags), rows):
        stop = min(start + rows, len(bags))
        overlap = np.zeros((stop - start, len(cols)))
        for at_least, others_at_least in levels:
            overlap += (at_least[start:stop] @ others_at_least).toarray()
        f = np.divide(2 * overlap, lengths[start:stop, None] + lengths[None, cols], out=np.zeros_like(overlap),
                      where=overlap > 0)
        own = cols[None, :] == np.arange(start, stop)[:, None]  # j == i: left out of the mean
        f[own] = 0.0
        n = len(cols) - own.sum(axis=1)
        totals = np.cumsum(f, axis=1)[:, -1] if len(cols) else np.zeros(stop - start)
        means += [float(t / m) if m else 0.0 for t, m in zip(totals, n)]
    return means


def constant_sentence(summaries: list[str], sample: int = 500, seed: int = 0) -> str:
    """The constant-sentence baseline: the training summary with the highest mean ROUGE-1 F
    (stemmed unigram F-measure, as ``rouge-score`` computes it) against ``sample`` other training
    summaries drawn with ``random.Random(seed)`` (all of them when there are fewer; ties to the
    first), computed by :func:`mean_unigram_f`. Only ``summaries`` (training data) are seen; every
    test document then gets this one sentence.

    Raises ValueError for an empty list."""
    from rouge_score import tokenizers

    if not summaries:
        raise ValueError("constant_sentence needs at least one training summary")
    tokenizer = tokenizers.DefaultTokenizer(use_stemmer=True)
    bags = [Counter(tokenizer.tokenize(s)) for s in summaries]
    others = random.Random(seed).sample(range(len(bags)), min(sample, len(bags)))
    means = mean_unigram_f(bags, others)
    return summaries[max(range(len(bags)), key=lambda i: (means[i], -i))]
