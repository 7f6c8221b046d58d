"""The outputs of SPEC §10's summarisers (:mod:`genlab.experiments.summarize`,
:mod:`genlab.experiments.t5_finetune`): test summaries scored with ROUGE beside LEAD-1 and a
constant sentence, their diversity, figures, test_summaries.jsonl and the record.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable

from genlab import plots
from genlab.engine import RunDir
from genlab.record import Figure, Metric, Record, Reference, Table
from genlab.summaries import (ROUGE_KEYS, VALIDATION_PERCENT, Pair, constant_sentence, distinct_n, lead_1,
                              rouge_scores, unique_share, words)
from genlab.summarizer import SummaryConfig

# SPEC §10, trained on the full XSum (204,045 training pairs): ROUGE-1 / -2 / -L.
REFERENCE_ROUGE = {"from scratch (full XSum)": (18.82, 3.02, 15.19),
                   "fine-tuned T5 (full XSum)": (26.56, 7.04, 20.75)}


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
