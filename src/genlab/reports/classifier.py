"""The record of the domain classifier behind FID, KID and IS (:mod:`genlab.experiments.classifier`)."""

from __future__ import annotations

from genlab.record import Metric, Record, Reference


def make_record(meta: dict, min_accuracy: float, train_seconds: float) -> Record:
    """The run's record: the test accuracy in % (``meta["test_accuracy"]``, a fraction, after
    ``meta["epochs"]`` epochs on ``meta["dataset"]``, on its first ``meta["test_images"]`` test images
    where given) against the least accuracy SPEC asks of the feature extractor (``min_accuracy``, a
    fraction; tolerance 0)."""
    minimum = Reference(100 * min_accuracy, section="Quality metrics for images",
                        note="the least test accuracy SPEC asks of the feature extractor")
    return Record(
        "classifier", f"Domain classifier, {meta['dataset']}", "",
        metrics=[Metric("test_accuracy", 100 * meta["test_accuracy"], "%", lower_is_better=False, reference=minimum,
                        tolerance=0.0, headline=True,
                        description=f"{meta['dataset']} test set"
                        + (f" (its first {meta['test_images']:,} images)" if "test_images" in meta else "")
                        + f", after {meta['epochs']} epoch(s)")],
        train_seconds=train_seconds, extra=meta)
