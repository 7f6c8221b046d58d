import json
import math

import numpy as np
import pytest

from genlab.record import (Figure, Metric, Record, RecordError, Reference, Table, default_tolerance, mean_and_stderr,
                           mean_std, run_figures, verdict)


def _vae_metric(value, stderr=0.31):
    return Metric("negative_elbo", value, "nats", stderr=stderr, n_seeds=3, lower_is_better=True,
                  reference=Reference(98.12, stderr=0.77, section="§4"), headline=True)


def test_default_tolerance_is_two_standard_errors_of_the_difference_or_five_percent():
    m = _vae_metric(102.01, stderr=3.0)
    assert default_tolerance(m) == pytest.approx(2 * (3.0 ** 2 + 0.77 ** 2) ** 0.5)
    m = _vae_metric(102.01, stderr=0.31)  # 2 * 0.83 = 1.66 < 5 % of 98.12 = 4.906
    assert default_tolerance(m) == pytest.approx(0.05 * 98.12)


@pytest.mark.parametrize("value, lower, expected", [
    (98.5, True, "meets"), (90.0, True, "beats"), (110.0, True, "misses"),
    (110.0, False, "beats"), (90.0, False, "misses"), (90.0, None, "misses"), (110.0, None, "misses")])
def test_verdict_uses_the_direction_outside_the_tolerance(value, lower, expected):
    m = Metric("x", value, reference=Reference(98.12), lower_is_better=lower, tolerance=1.0)
    assert verdict(m) == (expected, 1.0)


def test_no_reference_and_non_finite_values_have_no_verdict():
    assert verdict(Metric("x", 1.0)) == ("no reference", None)
    assert verdict(Metric("x", float("nan"), reference=Reference(1.0))) == ("no reference", None)


def test_record_round_trips_through_metrics_json_and_renders_markdown(tmp_path):
    record = Record("vae", "VAE on MNIST", "§4", metrics=[_vae_metric(102.01)],
                    tables=[Table("per seed", ["seed", "-ELBO"], [[42, 101.7], [43, 102.3]])],
                    figures=[Figure("figures/samples.png", "200 samples")], train_seconds=108.0,
                    config={"seed": 42}, environment={"device": "cpu"})
    record.write(tmp_path)
    data = json.loads((tmp_path / "metrics.json").read_text())
    assert data["metrics"][0]["verdict"] == "meets" and data["metrics"][0]["tolerance_used"] == pytest.approx(4.906)
    back = Record.read(tmp_path)
    assert back == record
    md = (tmp_path / "summary.md").read_text()
    assert "102.0 ± 0.31 nats (3 seeds)" in md and "98.12 ± 0.77 nats (§4)" in md and "meets" in md
    assert "![200 samples](figures/samples.png)" in md


def test_a_foreign_or_broken_record_is_refused_naming_the_file(tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps({"final_epoch": 1}))
    with pytest.raises(RecordError, match="metrics.json: not a genlab.record/1 record"):
        Record.read(tmp_path)
    bad = Record("x", "x", tables=[Table("t", ["a", "b"], [[1]])])
    with pytest.raises(RecordError, match="table t: every row must have 2 cells"):
        bad.write(tmp_path)
    with pytest.raises(RecordError, match="metric names repeat"):
        Record("x", "x", metrics=[Metric("a", 1.0), Metric("a", 2.0)]).validate()


def test_mean_std_is_the_sample_std_over_seeds():
    assert mean_std([1.0, 2.0, 6.0]) == (3.0, pytest.approx(math.sqrt(7.0)))  # ddof=1: (4 + 1 + 9) / 2
    assert mean_std([0.25]) == (0.25, 0.0)
    assert mean_std([]) == (None, None)


def test_run_figures_lists_pngs_captioned_by_the_first_matching_prefix(tmp_path):
    (tmp_path / "figures").mkdir()
    for name in ("loss_lr0.01.png", "test_accuracy.png", "other.png", "notes.txt"):
        (tmp_path / "figures" / name).write_bytes(b"")
    captions = {"loss": "loss", "loss_lr": "never used: loss comes first", "test": "accuracy"}
    assert run_figures(tmp_path, captions) == [Figure("figures/loss_lr0.01.png", "loss"),
                                               Figure("figures/other.png", ""),
                                               Figure("figures/test_accuracy.png", "accuracy")]


def test_mean_and_stderr_over_seeds():
    mean, se = mean_and_stderr([1.0, 2.0, 3.0])  # std(ddof=1) = 1
    assert mean == 2.0 and se == pytest.approx(1.0 / math.sqrt(3), rel=1e-15)
    assert mean_and_stderr([5.0]) == (5.0, 0.0)
    assert isinstance(mean_and_stderr(np.array([1, 2]))[1], float)
    with pytest.raises(ValueError, match="no values"):
        mean_and_stderr([])


def test_seed_metric_has_the_standard_error_of_the_mean_over_seeds():
    from genlab.record import seed_metric

    m = seed_metric("fid", 12.0, 2.0, 4, "nats", lower_is_better=True, headline=True)
    assert (m.value, m.unit, m.stderr, m.n_seeds) == (12.0, "nats", 1.0, 4)  # 2 / sqrt(4)
    assert m.lower_is_better and m.headline
    single = seed_metric("fid", 12.0, 0.0, 1)
    assert single.stderr is None and single.n_seeds == 1
