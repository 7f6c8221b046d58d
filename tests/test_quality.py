"""Domain-classifier FID/KID/IS through torchmetrics, on the real FashionMNIST."""

import math

import pytest
import torch

from conftest import genlab_here
from genlab import dcgan_nets
from genlab.data import load_split
from genlab.dcgan_nets import fid_reference_features
from genlab.errors import ConfigError
from genlab.experiments.classifier import ClassifierConfig
from genlab.quality import classifier_outputs, image_quality, load_classifier, to_uint8, top1_accuracy
from genlab.record import Record


@pytest.fixture(scope="module")
def test_images():
    return torch.from_numpy(load_split("fashion-mnist", "test")[0].copy()).unsqueeze(1)


@pytest.mark.parametrize("dataset, spec", [("fashion-mnist", 0.90), ("mnist", 0.99)])
def test_shipped_classifiers_meet_the_spec_on_the_real_test_sets(dataset, spec):
    """SPEC "Quality metrics": test accuracy >= 90 % on FashionMNIST, >= 99 % on MNIST, and the
    accuracy stored beside the weights is the one measured here."""
    model, meta = load_classifier(dataset)
    images, labels = load_split(dataset, "test")
    x = torch.from_numpy(images.copy()).unsqueeze(1).float() / 127.5 - 1
    acc = top1_accuracy(model, x, torch.from_numpy(labels))
    assert acc >= spec and acc == pytest.approx(meta["test_accuracy"], abs=1e-4)


def test_classifier_run_measures_the_test_subset_it_is_given(tmp_path):
    """``--test-subset N`` scores the first N test images (an accuracy in steps of 1/N), says so in
    the record, and is refused beside ``--export``, which checks SPEC's accuracy on the whole test set."""
    out = tmp_path / "run"
    genlab_here("run", "classifier", "--dataset", "mnist", "--max-steps", "2", "--test-subset", "50", "--out", str(out))
    record = Record.read(out)
    (metric,) = record.headline()
    assert record.extra["test_images"] == 50 and "(its first 50 images)" in metric.description
    assert (record.extra["test_accuracy"] * 50) == pytest.approx(round(record.extra["test_accuracy"] * 50), abs=1e-9)
    with pytest.raises(ConfigError, match="drop --test-subset"):
        ClassifierConfig(test_subset=50, export=tmp_path / "w.pt")
    with pytest.raises(ConfigError, match="--test-subset must be >= 1"):
        ClassifierConfig(test_subset=0)


