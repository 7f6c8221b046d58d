"""genlab.experiments.one_shot: the lifecycle of an experiment computed in one go."""

from genlab import plots
from genlab.engine import RunConfig
from genlab.experiments import one_shot
from genlab.record import Figure, Metric, Record


def _compute(config, out):
    for name in ("curve", "grid"):
        fig, ax = plots.plt.subplots()
        ax.plot([0, 1], [0, config.seed])
        plots.save(fig, out / "figures" / f"{name}.png")
    (out / "metrics" / "table.csv").write_text("a\n1\n")
    return Record("demo", "A demo", metrics=[Metric("value", float(config.seed))])


def test_one_shot_writes_the_record_with_seconds_and_captioned_figures(tmp_path):
    exp = one_shot("demo", "a demo", RunConfig, _compute, {"curve": "the curve", "g": "the grid"})
    assert (exp.name, exp.summary, exp.config) == ("demo", "a demo", RunConfig)
    path = exp.run(RunConfig(seed=3, out=tmp_path / "run", device="cpu"))
    record = Record.read(path)
    assert record.metric("value").value == 3.0 and record.config["experiment"] == "demo"
    assert record.figures == [Figure("figures/curve.png", "the curve"), Figure("figures/grid.png", "the grid")]
    assert record.train_seconds is not None and record.train_seconds >= 0
    assert (path / "metrics" / "table.csv").read_text() == "a\n1\n"


def test_one_shot_captions_may_depend_on_the_config_and_resume_runs_again(tmp_path, capsys):
    exp = one_shot("demo", "a demo", RunConfig, _compute, lambda c: {"": f"seed {c.seed}"})
    exp.run(RunConfig(seed=5, out=tmp_path / "run", device="cpu"))
    path = exp.run(RunConfig(seed=5, out=tmp_path / "run", device="cpu", resume=True))
    assert "no checkpoint yet; starting the run from the beginning" in capsys.readouterr().out
    assert [f.caption for f in Record.read(path).figures] == ["seed 5", "seed 5"]
