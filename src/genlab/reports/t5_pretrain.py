"""The record of SPEC §10's T5 pretraining (:mod:`genlab.experiments.t5_pretrain`): the loss curve,
the corpus beside T5's C4 pretraining tokens, the final validation loss.
"""

from __future__ import annotations

from genlab import plots
from genlab.engine import EpochsConfig, Run
from genlab.record import Metric, Record, Table

C4_TOKENS = 2 ** 35  # Raffel et al. 2020, §3.1.2: 2^19 steps x 2^16 tokens (about 34 billion)


def make_record(run: Run, config: EpochsConfig, counts: dict, n_pieces: int, n_params: int,
                selected: int | None) -> Record:
    """The loss curves, the corpus size against T5's C4 tokens (of the documents used: all, or the
    first ``--corpus-documents``), the final losses."""
    steps, epochs = run.dir.read_rows("steps.jsonl"), run.dir.read_epochs()
    if steps:
        plots.plot_curves([r["step"] for r in steps], {"span-corruption loss": [r["loss"] for r in steps]},
                          run.path / "figures" / "loss_steps.png", "optimiser step", "nats per target token",
                          "T5 pretraining: training loss per step")
    metrics = [Metric("corpus_tokens", counts["tokens"], unit="tokens",
                      description="t5-small SentencePiece tokens of the pretraining corpus"),
               Metric("fraction_of_c4", counts["tokens"] / C4_TOKENS, lower_is_better=False,
                      description="corpus tokens / 2^35, the tokens T5 was pretrained on "
                                  "(Raffel et al. 2020, §3.1.2)"),
               Metric("tokens_seen", sum(r.get("target_tokens", 0) for r in steps), unit="target tokens")]
    if epochs:
        metrics.append(Metric("val_loss", epochs[-1]["val_nll"], unit="nats", lower_is_better=True, headline=True,
                              description="span-corruption cross-entropy per target token, validation pieces"))
    table = Table("corpus", ["XSum non-test documents", "BBC News Summary articles", "tokens", "pieces",
                             "T5's C4 tokens", "ratio"],
                  [[counts["xsum_documents"], counts["bbc_articles"], counts["tokens"], n_pieces, C4_TOKENS,
                    f"1 : {C4_TOKENS / max(1, counts['tokens']):,.0f}"]])
    notes = [f"{n_params:,} parameters (d_model {config.d_model}, {config.num_layers} + {config.num_layers} layers); "
             f"noise density {config.noise_density}, mean span {config.mean_noise_span_length}; saved in model/ "
             f"(epoch {selected} of the lowest validation loss)" if selected else "saved in model/."]
    if config.corpus_documents is not None:
        notes.append(f"corpus cut to its first {config.corpus_documents} documents (--corpus-documents; "
                     f"the table counts those); the full corpus is every non-test document")
    return Record("t5-pretrain", "T5 pretraining by span corruption", "§10", metrics=metrics, tables=[table],
                  figures=run.dir.figures({"loss_steps": "span-corruption training loss per step"}),
                  train_seconds=run.elapsed_s, notes=notes, extra={"corpus": counts, "epochs": epochs})
