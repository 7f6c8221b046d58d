"""The dcgan experiment's (SPEC §1) figures and record: the loss curves against the SPEC §1
reference, FID and KID over epochs, the final sample grid, FID/KID/IS, metrics.json and
summary.md (:mod:`genlab.experiments.dcgan` trains; this module reports)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from genlab import plots
from genlab.dcgan_nets import DCGANTrainingConfig, Generator, evaluate_quality, plot_losses, save_grid
from genlab.engine import RunDir
from genlab.quality import quality_metrics
from genlab.record import Figure, Metric, Record, Reference, Table

# SPEC §1 reference, "a correct PyTorch solution, batch 64, seed 42": epoch -> (D loss, G loss).
REFERENCE_LOSSES = {1: (0.594, 2.584), 10: (0.805, 1.791), 30: (1.104, 1.185), 50: (1.222, 0.991)}
REFERENCE_FINAL_D = {"d_real": 0.58, "d_fake": 0.47}

QUALITY_FILE = "quality.csv"
"""metrics/ file of the FID and KID after each of ``--eval-epochs``: epoch, step, fid, kid, kid_std
(over KID's 100 subsets), seconds (of the evaluation)."""


def make_record(epochs: list[dict], quality: dict | None, train_seconds: float | None,
                eval_seconds: float | None, figures: list[Figure], over_epochs: list[dict] = ()) -> Record:
    """The run's record: FID/KID/IS, the last epoch's losses and mean D outputs against the SPEC §1
    reference of that epoch, the per-epoch table and the FID/KID table of ``over_epochs`` (:data:`QUALITY_FILE`)."""
    metrics = quality_metrics(quality) if quality else []
    notes = [f"Extractor: {quality['extractor']}."] if quality else []
    last = epochs[-1] if epochs else None
    if last is not None:
        e = int(last["epoch"])
        note = f"epoch {e}; a correct PyTorch solution, batch 64, seed 42"
        ref_losses = REFERENCE_LOSSES.get(e)
        for i, (key, what) in enumerate((("loss_d", "discriminator"), ("loss_g", "generator"))):
            ref = Reference(ref_losses[i], section="§1", note=note) if ref_losses else None
            metrics.append(Metric(key, last[key], "nats", lower_is_better=None, reference=ref, headline=True,
                                  description=f"{what} loss, mean over epoch {e}"))
        for key, what in (("d_real", "D(x)"), ("d_fake", "D(G(z))")):
            ref = Reference(REFERENCE_FINAL_D[key], section="§1", note=note) if e == 50 else None
            metrics.append(Metric(key, last[key], lower_is_better=None, reference=ref,
                                  description=f"mean {what}, epoch {e}"))
    else:
        notes.append("Stopped by --max-steps before the first epoch ended: no per-epoch losses "
                     "(metrics/steps.jsonl has the per-step ones).")
    rows = {int(r["epoch"]): r for r in epochs}
    shown = sorted(e for e in set(rows) | set(REFERENCE_LOSSES)
                   if e in REFERENCE_LOSSES or e in (1, len(rows)) or e % 10 == 0)
    table = Table("losses per epoch", ["epoch", "D loss", "G loss", "D(x)", "D(G(z))", "ref D loss", "ref G loss"],
                  [[e, *(rows[e][k] if e in rows else None for k in ("loss_d", "loss_g", "d_real", "d_fake")),
                    *REFERENCE_LOSSES.get(e, (None, None))] for e in shown],
                  "Epoch means in nats; the reference is a correct PyTorch solution (batch 64, seed 42).")
    tables = [table]
    if over_epochs:
        tables.append(Table("FID and KID over epochs", ["epoch", "step", "FID", "KID", "KID std"],
                            [[int(r["epoch"]), int(r["step"]), r["fid"], r["kid"], r["kid_std"]] for r in over_epochs],
                            "After each of --eval-epochs, with the generated images, latents and extractor of the "
                            "end of the run's FID; KID std over its 100 subsets."))
    return Record("dcgan", "DCGAN on FashionMNIST", "§1", metrics=metrics, tables=tables, figures=figures,
                  train_seconds=train_seconds, eval_seconds=eval_seconds, notes=notes,
                  extra={"final_epoch": last, "quality": quality,
                         "reference": {"losses": REFERENCE_LOSSES, **REFERENCE_FINAL_D}})


FIGURE_CAPTIONS = {
    "grid_epoch": "64 samples from one fixed noise batch",
    "grid_final": "64 samples from the fixed noise batch at the end of the run",
    "losses_steps": "discriminator and generator loss per optimiser step (moving average)",
    "losses_fid_kid": "FID and KID over epochs (after each of --eval-epochs), beside the loss curves",
    "losses": "discriminator and generator loss per epoch, with the SPEC §1 reference points",
    "d_outputs": "mean D(x) and D(G(z)) per epoch",
}


def plot_fid_kid(rows: list[dict], path: Path) -> None:
    """FID (left) and KID with its std over subsets (right) per epoch, from :data:`QUALITY_FILE`'s rows."""
    epochs, fid = [r["epoch"] for r in rows], [r["fid"] for r in rows]
    kid, kid_std = np.array([r["kid"] for r in rows]), np.array([r["kid_std"] for r in rows])
    fig, (ax_fid, ax_kid) = plots.plt.subplots(1, 2, figsize=(9.6, 3.6))
    ax_fid.plot(epochs, fid, marker="o", label="FID")
    plots.decorate(ax_fid, "epoch", "FID", "FID over epochs")
    plots.band(ax_kid, epochs, kid, kid - kid_std, kid + kid_std, "KID (band: std over subsets)", marker="o",
               color="C1")
    plots.decorate(ax_kid, "epoch", "KID", "KID over epochs")
    plots.save(fig, path)


def finish(run_dir: RunDir, config: DCGANTrainingConfig, generator: Generator, fixed_z: torch.Tensor,
           device: torch.device, elapsed: float | None, dataset: str, quality: dict | None = None,
           seconds: float | None = None) -> dict | None:
    """Figures, FID/KID/IS, metrics.json and summary.md (also ``genlab eval``'s). ``quality``, ``seconds``:
    :func:`evaluate_quality` of this generator against ``dataset``'s test images if the run has just
    computed it, else computed here. Returns the FID/KID/IS dict, or None when ``fid_samples`` is 0."""
    over_epochs = [{k: float(v) for k, v in r.items()} for r in run_dir.read_rows(QUALITY_FILE)]
    if over_epochs:
        plot_fid_kid(over_epochs, run_dir.path / "figures" / "losses_fid_kid.png")
    plot_losses(run_dir, "DCGAN", "generator", math.log(2), reference={
        "losses": {"discriminator": {e: v[0] for e, v in REFERENCE_LOSSES.items()},
                   "generator": {e: v[1] for e, v in REFERENCE_LOSSES.items()}},
        "d_outputs": {"D(x)": {50: REFERENCE_FINAL_D["d_real"]}, "D(G(z))": {50: REFERENCE_FINAL_D["d_fake"]}}})
    figures = run_dir.path / "figures"
    if not list(figures.glob("grid_epoch*.png")):  # a run stopped by --max-steps before an epoch ended
        save_grid(generator, fixed_z, device, figures / "grid_final.png", 8, 8, "DCGAN, end of run")
    if quality is None:
        quality, seconds = evaluate_quality(generator, config, device, dataset)
    run_dir.write_record(make_record(run_dir.read_epochs(), quality, elapsed, seconds,
                                     run_dir.figures(FIGURE_CAPTIONS), over_epochs))
    return quality
