"""The figure helpers every experiment shares (genlab.plots)."""

import numpy as np
import pytest
from matplotlib.colors import to_rgba

from genlab import plots


@pytest.fixture
def ax():
    fig, ax = plots.plt.subplots()
    yield ax
    plots.plt.close(fig)


def test_band_shades_low_to_high_in_the_line_colour(ax):
    x = np.arange(5.0)
    line = plots.band(ax, x, x, x - 1, x + 2, "mean", alpha=0.3, color="tab:red", lw=2.5)
    assert line.get_label() == "mean" and line.get_linewidth() == 2.5
    (fill,) = ax.collections
    assert tuple(fill.get_facecolor()[0]) == pytest.approx(to_rgba("tab:red", 0.3))
    ys = fill.get_paths()[0].vertices[:, 1]
    assert ys.min() == -1 and ys.max() == 6


def test_hline_is_labelled_at_the_left_of_the_axes_or_at_x(ax):
    ax.plot([2.0, 9.0], [0.0, 1.0])
    plots.hline(ax, 0.25, "uniform policy", ls=":")
    plots.hline(ax, 0.5, "log 2", x=3.0)
    lines = [line for line in ax.lines if line.get_color() == "gray"]
    assert [tuple(line.get_ydata()) for line in lines] == [(0.25, 0.25), (0.5, 0.5)]
    assert [line.get_linestyle() for line in lines] == [":", "--"]
    texts = {t.get_text(): t.get_position() for t in ax.texts}
    assert texts == {" uniform policy": (ax.get_xlim()[0], 0.25), " log 2": (3.0, 0.5)}


def test_decorate_labels_grid_and_legend(ax):
    ax.plot([0, 1], [0, 1], label="a")
    default_title_size = ax.title.get_fontsize()
    plots.decorate(ax, "step", "loss", "training", fontsize=7, loc="upper left")
    assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_title()) == ("step", "loss", "training")
    assert ax.title.get_fontsize() == default_title_size  # no title_size: matplotlib's own
    legend = ax.get_legend()
    assert legend.get_texts()[0].get_fontsize() == 7 and legend._loc == 2  # upper left
    assert all(line.get_visible() for line in ax.xaxis.get_gridlines())


def test_decorate_without_grid_or_legend(ax):
    ax.plot([0, 1], [0, 1], label="a")
    plots.decorate(ax, "x", "y", "t", title_size=9, grid=None, legend=False)
    assert ax.get_legend() is None and ax.title.get_fontsize() == 9
    assert not any(line.get_visible() for line in ax.xaxis.get_gridlines())


def test_save_writes_a_png_and_closes_the_figure(tmp_path):
    fig, ax = plots.plt.subplots()
    ax.plot([0, 1], [1, 0])
    path = plots.save(fig, tmp_path / "f.png")
    assert path == tmp_path / "f.png" and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not plots.plt.fignum_exists(fig.number)


def test_seed_band_leaves_out_diverged_seeds_and_draws_range_or_sem(ax):
    x = np.arange(3.0)
    values = np.array([[1.0, 2.0, np.inf], [3.0, 6.0, 5.0], [5.0, 4.0, np.nan]])  # (S=3, T=3)
    line = plots.seed_band(ax, x, values, "runs")
    assert line.get_label() == "runs" and list(line.get_ydata()) == [3.0, 4.0, 5.0]  # nan/inf left out
    ys = ax.collections[0].get_paths()[0].vertices[:, 1]
    assert ys.min() == 1.0 and ys.max() == 6.0  # min to max
    line = plots.seed_band(ax, x[:2], [[1.0, 2.0], [3.0, 8.0]], spread="sem")  # two seeds of two points
    assert list(line.get_ydata()) == [2.0, 5.0]
    ys = ax.collections[1].get_paths()[0].vertices[:, 1]  # sem = |a - b| / 2: 1 and 3
    assert ys.min() == pytest.approx(1.0) and ys.max() == pytest.approx(8.0)
    plots.seed_band(ax, x[:2], [[1.0, 2.0]], spread="sem")  # one seed: no band
    assert np.ptp(ax.collections[2].get_paths()[0].vertices[:, 1]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="spread must be"):
        plots.seed_band(ax, x, values, spread="std")


@pytest.mark.parametrize("spread, low, high", [("sem", 2 - 2 / 3 ** 0.5, 2 + 2 / 3 ** 0.5), ("range", 0.0, 4.0)])
def test_seed_band_draws_the_mean_over_seeds_with_its_spread(ax, spread, low, high):
    values = np.array([[0.0, 4.0], [2.0, 2.0], [4.0, 0.0]])  # (seeds, points): mean 2, std(ddof=1) 2 at each point
    line = plots.seed_band(ax, [0.0, 1.0], values, "mean", spread=spread, seed_lines=True, color="tab:blue")
    assert list(line.get_ydata()) == [2.0, 2.0] and line.get_label() == "mean"
    ys = ax.collections[0].get_paths()[0].vertices[:, 1]
    assert ys.min() == pytest.approx(low) and ys.max() == pytest.approx(high)
    assert len(ax.lines) == 4 and all(seed.get_color() == line.get_color() for seed in ax.lines[1:])
    with pytest.raises(ValueError, match="spread"):
        plots.seed_band(ax, [0.0, 1.0], values, spread="std")


def test_seed_band_of_one_seed_has_no_width(ax):
    plots.seed_band(ax, [0.0, 1.0, 2.0], [[1.0, 3.0, 2.0]])
    ys = ax.collections[0].get_paths()[0].vertices[:, 1]
    assert set(ys.round(12)) == {1.0, 2.0, 3.0}


def test_heatmap_prints_finite_cells_and_leaves_nan_blank(ax):
    matrix = np.array([[0.9, np.nan], [0.3, 1.0]])
    plots.heatmap(ax, matrix, "accuracy", text=lambda v: f"{v:.1f}")
    texts = {(t.get_position(), t.get_text(), t.get_color()) for t in ax.texts}
    assert texts == {((0, 0), "0.9", "black"), ((0, 1), "0.3", "white"), ((1, 1), "1.0", "black")}
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "2"]
    assert ax.images[0].get_clim() == (0.0, 1.0) and np.ma.is_masked(ax.images[0].get_array()[0, 1])
