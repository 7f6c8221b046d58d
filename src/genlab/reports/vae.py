"""The VAE's figures and record (SPEC §4): sample grids, reconstructions, the training and test
curves, and the test metrics per seed, mean +/- standard error over the seeds against the SPEC §4
reference, written into metrics.json and summary.md.

The models are the stacked VAEs of ``genlab.experiments.vae`` (``model.encode``, ``model.decode``,
``model.n_models``, ``model.latent_dim``); the test metrics are measured there and passed in.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from genlab import plots
from genlab.engine import DataConfig, RunDir
from genlab.record import Metric, Record, Reference, Table, mean_and_stderr

# SPEC §4 reference: test-set mean +/- standard error over seeds, nats per image.
REFERENCE = {"nelbo": (98.12, 0.77), "kl": (20.38, 0.38), "rec": (77.93, 0.65)}
TERMS = ("nelbo", "kl", "rec")
"""The negative ELBO's terms, in the order of the experiment's (3, S) tensors and of its logged rows'
keys ``{prefix}{term}_seed{s}``."""
TERM_NAMES = {"nelbo": "negative ELBO", "kl": "KL", "rec": "reconstruction", "iwae_nll": "IWAE NLL bound"}


@torch.no_grad()
def bernoulli_means(model: nn.Module, z: torch.Tensor, index: int = 0) -> np.ndarray:
    """uint8 (N, 28, 28): model ``index``'s decoder means sigmoid(logits) at z (N, latent_dim), x 255."""
    logits = model.decode(z.unsqueeze(0).expand(model.n_models, -1, -1))[index]  # (N, 784)
    return (torch.sigmoid(logits) * 255).round().to(torch.uint8).view(-1, 28, 28).cpu().numpy()


def plot_run(run_dir: RunDir, config: DataConfig, model: nn.Module, test: torch.Tensor,
             device: torch.device) -> None:
    """samples_seed*.png (10 x 20), reconstructions.png, training_curves.png, test_curves.png."""
    figs = run_dir.path / "figures"
    for i, s in enumerate(config.seed_list):
        z = torch.randn(200, model.latent_dim, generator=torch.Generator().manual_seed(s)).to(device)
        plots.save_image_grid(bernoulli_means(model, z, i), figs / f"samples_seed{s}.png", 10, 20,
                              title=f"VAE samples (decoder Bernoulli means), seed {s}")
    x = test[:50]  # (50, 784)
    recon = bernoulli_means(model, model.encode(x)[0][0])  # decoded at the posterior mean of model 0
    originals = (x * 255).to(torch.uint8).view(-1, 28, 28).cpu().numpy()
    rows = [block for r in range(5) for block in (originals[r * 10:(r + 1) * 10], recon[r * 10:(r + 1) * 10])]
    plots.save_image_grid(np.concatenate(rows), figs / "reconstructions.png", 10, 10,
                          title=f"test digits (odd rows) and reconstructions (even rows), seed {config.seed}")
    ref = {TERM_NAMES[t]: {config.iterations: REFERENCE[t][0]} for t in TERMS}
    seeds = f"mean of {config.seeds} seed(s)"
    for name, prefix, what in (("steps", "", f"training terms ({seeds}, {config.log_every}-iteration averages)"),
                               ("eval", "test_", f"test terms ({seeds})")):
        rows = run_dir.read_rows(f"{name}.jsonl")
        if rows:
            series = {TERM_NAMES[t]: [float(np.mean([r[f"{prefix}{t}_seed{s}"] for s in config.seed_list]))
                                      for r in rows] for t in TERMS}
            png = figs / ("training_curves.png" if name == "steps" else "test_curves.png")
            plots.plot_curves([r["step"] for r in rows], series, png, "iteration", "nats per image", f"VAE {what}",
                              reference=ref)


FIGURE_CAPTIONS = {
    "samples_seed": "200 samples (decoder Bernoulli means at z ~ N(0, I)), tiled 10 x 20",
    "reconstructions": "test digits (odd rows) and their reconstructions at the posterior mean (even rows)",
    "training_curves": "training negative ELBO, KL and reconstruction (mean over seeds), with the SPEC §4 reference",
    "test_curves": "test negative ELBO, KL and reconstruction during training, with the SPEC §4 reference",
}


def finish(run_dir: RunDir, config: DataConfig, model: nn.Module, test: torch.Tensor, device: torch.device,
           train_seconds: float | None, per_seed: dict[int, dict[str, float]], iwae_seconds: float | None,
           n_iwae: int, binarization_seed: int) -> dict:
    """Figures, metrics.json and summary.md (also used by ``genlab eval``) from the test metrics of
    the VAEConfig ``config``: the three terms and, with ``config.iw_samples`` > 0, the IWAE bound,
    per seed (``per_seed``: seed -> {term: nats per image}), mean +/- s.e. over the seeds against the
    SPEC §4 reference. ``n_iwae`` test images entered the IWAE bound in ``iwae_seconds``; the test
    set (N, 784) was binarised with ``binarization_seed``. Returns the metrics dict of metrics.json."""
    keys = list(TERMS)
    if config.iw_samples > 0:
        keys.append("iwae_nll")
    summary = {k: mean_and_stderr([per_seed[s][k] for s in config.seed_list]) for k in keys}
    metrics = {
        "test": {k: {"mean": m, "standard_error": se} for k, (m, se) in summary.items()},
        "per_seed": {str(s): v for s, v in per_seed.items()},
        "seeds": config.seed_list,
        "n_test": len(test),
        "iw_samples": config.iw_samples,
        "n_test_iwae": n_iwae,
        "iterations": config.iterations,
        "train_seconds": train_seconds,
        "train_seconds_per_seed": train_seconds / config.seeds if train_seconds else None,
        "iwae_seconds": iwae_seconds,
        "reference": {t: {"mean": m, "standard_error": se} for t, (m, se) in REFERENCE.items()},
        "units": "nats per image",
    }
    plot_run(run_dir, config, model, test, device)
    n = config.seeds
    directions = {"nelbo": True, "kl": None, "rec": True}
    names = {"nelbo": "negative_elbo", "kl": "kl", "rec": "reconstruction"}
    out = [Metric(names[t], summary[t][0], "nats", stderr=summary[t][1], n_seeds=n, lower_is_better=directions[t],
                  headline=t == "nelbo", reference=Reference(*REFERENCE[t], section="§4"),
                  description=f"test {TERM_NAMES[t]} per image, {len(test):,} images binarised with seed "
                              f"{binarization_seed}, one reparameterised sample")
           for t in TERMS]
    if config.iw_samples > 0:
        out.append(Metric("iwae_nll", summary["iwae_nll"][0], "nats", stderr=summary["iwae_nll"][1], n_seeds=n,
                          lower_is_better=True,
                          description=f"importance-weighted bound on the test NLL, k = {config.iw_samples:,}, "
                                      f"{n_iwae:,} test images (Burda et al. 2016, eq. 8)"))
    table = Table("per seed", ["seed", *(TERM_NAMES[k] for k in keys)],
                  [[s, *(v[k] for k in keys)] for s, v in per_seed.items()], "Test set, nats per image.")
    notes = [f"{n} model(s) trained together for {config.iterations:,} iterations each"
             + (f", {train_seconds / n:.1f} s of training per seed." if train_seconds else ".")]
    run_dir.write_record(Record("vae", "VAE on binarised MNIST", "§4", metrics=out, tables=[table],
                                figures=run_dir.figures(FIGURE_CAPTIONS), train_seconds=train_seconds,
                                eval_seconds=iwae_seconds, notes=notes, extra=metrics))
    return metrics
