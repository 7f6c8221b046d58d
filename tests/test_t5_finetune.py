"""SPEC §10 T5 fine-tuning: the tokenizer is the real t5-small one, the batches are what T5
expects, one step lowers the loss, and a CLI smoke run on real pairs writes every output."""


import pytest
import torch

from conftest import genlab_here
from genlab.errors import NotFoundError
from genlab.record import Record
from genlab.summaries import Pair, SentencePieceTokenizer, shared_data_dir, tokenizer_dir

pytest.importorskip("transformers")
TOKENIZER = tokenizer_dir()
XSUM = shared_data_dir() / "xsum" / "xsum_subset.jsonl"
pytestmark = pytest.mark.skipif(not (TOKENIZER / "spiece.model").exists() or not XSUM.exists(),
                                reason="the shared t5-small tokenizer / XSum subset are not present")


def _config(**kw):
    from genlab.experiments.t5_finetune import T5FinetuneConfig

    return T5FinetuneConfig(random_init=True, max_source_len=32, max_target_len=8, **kw)


def test_transformers_tokenizer_equals_sentencepiece():
    """The transformers T5 tokenizer and our SentencePiece wrapper give the same ids (+ EOS)."""
    from genlab.experiments.t5_finetune import PREFIX, load_tokenizer

    tok = load_tokenizer(_config())
    text = PREFIX + "The London trio are up for best UK act, costing £600m (76%)."
    assert tok(text).input_ids == SentencePieceTokenizer(TOKENIZER).encode([text], 1000)[0]
    assert tok.pad_token_id == 0 and tok.eos_token_id == 1


def test_batches_have_prefix_padding_and_ignored_labels():
    from genlab.experiments.t5_finetune import load_tokenizer, tokenize
    from genlab.t5 import collate

    config = _config()
    tok = load_tokenizer(config)
    pairs = [Pair("a", "A short document.", "Short."), Pair("b", "A much longer document " * 10, "Longer summary here.")]
    src, tgt = tokenize(tok, pairs, config)
    assert tok.decode(src[0], skip_special_tokens=True).startswith("summarize: A short")
    assert len(src[1]) == 32 and src[1][-1] == tok.eos_token_id  # truncated, EOS kept
    input_ids, mask, labels = collate(src, tgt, [0, 1], tok.pad_token_id, torch.device("cpu"))
    assert mask[0].sum() == len(src[0]) and (input_ids[0, len(src[0]):] == 0).all()
    assert (labels[0, len(tgt[0]):] == -100).all() and labels[0, len(tgt[0]) - 1] == tok.eos_token_id


def test_random_init_rejects_both_or_neither(tmp_path):
    from genlab.experiments.t5_finetune import T5FinetuneConfig

    with pytest.raises(ValueError, match="exactly one"):
        T5FinetuneConfig()
    with pytest.raises(NotFoundError, match="config.json"):  # a GenlabError and a FileNotFoundError
        T5FinetuneConfig(init=tmp_path)


def test_loss_is_the_token_mean_cross_entropy_and_falls():
    """T5's loss is the mean NLL of the non-ignored labels (checked against F.cross_entropy);
    a few AdamW steps on one batch lower it."""
    from genlab.experiments.t5_finetune import load_model, load_tokenizer, tokenize
    from genlab.t5 import collate

    config = _config()
    tok = load_tokenizer(config)
    model = load_model(config, tok, seed=0)
    pairs = [Pair("a", "Rain fell on the town all day.", "It rained."), Pair("b", "The team won the cup.", "A win.")]
    src, tgt = tokenize(tok, pairs, config)
    input_ids, mask, labels = collate(src, tgt, [0, 1], tok.pad_token_id, torch.device("cpu"))
    out = model(input_ids=input_ids, attention_mask=mask, labels=labels)
    expected = torch.nn.functional.cross_entropy(out.logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = out.loss.item()
    for _ in range(5):
        loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first - 0.5


@pytest.mark.slow
def test_cli_smoke_on_real_pairs(tmp_path):
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(XSUM.read_text().splitlines(keepends=True)[:200]))
    out = tmp_path / "run"
    genlab_here("run", "t5-finetune", "--random-init", "--data", str(data), "--max-steps", "2", "--test-limit", "3",
                "--batch-size", "4", "--max-source-len", "64", "--max-target-len", "12", "--beam-size", "2",
                "--out", str(out))
    for name in ("config.json", "env.json", "metrics.json", "summary.md", "test_summaries.jsonl",
                 "metrics/steps.jsonl", "checkpoints/last.pt", "figures/loss_steps.png", "figures/rouge.png",
                 "model/config.json"):
        assert (out / name).exists(), name
    record = Record.read(out)
    metrics = record.extra
    assert record.experiment == "t5-finetune" and record.metric("rougeL").reference.value == 20.75
    assert metrics["n_test"] == 3 and metrics["system"] == "T5 (this run)"


