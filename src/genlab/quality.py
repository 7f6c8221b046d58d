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

__all__ = ["DomainClassifier", "classifier_outputs", "load_classifier", "image_quality", "to_uint8",
           "top1_accuracy"]

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


class _Precomputed(nn.Module):
    """torchmetrics' feature extractor for features computed beforehand: the identity, so that
    each image goes through the classifier once for FID, KID and the Inception Score together."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def classifier_outputs(classifier: DomainClassifier, images: torch.Tensor, batch_size: int = 1000
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """The features and logits of uint8 images (N, 1, 28, 28) in [0, 255], scaled to [-1, 1]
    as in training: float64 (N, 128) penultimate activations (FID and KID sum them in float64)
    and float32 (N, 10) logits, computed ``batch_size`` images at a time on the images' device."""
    features, logits = [], []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            x = images[start:start + batch_size].float() / 127.5 - 1.0
            f = classifier.features(x)
            features.append(f.double())
            logits.append(classifier.head(f))
    return torch.cat(features), torch.cat(logits)


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


def image_quality(fake: torch.Tensor, real: torch.Tensor | None, dataset: str, batch_size: int = 1000,
                  kid_subsets: int = 100, kid_subset_size: int = 1000, seed: int = 0,
                  device: torch.device | str = "cpu", real_features: torch.Tensor | None = None) -> dict[str, float]:
    """FID, KID (mean, std) and classifier Inception Score of ``fake`` against ``real``.

    Args:
        fake, real: uint8 (N, 1, 28, 28) images (SPEC: 10,000 generated vs the 10,000 test).
        dataset: whose classifier to use (``"fashion-mnist"`` or ``"mnist"``).
        device: where the classifier and the metrics' float64 sums run (the run's device).
        seed: of KID's random subsets and the Inception Score's random splits.
        real_features: instead of ``real`` (pass None), its float64 (N, 128) features from
            :func:`classifier_outputs` with this ``batch_size`` on ``device``, for a caller that scores
            against the same images again (the numbers are the same).

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
    classifier = classifier.to(device)
    if real_features is None:
        real_features, _ = classifier_outputs(classifier, real.to(device), batch_size)
    fake_features, fake_logits = classifier_outputs(classifier, fake.to(device), batch_size)
    fid = FrechetInceptionDistance(feature=_Precomputed(), input_img_size=(FEATURE_DIM,))  # float64 sums
    subset = min(kid_subset_size, len(fake), len(real_features))
    kid = KernelInceptionDistance(feature=_Precomputed(), subsets=kid_subsets, subset_size=subset)
    inception = InceptionScore(feature=_Precomputed(), splits=10)
    fid, kid, inception = (metric.to(device) for metric in (fid, kid, inception))
    for start in range(0, len(real_features), batch_size):  # batch by batch, as the float64 sums always ran
        fid.update(real_features[start:start + batch_size], real=True)
        kid.update(real_features[start:start + batch_size], real=True)
    for start in range(0, len(fake), batch_size):
        fid.update(fake_features[start:start + batch_size], real=False)
        kid.update(fake_features[start:start + batch_size], real=False)
        inception.update(fake_logits[start:start + batch_size])
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
