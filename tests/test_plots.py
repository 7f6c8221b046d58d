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


def test_heatmap_prints_finite_cells_and_leaves_nan_blank(ax):
    matrix = np.array([[0.9, np.nan], [0.3, 1.0]])
    plots.heatmap(ax, matrix, "accuracy", text=lambda v: f"{v:.1f}")
    texts = {(t.get_position(), t.get_text(), t.get_color()) for t in ax.texts}
    assert texts == {((0, 0), "0.9", "black"), ((0, 1), "0.3", "white"), ((1, 1), "1.0", "black")}
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "2"]
    assert ax.images[0].get_clim() == (0.0, 1.0) and np.ma.is_masked(ax.images[0].get_array()[0, 1])


@pytest.mark.parametrize("spread, low, high", [("stderr", [3 - 3 ** 0.5, 0.0], [3 + 3 ** 0.5, 4.0]),
                                               ("range", [0.0, 0.0], [6.0, 6.0])])
def test_mean_band_is_the_mean_over_runs_with_its_band(ax, spread, low, high):
    runs = np.array([[0.0, 0.0], [3.0, 6.0], [6.0, 0.0]])  # (S=3, T=2): std (ddof=1) 3 and sqrt(12)
    line = plots.mean_band(ax, [0, 1], runs, "m", spread=spread)
    np.testing.assert_allclose(line.get_ydata(), [3.0, 2.0])
    vertices = ax.collections[0].get_paths()[0].vertices  # the band's outline
    for x in (0, 1):
        ys = vertices[vertices[:, 0] == x, 1]
        np.testing.assert_allclose([ys.min(), ys.max()], [low[x], high[x]], rtol=1e-12, atol=1e-15)
    with pytest.raises(ValueError, match="spread"):
        plots.mean_band(ax, [0, 1], runs, spread="std")


def test_mean_band_of_one_run_has_no_width(ax):
    plots.mean_band(ax, [0, 1], np.array([[0.5, 0.7]]))
    vertices = ax.collections[0].get_paths()[0].vertices
    np.testing.assert_allclose(np.sort(np.unique(vertices[:, 1])), [0.5, 0.7])
