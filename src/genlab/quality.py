"""Image-quality metrics with a domain classifier instead of Inception.

Inception-v3 weights cannot be had offline and fit 28x28 grayscale badly, so genlab
trains a small CNN per dataset (``genlab run classifier``), ships its weights in
``genlab/weights/<dataset>.pt`` and uses it through torchmetrics:

* FID (Heusel et al. 2017, eq. 6): ``torchmetrics.image.fid.FrechetInceptionDistance`` with
  ``feature=`` the classifier's 128-d penultimate layer; statistics in float64.
* KID (Binkowski et al. 2018): ``KernelInceptionDistance`` on the same features.
* Inception Score (Salimans et al. 2016): ``InceptionScore`` on the classifier's logits.

Images are handed over as uint8 (N, 1, 28, 28) in [0, 255], torchmetrics' convention for
``normalize=False``.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
import torch
from torch import nn

from genlab.record import Metric

__all__ = ["DomainClassifier", "FeatureExtractor", "load_classifier", "image_quality", "to_uint8", "top1_accuracy"]

FEATURE_DIM = 128


class DomainClassifier(nn.Module):
    """A small CNN for 28x28 grayscale images: (N, 1, 28, 28) float in [-1, 1] -> (N, 10) logits.

    ``features(x)`` gives the (N, 128) penultimate activations used for FID and KID.
    """

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (N, 32, 14, 14)
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (N, 64, 7, 7)
            nn.Flatten(), nn.Dropout(0.3),
            nn.Linear(64 * 7 * 7, FEATURE_DIM), nn.ReLU(),  # (N, 128)
        )
        self.head = nn.Linear(FEATURE_DIM, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class FeatureExtractor(nn.Module):
    """Adapts :class:`DomainClassifier` to torchmetrics: uint8 (N, 1, 28, 28) in, (N, D) out.

    Args:
        classifier: a trained classifier (kept in eval mode).
        output: ``"features"`` (N, 128) for FID/KID or ``"logits"`` (N, 10) for the IS.
    """

    def __init__(self, classifier: DomainClassifier, output: str = "features"):
        super().__init__()
        if output not in ("features", "logits"):
            raise ValueError(f"output must be 'features' or 'logits', got {output!r}")
        self.classifier = classifier.eval()
        self.output = output

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() / 127.5 - 1.0
        if x.dim() == 3:
            x = x.unsqueeze(1)
        with torch.no_grad():
            out = self.classifier.features(x) if self.output == "features" else self.classifier(x)
        return out.double() if self.output == "features" else out

    def train(self, mode: bool = True):  # torchmetrics calls .train(); stay in eval mode
        return super().train(False)


def weights_path(dataset: str) -> Path:
    return Path(str(resources.files("genlab") / "weights" / f"{dataset}.pt"))


def load_classifier(dataset: str, path: str | Path | None = None) -> tuple[DomainClassifier, dict]:
    """The shipped domain classifier of ``dataset`` and its metadata (test accuracy, ...).

    Raises:
        FileNotFoundError: no weights; the message gives the command that trains them.
    """
    path = Path(path) if path else weights_path(dataset)
    if not path.exists():
        raise FileNotFoundError(
            f"{path}: no domain classifier for {dataset}; train it with "
            f"`genlab run classifier --dataset {dataset} --export {path}`"
        )
    blob = torch.load(path, map_location="cpu", weights_only=True)
    model = DomainClassifier()
    model.load_state_dict(blob["model"])
    return model.eval(), blob["meta"]


def to_uint8(images: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Images in [-1, 1] (float, any leading shape ending 28, 28) -> uint8 (N, 1, 28, 28)."""
    x = torch.as_tensor(images)
    if x.dtype != torch.uint8:
        x = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.reshape(-1, 1, 28, 28)