# -- t5-pretrain: span corruption ----------------------------------------------------------

def test_noise_mask_has_t5s_density_and_spans():
    """length 128, density 0.15, mean span 3: round(19.2) = 19 noise tokens in round(19 / 3) = 6
    spans; the first token is never noise; different generators give different masks."""
    import numpy as np

    from genlab.experiments.t5_pretrain import random_spans_noise_mask

    masks = [random_spans_noise_mask(128, 0.15, 3.0, np.random.default_rng(s)) for s in range(20)]
    for m in masks:
        starts = int(m[0]) + int((m[1:] & ~m[:-1]).sum())
        assert m.sum() == 19 and starts == 6 and not m[0]
    assert len({m.tobytes() for m in masks}) == 20


def test_span_corruption_inputs_and_targets_rebuild_the_text():
    """Inputs keep the clean tokens with one sentinel per span; targets hold each sentinel and its
    span; putting the spans back at the sentinels gives the original tokens."""
    import numpy as np

    from genlab.experiments.t5_pretrain import corrupt

    tokens = list(range(100, 110))
    mask = np.array([0, 1, 1, 0, 0, 0, 1, 0, 0, 1], dtype=bool)
    inputs, targets = corrupt(tokens, mask, 32099, 1)
    assert inputs == [100, 32099, 103, 104, 105, 32098, 107, 108, 32097, 1]
    assert targets == [32099, 101, 102, 32098, 106, 32097, 109, 1]
    spans, current = {}, None
    for t in targets[:-1]:
        current = t if t >= 32000 else current
        spans.setdefault(current, []).extend([] if t >= 32000 else [t])
    assert [x for t in inputs[:-1] for x in (spans[t] if t >= 32000 else [t])] == tokens


def test_corpus_documents_cuts_the_corpus_before_tokenising():
    """--corpus-documents N keeps the first N documents (XSum, then BBC) and their pieces; default: all
    (3,764 XSum + 2,225 BBC documents); N < 1 is refused. A whitespace "tokenizer" stands in for t5-small's,
    so that the whole corpus is cheap to cut."""
    from types import SimpleNamespace

    from genlab.errors import ConfigError
    from genlab.experiments.t5_pretrain import T5PretrainConfig, corpus_chunks

    def words(texts, add_special_tokens):
        return SimpleNamespace(input_ids=[[len(w) for w in text.split()] for text in texts])

    full_pieces, full = corpus_chunks(T5PretrainConfig(input_length=32), words)
    assert full["xsum_documents"] > 3000 and full["bbc_articles"] > 2000
    pieces, counts = corpus_chunks(T5PretrainConfig(input_length=32, corpus_documents=5), words)
    assert counts["xsum_documents"] == 5 and counts["bbc_articles"] == 0 and pieces == full_pieces[:len(pieces)]
    assert 0 < counts["tokens"] < full["tokens"] and all(16 <= len(p) <= 32 for p in pieces)
    n = full["xsum_documents"] + 3
    _, counts = corpus_chunks(T5PretrainConfig(input_length=32, corpus_documents=n), words)
    assert (counts["xsum_documents"], counts["bbc_articles"]) == (full["xsum_documents"], 3)
    _, counts = corpus_chunks(T5PretrainConfig(input_length=32, corpus_documents=10 ** 9), words)
    assert counts == full
    for bad in (0, -1):
        with pytest.raises(ConfigError, match="--corpus-documents"):
            T5PretrainConfig(corpus_documents=bad)


def test_pretrained_model_is_fine_tuned_through_init(tmp_path):
    """t5-pretrain saves with save_pretrained; t5-finetune --init loads those weights."""
    from safetensors.torch import load_file

    out = tmp_path / "pt"
    genlab_here("run", "t5-pretrain", "--epochs", "1", "--max-steps", "2", "--d-model", "32", "--d-ff", "64",
                "--d-kv", "8", "--num-layers", "1", "--batch-size", "4", "--input-length", "32",
                "--corpus-documents", "50", "--out", str(out))
    record = Record.read(out)
    assert record.tables[0].rows[0][:2] == [50, 0] and 0 < record.metric("corpus_tokens").value < 1e5
    trained, initial = load_file(out / "model" / "model.safetensors"), load_file(out / "model_init" / "model.safetensors")
    assert not torch.equal(trained["shared.weight"], initial["shared.weight"])
    from genlab.experiments.t5_finetune import T5FinetuneConfig, load_model, load_tokenizer

    config = T5FinetuneConfig(init=out / "model")
    model = load_model(config, load_tokenizer(config), 0)
    assert torch.equal(model.shared.weight.detach(), trained["shared.weight"])
