"""SPEC §10: the Transformer's masks, cached decoding, beam search, ROUGE, data; a CLI smoke run."""

import hashlib
import itertools
import json
import math

import pytest
import torch

from conftest import genlab_here
from genlab.record import Record
from genlab.summaries import (DataError, Pair, constant_sentence, distinct_n, hash_split, lead_1, load_pairs,
                              rouge_scores, shared_data_dir, split_pairs, split_sentences, unique_share)
from genlab.transformer import (Transformer, TransformerConfig, beam_search, greedy_decode, label_smoothed_nll,
                                sinusoidal_positions)

XSUM = shared_data_dir() / "xsum" / "xsum_subset.jsonl"
needs_xsum = pytest.mark.skipif(not XSUM.exists(), reason=f"{XSUM} not present")


def tiny(vocab: int = 40, dropout: float = 0.0, seed: int = 0, **kw) -> Transformer:
    torch.manual_seed(seed)
    c = TransformerConfig(vocab_size=vocab, d_model=32, n_heads=4, n_encoder_layers=2, n_decoder_layers=2, d_ff=64,
                          dropout=dropout, max_len=64, **kw)
    return Transformer(c).double().eval()


def sources(b: int = 3, s: int = 9, vocab: int = 40, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(3, vocab, (b, s), generator=g)
    src[0, 5:] = 0  # row 0: 5 tokens then padding
    src[1, 7:] = 0
    return src


# -- masks --------------------------------------------------------------------------------

def test_positions_are_vaswani_sinusoids():
    pe = sinusoidal_positions(10, 8)
    assert pe[3, 2] == pytest.approx(math.sin(3 / 10000 ** (2 / 8)), abs=1e-6)
    assert pe[3, 3] == pytest.approx(math.cos(3 / 10000 ** (2 / 8)), abs=1e-6)


def test_no_attention_to_source_padding():
    """Changing the tokens at padding positions (the mask still says padding) changes
    neither the encoder states of real tokens nor any decoder logit."""
    model = tiny()
    src = sources()
    padding = src == 0
    noisy = src.clone()
    noisy[padding] = torch.randint(3, 40, (int(padding.sum()),), generator=torch.Generator().manual_seed(5))
    tgt = torch.randint(3, 40, (3, 6), generator=torch.Generator().manual_seed(2))
    m1, m2 = model.encode(src, padding), model.encode(noisy, padding)
    assert torch.allclose(m1[~padding], m2[~padding], atol=1e-12)
    assert not torch.allclose(m1[padding], m2[padding])  # the perturbation did reach the padded positions
    assert torch.allclose(model(src, tgt, padding), model(noisy, tgt, padding), atol=1e-12)
    # and without the mask the same perturbation does change the output: the test can fail
    assert not torch.allclose(model(src, tgt, torch.zeros_like(padding)), model(noisy, tgt, torch.zeros_like(padding)))


def test_no_attention_to_future_positions():
    """Logits at decoder positions <= t do not depend on tokens after t."""
    model = tiny()
    src = sources()
    tgt = torch.randint(3, 40, (3, 8), generator=torch.Generator().manual_seed(3))
    base = model(src, tgt)
    for t in range(7):
        changed = tgt.clone()
        changed[:, t + 1:] = torch.randint(3, 40, changed[:, t + 1:].shape, generator=torch.Generator().manual_seed(t))
        out = model(src, changed)
        assert torch.allclose(out[:, :t + 1], base[:, :t + 1], atol=1e-12)
        assert not torch.allclose(out[:, t + 1:], base[:, t + 1:])


def test_no_attention_to_target_padding():
    """A decoder position marked as padding is invisible to the later positions."""
    model = tiny()
    src = sources()
    tgt = torch.randint(3, 40, (3, 8), generator=torch.Generator().manual_seed(4))
    tgt_padding = torch.zeros_like(tgt, dtype=torch.bool)
    tgt_padding[:, 3] = True
    changed = tgt.clone()
    changed[:, 3] = (changed[:, 3] + 7) % 37 + 3
    a, b = model(src, tgt, None, tgt_padding), model(src, changed, None, tgt_padding)
    keep = [0, 1, 2, 4, 5, 6, 7]
    assert torch.allclose(a[:, keep], b[:, keep], atol=1e-12)


def test_label_smoothing_matches_closed_form():
    """(1 - eps) NLL + eps * mean over the vocabulary of -log p, padding ignored."""
    torch.manual_seed(0)
    logits, labels = torch.randn(2, 5, 11), torch.randint(1, 11, (2, 5))
    labels[1, 3:] = 0
    eps = 0.1
    logp = torch.log_softmax(logits, -1)
    keep = labels != 0
    nll = -logp.gather(-1, labels[..., None]).squeeze(-1)
    expected = ((1 - eps) * nll - eps * logp.mean(-1))[keep].mean()
    assert label_smoothed_nll(logits, labels, 0, eps).item() == pytest.approx(expected.item(), rel=1e-6)
    assert label_smoothed_nll(logits, labels, 0).item() == pytest.approx(nll[keep].mean().item(), rel=1e-6)


# -- generation ---------------------------------------------------------------------------

@pytest.mark.parity
def test_cached_step_logits_equal_full_decoding():
    model = tiny()
    src = sources()
    padding = src == 0
    memory = model.encode(src, padding)
    from genlab.transformer import KVCache

    c = model.config
    cache = KVCache(c.n_decoder_layers, 3, c.n_heads, 10, c.d_model // c.n_heads, memory.device, memory.dtype)
    cross = model.cross_kv(memory)
    prefix = torch.zeros(3, 1, dtype=torch.long)
    for t in range(6):
        cached = model.decode_step(prefix[:, -1:], cache, cross, padding)
        full = model.logits(model.decode(prefix, memory, padding))[:, -1]
        assert torch.allclose(cached, full, atol=1e-10)
        prefix = torch.cat([prefix, torch.randint(3, 40, (3, 1))], 1)


@pytest.mark.parity
@pytest.mark.parametrize("no_repeat", [0, 2])
def test_cached_and_uncached_decoding_give_the_same_tokens(no_repeat):
    model = tiny(eos_id=1)
    src = sources()
    for kwargs in ({"stop_at_eos": False}, {}):
        cached = greedy_decode(model, src, 20, True, no_repeat, **kwargs)
        plain = greedy_decode(model, src, 20, False, no_repeat, **kwargs)
        assert cached == plain
    assert all(len(r) == 20 for r in greedy_decode(model, src, 20, stop_at_eos=False))
    assert beam_search(model, src, 3, 12, 0.8, no_repeat, True) == beam_search(model, src, 3, 12, 0.8, no_repeat, False)


@pytest.mark.parity
@pytest.mark.parametrize("no_repeat", [0, 2])
def test_beam_one_is_greedy(no_repeat):
    for seed in range(3):
        model = tiny(seed=seed, eos_id=1)
        src = sources(seed=seed)
        assert beam_search(model, src, 1, 15, 1.0, no_repeat) == greedy_decode(model, src, 15, no_repeat_ngram_size=no_repeat)


def test_no_repeat_ngram_rule_holds():
    model = tiny()
    for row in greedy_decode(model, sources(), 30, no_repeat_ngram_size=2, stop_at_eos=False):
        bigrams = list(zip(row, row[1:]))
        assert len(bigrams) == len(set(bigrams))


def _sequence_logprob(model, src_row, seq):
    tgt_in = torch.tensor([[0] + seq[:-1]])
    logp = torch.log_softmax(model(src_row[None], tgt_in), -1)[0]
    return sum(logp[i, tok].item() for i, tok in enumerate(seq))


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_wide_beam_finds_the_exhaustive_optimum(alpha):
    """With a beam wider than every hypothesis, beam search returns the argmax over all
    sequences of at most 3 tokens (ending in EOS, or 3 long) of log p / len^alpha."""
    vocab, max_new = 5, 3
    model = tiny(vocab=vocab, eos_id=1, seed=7)
    src = torch.randint(2, vocab, (2, 6), generator=torch.Generator().manual_seed(8))
    got = beam_search(model, src, vocab ** max_new, max_new, alpha)
    for b in range(2):
        candidates = []
        for n in range(1, max_new + 1):
            for seq in itertools.product(range(vocab), repeat=n):
                if 1 in seq[:-1] or (n < max_new and seq[-1] != 1):
                    continue
                candidates.append((_sequence_logprob(model, src[b], list(seq)) / n ** alpha, list(seq)))
        assert got[b] == max(candidates)[1]


# -- ROUGE, LEAD-1 --------------------------------------------------------------------------

def test_rouge_identical_and_disjoint():
    s = rouge_scores(["The cat sat on the mat."], ["The cat sat on the mat."], bootstrap=0)
    assert all(s[k]["f"] == pytest.approx(100.0) for k in s)
    s = rouge_scores(["dogs bark loudly"], ["the cat sat"], bootstrap=0)
    assert all(s[k]["f"] == 0.0 for k in s)


def test_rouge_worked_bigram_case():
    """Reference "the cat sat on the mat", prediction "the cat sat": 2 of the reference's 5
    bigrams, both of the prediction's 2: P = 1, R = 2/5, F = 2PR/(P+R) = 4/7. Unigrams: P = 1,
    R = 3/6, F = 2/3; LCS 3: the same as ROUGE-1."""
    s = rouge_scores(["the cat sat"], ["the cat sat on the mat"], bootstrap=0)
    assert s["rouge2"]["f"] == pytest.approx(400 / 7)
    assert s["rouge1"]["f"] == pytest.approx(200 / 3)
    assert s["rougeL"]["f"] == pytest.approx(200 / 3)
    # stemming: "cats" matches "cat" ("sat" is not "sits" -> "sit"): P = 1/2, R = 1/3, F = 2/5
    assert rouge_scores(["cats sat"], ["the cat sits"], bootstrap=0)["rouge1"]["f"] == pytest.approx(40.0)


def test_rouge_bootstrap_interval_brackets_the_mean():
    """rouge-score's BootstrapAggregator: the interval brackets the mean, is seeded (the same twice,
    another with another seed) and leaves numpy's global generator as it found it."""
    import numpy as np

    preds, refs = ["a b c", "a x y", "q r s", "a b"], ["a b c", "a b c", "a b c", "a b c"]
    np.random.seed(3)
    before = np.random.get_state()[1].copy()
    s = rouge_scores(preds, refs, bootstrap=200)
    assert (np.random.get_state()[1] == before).all()
    assert s["rouge1"]["f"] == pytest.approx(100 * (1 + 1 / 3 + 0 + 0.8) / 4)  # F: 1, 1/3, 0, 2*1*(2/3)/(5/3)
    assert s["rouge1"]["low"] < s["rouge1"]["f"] < s["rouge1"]["high"]
    assert rouge_scores(preds, refs, bootstrap=200) == s
    assert rouge_scores(preds, refs, bootstrap=200, seed=1)["rouge1"] != s["rouge1"]


def test_distinct_n_and_unique_share_on_known_lists():
    """["the cat sat", "the cat ran", "The cat sat"]: 9 unigrams, 4 distinct (case folded);
    6 bigrams, 3 distinct. Unique share: exact strings after stripping (case matters)."""
    texts = ["the cat sat", "the cat ran", "The cat sat"]
    assert distinct_n(texts, 1) == pytest.approx(4 / 9)
    assert distinct_n(texts, 2) == pytest.approx(3 / 6)
    assert distinct_n(["one"], 2) == 0.0
    assert unique_share(texts) == 1.0
    assert unique_share(["the cat sat", "the cat ran", "the cat sat "]) == pytest.approx(2 / 3)
    assert unique_share(["A man has been jailed."] * 9 + ["Rain."]) == pytest.approx(0.2)


def test_lead_1_of_a_handmade_article():
    article = ("Mr. Smith arrived at 10.30 in London. \"It was late,\" he said. The U.S. team left.\nA new line.")
    assert lead_1(article) == "Mr."  # the rule splits after an abbreviation followed by a capital
    article = "Flooding closed 12 roads in Cumbria on Monday. Police said 3.5 m of rain fell! More is due."
    assert lead_1(article) == "Flooding closed 12 roads in Cumbria on Monday."
    assert lead_1("\n\nHeadline without a stop\nBody text.") == "Headline without a stop"


def test_vectorised_mean_unigram_f_is_the_plain_one_bit_for_bit():
    """mean_unigram_f (sparse products) gives the plain Counter loop's floats exactly, on real XSum
    summaries (repeated words, so count levels above 1) and on the edge cases: a bag in the sample
    (left out of its own mean), an empty bag, an empty sample, one row block smaller than the bags."""
    import random
    from collections import Counter

    from rouge_score import tokenizers

    from genlab.summaries import mean_unigram_f, mean_unigram_f_plain

    tokenizer = tokenizers.DefaultTokenizer(use_stemmer=True)
    summaries = [json.loads(line)["summary"] for line in XSUM.read_text().splitlines()[:600]]
    bags = [Counter(tokenizer.tokenize(s)) for s in summaries] + [Counter()]
    assert max(max(b.values(), default=0) for b in bags) > 1
    others = random.Random(0).sample(range(len(bags)), 200) + [len(bags) - 1]
    plain = mean_unigram_f_plain(bags, others)
    assert mean_unigram_f(bags, others) == plain and mean_unigram_f(bags, others, rows=97) == plain
    assert len(set(plain)) > 500  # the means differ: the comparison can tell rows apart
    assert mean_unigram_f(bags[:5], []) == mean_unigram_f_plain(bags[:5], []) == [0.0] * 5
    assert mean_unigram_f([Counter()], [0]) == [0.0]


def test_constant_sentence_is_the_rouge_1_medoid_of_the_training_summaries():
    """The summary sharing the most words with the others wins; test data never enter."""
    train = ["A man was jailed in Leeds.", "A man was jailed.", "A woman was jailed in Leeds.", "Rain fell."]
    assert constant_sentence(train) == "A man was jailed in Leeds."
    # 1st: "A man was jailed in Leeds." shares 5 of 6 + 5 words with the 2nd and 3rd (F 10/11, 5/6)
    # without it, the two jailed sentences tie (F 6/10 with each other, 0 with "Rain fell."): the first wins
    assert constant_sentence(train[1:]) == "A man was jailed."
    assert constant_sentence(train[2:] + train[1:2]) == "A woman was jailed in Leeds."
    with pytest.raises(ValueError):
        constant_sentence([])


def test_sentences_and_lead_1():
    assert split_sentences("First one. Second one! \"Third?\" Yes.\nNew line") == [
        "First one.", "Second one!", "\"Third?\"", "Yes.", "New line"]
    assert lead_1("It rained in 2019. Then it stopped.") == "It rained in 2019."


# -- data ---------------------------------------------------------------------------------

@needs_xsum
def test_the_xsum_protocol_tests_on_the_official_test_pairs():
    """--dataset xsum: the 2,740 official test pairs; the 1,000 + 2,764 others -> 3,566 train and
    a 198-pair validation slice (sha256 of the id); no document in two parts."""
    from genlab.summarizer import SummaryConfig, load_data

    parts = load_data(SummaryConfig())
    assert {k: len(v) for k, v in parts.items()} == {"train": 3566, "validation": 198, "test": 2740}
    assert all(p.split == "test" for p in parts["test"])
    assert not any(p.split == "test" for p in parts["train"] + parts["validation"])
    docs = [set(p.document for p in v) for v in parts.values()]
    assert not (docs[0] & docs[1] or docs[0] & docs[2] or docs[1] & docs[2])
    assert len({p.id for v in parts.values() for p in v}) == 2740 + 3764  # null ids became file:line
    subset = load_data(SummaryConfig(dataset="xsum-subset"))
    assert len(subset["test"]) == 2740 and len(subset["train"]) + len(subset["validation"]) == 1000


def test_split_rules():
    pairs = [Pair(str(i), "d", "s", split) for i, split in enumerate(["train", "test", None, "train"] * 50)]
    official = split_pairs(pairs, official=True)
    slice_ = [p.id for p in pairs if p.split != "test" and int(hashlib.sha256(p.id.encode()).hexdigest(), 16) % 100 < 5]
    assert len(official["test"]) == 50 and [p.id for p in official["validation"]] == slice_ and slice_
    assert len(official["train"]) == 150 - len(slice_)
    hashed = split_pairs(pairs)
    assert [p.id for p in hashed["test"]] == [p.id for p in pairs if hash_split(p.id) == "test"]
    labelled = split_pairs(pairs + [Pair("v", "d", "s", "validation")], official=True)
    assert [p.id for p in labelled["validation"]] == ["v"]
    with pytest.raises(DataError, match="split label"):
        split_pairs([Pair("x", "d", "s", "dev")], official=True)


def test_bad_files_are_refused_by_name(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_pairs(tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"document": "a", "summary": "b"}\n{"document": "trunc')
    with pytest.raises(DataError, match="bad.jsonl, line 2"):
        load_pairs(bad)
    bad.write_text('{"text": "a"}\n')
    with pytest.raises(DataError, match="document"):
        load_pairs(bad)


# -- the command line ---------------------------------------------------------------------

@needs_xsum
@pytest.mark.slow
def test_cli_smoke_on_real_pairs(tmp_path):
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(line for line in XSUM.read_text().splitlines(keepends=True)[:200]))
    out = tmp_path / "run"
    genlab_here("run", "summarize", "--data", str(data), "--max-steps", "3", "--epochs", "1", "--test-limit", "3",
                "--d-model", "32", "--d-ff", "64", "--n-layers", "1", "--batch-size", "8", "--max-source-len", "64",
                "--max-target-len", "12", "--precision", "fp32", "--out", str(out))
    for name in ("config.json", "env.json", "metrics.json", "summary.md", "test_summaries.jsonl",
                 "metrics/steps.jsonl", "checkpoints/last.pt", "figures/loss_steps.png", "figures/rouge.png"):
        assert (out / name).exists(), name
    record = Record.read(out)
    metrics = record.extra
    assert record.metric("rouge1").reference.value == 18.82 and record.metric("rouge1").headline
    assert record.metric("rouge2").value == metrics["rouge"]["model"]["rouge2"]["f"]
    assert metrics["n_test"] == 3 and set(metrics["rouge"]["lead_1"]) == {"rouge1", "rouge2", "rougeL", "rougeLsum"}
    assert len((out / "test_summaries.jsonl").read_text().splitlines()) == 3
    generated = [json.loads(line)["generated"] for line in (out / "test_summaries.jsonl").read_text().splitlines()]
    assert record.metric("unique_share").value == len(set(g.strip() for g in generated)) / 3
    assert record.metric("constant_rouge1").value == metrics["rouge"]["constant"]["rouge1"]["f"]
    assert metrics["constant_sentence"] in {p["summary"] for p in map(json.loads, data.read_text().splitlines())}
    assert {t.name for t in record.tables} >= {"ROUGE", "diversity", "examples"}


def test_bench_t5_small_size_matches_the_t5_small_config():
    """`genlab bench summarize --size t5-small` times a model of t5-small's sizes (its config.json)."""
    from genlab.benchmarks.summarize import SIZES
    from genlab.summaries import tokenizer_dir

    t5 = json.loads((tokenizer_dir(None, None) / "config.json").read_text())
    size = SIZES["t5-small"]
    assert (size["d_model"], size["n_heads"], size["d_ff"]) == (t5["d_model"], t5["num_heads"], t5["d_ff"])
    assert size["n_layers"] == t5["num_layers"] == t5["num_decoder_layers"]
    assert SIZES["default"] == {}


def test_teacher_forcing_offsets():
    """Decoder input = [start] + summary[:-1], labels = summary (ending in EOS); padding only
    after the EOS, where the loss ignores it."""
    from genlab.experiments.summarize import Encoded, make_batch

    c = TransformerConfig(vocab_size=40, pad_id=0, eos_id=1, decoder_start_id=0)
    data = Encoded(src=[[5, 6, 1], [7, 1]], tgt=[[9, 8, 7, 1], [4, 1]])
    src, tgt_in, labels = make_batch(data, [0, 1], c, torch.device("cpu"))
    assert src.tolist() == [[5, 6, 1], [7, 1, 0]]
    assert labels.tolist() == [[9, 8, 7, 1], [4, 1, 0, 0]]
    assert tgt_in.tolist() == [[0, 9, 8, 7], [0, 4, 1, 0]]
    logits = torch.randn(2, 4, 40)
    changed = logits.clone()
    changed[1, 2:] += 100 * torch.randn(2, 40)  # the positions after the second summary's EOS
    assert label_smoothed_nll(logits, labels, 0, 0.1) == label_smoothed_nll(changed, labels, 0, 0.1)


def test_load_pairs_names_pairs_without_an_id_by_file_and_line(tmp_path):
    """xsum_extra.jsonl has 1,768 pairs with a null id; one shared id ("None") would send them
    all to the same side of the hash split."""
    path = tmp_path / "extra.jsonl"
    path.write_text('{"id": null, "document": "a", "summary": "b"}\n{"document": "c", "summary": "d"}\n'
                    '{"id": 7, "document": "e", "summary": "f"}\n')
    assert [p.id for p in load_pairs(path)] == ["extra:1", "extra:2", "7"]


def test_model_selection_loads_the_best_validation_epoch(tmp_path):
    from genlab.engine import save_checkpoint
    from genlab.summarizer import best_model_path, load_best

    model, best = tiny(), tiny(seed=3)
    assert load_best(model, tmp_path) is None
    save_checkpoint(best_model_path(tmp_path), {"epoch": 4, "val_nll": 1.0, "model": best.state_dict()})
    assert load_best(model, tmp_path) == 4
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), best.state_dict().values()))


@pytest.mark.parametrize("val, patience, stops", [
    ([], 3, False),
    ([5.0, 4.0, 4.5, 4.6], 2, True),   # best at epoch 2, then 2 epochs without a lower NLL
    ([5.0, 4.0, 4.5, 4.6], 3, False),
    ([5.0, 4.0, 4.5, 3.9], 1, False),  # the last epoch is the new best
    ([5.0, 4.0, 4.0, 4.0], 2, True),   # equal is not lower
    ([5.0, 4.0, 4.5, 4.6], 0, False),  # off
])
def test_early_stopping_counts_epochs_since_the_lowest_validation_nll(val, patience, stops):
    from types import SimpleNamespace

    from genlab.summarizer import patience_ran_out
    run = SimpleNamespace(world=SimpleNamespace(size=1),
                          dir=SimpleNamespace(read_epochs=lambda: [{"epoch": i + 1, "val_nll": v} for i, v in enumerate(val)]))
    assert patience_ran_out(run, patience) is stops