@pytest.fixture(scope="module")
def scores(test_images):
    train = torch.from_numpy(load_split("fashion-mnist", "train")[0][:10000].copy()).unsqueeze(1)
    # 2,000 noise images: their FID (about 690) and KID are far from the real images' at any count
    noise = torch.randint(0, 256, (2000, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    # the test images' features, once for all three: what every FID of a run scores against, kept per machine
    real_features = fid_reference_features("fashion-mnist", None, torch.device("cpu"))
    return {name: image_quality(images, None, "fashion-mnist", kid_subsets=20, real_features=real_features)
            for name, images in (("self", test_images), ("train", train), ("noise", noise))}


def test_fid_of_real_images_against_themselves_is_near_zero(scores):
    q = scores["self"]
    assert abs(q["fid"]) < 1e-3
    # KID averages 20 subset estimates; drawn independently from the same 10,000 images, the real and
    # fake subsets share images, which biases the cross term slightly below 0. Zero within 4 standard
    # errors of that mean (kid_std is the spread of the 20 estimates), and that error is small against
    # the KID of noise. The subsets come from a fixed seed, so this does not depend on test order.
    se = q["kid_std"] / math.sqrt(20)
    assert abs(q["kid_mean"]) < 4 * se < 1e-2 * scores["noise"]["kid_mean"]


def test_fid_orders_real_held_out_and_noise(scores):
    train, noise = scores["train"], scores["noise"]
    assert train["fid"] < 1.0 < 100 * train["fid"] < noise["fid"]
    assert noise["kid_mean"] > 10 * abs(train["kid_mean"])
    # real images are classified confidently into 10 balanced classes: IS close to 10; noise is not
    assert train["inception_score"] > 7 > noise["inception_score"]


def test_to_uint8_maps_the_range():
    x = torch.tensor([-1.0, 0.0, 1.0, 2.0]).repeat(196).view(1, 28, 28)
    out = to_uint8(x)
    assert out.shape == (1, 1, 28, 28) and out.dtype == torch.uint8
    assert out.flatten()[:4].tolist() == [0, 128, 255, 255]


class _Extractor(torch.nn.Module):
    """torchmetrics' usual interface: uint8 images in, the classifier's features or logits out."""

    def __init__(self, classifier, output):
        super().__init__()
        self.classifier, self.output = classifier.eval(), output

    def forward(self, images):
        x = images.float() / 127.5 - 1.0
        with torch.no_grad():
            return self.classifier.features(x).double() if self.output == "features" else self.classifier(x)

    def train(self, mode=True):
        return super().train(False)


def test_features_computed_once_equal_torchmetrics_extracting_them_itself(test_images):
    """image_quality runs each image through the classifier once and hands torchmetrics the features;
    torchmetrics extracting them itself through a feature module gives the same FID, KID and IS."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.inception import InceptionScore
    from torchmetrics.image.kid import KernelInceptionDistance

    real = test_images[:1500]
    fake = torch.from_numpy(load_split("fashion-mnist", "train")[0][:1200].copy()).unsqueeze(1)
    ours = image_quality(fake, real, "fashion-mnist", batch_size=500, kid_subsets=5, kid_subset_size=400, seed=3)
    classifier, _ = load_classifier("fashion-mnist")
    fid = FrechetInceptionDistance(feature=_Extractor(classifier, "features"), input_img_size=(1, 28, 28))
    kid = KernelInceptionDistance(feature=_Extractor(classifier, "features"), subsets=5, subset_size=400)
    inception = InceptionScore(feature=_Extractor(classifier, "logits"), splits=10)
    for start in range(0, 1500, 500):
        fid.update(real[start:start + 500], real=True)
        kid.update(real[start:start + 500], real=True)
    for start in range(0, 1200, 500):
        fid.update(fake[start:start + 500], real=False)
        kid.update(fake[start:start + 500], real=False)
        inception.update(fake[start:start + 500])
    with torch.random.fork_rng():
        torch.manual_seed(3)
        kid_mean, kid_std = kid.compute()
        is_mean, is_std = inception.compute()
    assert ours["fid"] == float(fid.compute()) and ours["kid_mean"] == float(kid_mean)
    assert ours["kid_std"] == float(kid_std)
    assert ours["inception_score"] == float(is_mean) and ours["inception_score_std"] == float(is_std)


def test_top1_accuracy_counts_the_argmax_hits_over_ragged_batches():
    from torch import nn

    model = nn.Linear(3, 3, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.eye(3))  # the logits are the inputs: the label is the largest coordinate
    x = torch.tensor([[1.0, 0, 0], [0, 2, 0], [0, 0, 3], [5, 0, 0], [0, 1, 0]])
    y = torch.tensor([0, 1, 0, 0, 2])  # hits at rows 0, 1, 3
    assert top1_accuracy(model, x, y, batch_size=2) == 3 / 5 == top1_accuracy(model, x, y)


def test_precomputed_real_features_give_the_same_scores_and_the_test_features_are_cached(test_images, tmp_path,
                                                                                          monkeypatch, request):
    """image_quality(real_features=...) is image_quality(real) bit for bit, and dcgan_nets.fid_reference_features,
    which every FID evaluation of a run scores against, is computed once per process and once per
    machine: a later process reads the same floats from the cache folder, and an unreadable file there
    is computed again. (The cache is tested on the first 1,500 test images, to compute them in seconds.)"""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))

    fake = torch.from_numpy(load_split("fashion-mnist", "train")[0][:600].copy()).unsqueeze(1)
    real = test_images[:1500]
    features, _ = classifier_outputs(load_classifier("fashion-mnist")[0], real, 500)
    kwargs = {"batch_size": 500, "kid_subsets": 5, "kid_subset_size": 400, "seed": 3}
    assert image_quality(fake, None, "fashion-mnist", real_features=features, **kwargs) == \
        image_quality(fake, real, "fashion-mnist", **kwargs)
    fid_reference_features.cache_clear()
    request.addfinalizer(fid_reference_features.cache_clear)  # no later test of this process gets the 1,500
    monkeypatch.setattr(dcgan_nets, "load_split", lambda *args: (test_images[:1500, 0].numpy(), None))
    cached = fid_reference_features("fashion-mnist", None, torch.device("cpu"))
    assert cached.shape == (1500, 128) and cached.dtype == torch.float64
    assert fid_reference_features("fashion-mnist", None, torch.device("cpu")) is cached
    assert torch.equal(cached[:1000], classifier_outputs(load_classifier("fashion-mnist")[0], real[:1000])[0])
    (file,) = (tmp_path / "genlab").glob("fid_features_fashion-mnist_*.pt")
    fid_reference_features.cache_clear()  # as a new process: read from the file
    assert torch.equal(fid_reference_features("fashion-mnist", None, torch.device("cpu")), cached)
    file.write_bytes(file.read_bytes()[:1000])  # truncated: computed again and rewritten
    fid_reference_features.cache_clear()
    assert torch.equal(fid_reference_features("fashion-mnist", None, torch.device("cpu")), cached)
    assert torch.equal(torch.load(file, weights_only=True), cached)