def image_quality(fake: torch.Tensor, real: torch.Tensor, dataset: str, batch_size: int = 1000,
                  kid_subsets: int = 100, kid_subset_size: int = 1000, seed: int = 0,
                  device: torch.device | str = "cpu") -> dict[str, float]:
    """FID, KID (mean, std) and classifier Inception Score of ``fake`` against ``real``.

    Args:
        fake, real: uint8 (N, 1, 28, 28) images (SPEC: 10,000 generated vs the 10,000 test).
        dataset: whose classifier to use (``"fashion-mnist"`` or ``"mnist"``).
        device: where the classifier and the metrics' float64 sums run (the run's device).
        seed: of KID's random subsets and the Inception Score's random splits.

    Returns:
        ``{"fid", "kid_mean", "kid_std", "inception_score", "inception_score_std",
        "extractor"}``; FID and KID are dimensionless (squared feature units).
    """
    import warnings

    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.inception import InceptionScore
    from torchmetrics.image.kid import KernelInceptionDistance

    warnings.filterwarnings("ignore", message=".*will save all extracted features in buffer.*")
    classifier, meta = load_classifier(dataset)
    feats = FeatureExtractor(classifier, "features")
    size = (1, 28, 28)
    fid = FrechetInceptionDistance(feature=feats, input_img_size=size)  # sums and covariances in float64
    subset = min(kid_subset_size, len(fake), len(real))
    kid = KernelInceptionDistance(feature=feats, subsets=kid_subsets, subset_size=subset)
    inception = InceptionScore(feature=FeatureExtractor(classifier, "logits"), splits=10)
    fid, kid, inception = (metric.to(device) for metric in (fid, kid, inception))
    real, fake = real.to(device), fake.to(device)
    for start in range(0, len(real), batch_size):
        batch = real[start:start + batch_size]
        fid.update(batch, real=True)
        kid.update(batch, real=True)
    for start in range(0, len(fake), batch_size):
        batch = fake[start:start + batch_size]
        fid.update(batch, real=False)
        kid.update(batch, real=False)
        inception.update(batch)
    # KID's subsets and the Inception Score's splits are random permutations: drawn from a fixed
    # seed, so the same images give the same numbers, without touching the caller's random stream
    with torch.random.fork_rng(devices=[device] if torch.device(device).type == "cuda" else []):
        torch.manual_seed(seed)
        kid_mean, kid_std = kid.compute()
        is_mean, is_std = inception.compute()
    return {
        "fid": float(fid.compute()),
        "kid_mean": float(kid_mean),
        "kid_std": float(kid_std),
        "inception_score": float(is_mean),
        "inception_score_std": float(is_std),
        "extractor": f"genlab DomainClassifier({dataset}, 128-d penultimate layer, "
                     f"test accuracy {meta.get('test_accuracy', float('nan')):.4f})",
    }


def quality_metrics(quality: dict, headline: bool = True) -> list[Metric]:
    """The record's metrics (:class:`genlab.record.Metric`) of an :func:`image_quality` result
    with ``n_generated`` and ``n_real`` added: FID (the headline, no SPEC reference), KID and the
    classifier Inception Score, each with its spread where torchmetrics gives one."""
    against = f"{quality['n_generated']:,} generated vs {quality['n_real']:,} test images, {quality['extractor']}"
    return [
        Metric("fid", quality["fid"], lower_is_better=True, headline=headline,
               description=f"Frechet distance in the classifier's feature space; {against}"),
        Metric("kid", quality["kid_mean"], lower_is_better=True,
               description=f"kernel inception distance, mean over 100 subsets (std {quality['kid_std']:.5f})"),
        Metric("inception_score", quality["inception_score"], lower_is_better=False,
               description=f"classifier-based Inception Score, mean over 10 splits "
                           f"(std {quality['inception_score_std']:.3f})"),
    ]


@torch.no_grad()
def top1_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 2000) -> float:
    """Fraction in [0, 1] of the inputs x (N, ...) whose largest logit under ``model`` ((B, ...) -> (B, C))
    is their label y (int64 (N,)), in batches of ``batch_size``, in the model's current mode (pass
    ``model.eval()`` where it has dropout or batch norm)."""
    correct = sum(int((model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum())
                  for i in range(0, len(x), batch_size))
    return correct / len(x)
