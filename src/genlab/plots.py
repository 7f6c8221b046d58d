"""Figures: image grids, metric curves and the pieces every experiment's figures share
(matplotlib, Agg backend).

An experiment's own figure is drawn with ``plt`` and finished with these helpers::

    fig, ax = plots.plt.subplots()
    line = plots.band(ax, steps, mean, mean - sem, mean + sem, "baseline")  # mean with a shaded band
    plots.hline(ax, 0.2, "uniform policy")                              # labelled reference line
    plots.decorate(ax, "step", "P(best arm)", "REINFORCE")              # labels, grid, legend
    plots.save(fig, run_path / "figures" / "p_best.png")                # tight, 120 dpi, closed
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

__all__ = ["tile_images", "save_image_grid", "plot_curves", "moving_average", "save", "decorate", "hline", "band",
           "save_axes", "seed_band", "heatmap"]


def tile_images(images: np.ndarray, nrow: int, ncol: int, pad: int = 1) -> np.ndarray:
    """Tile uint8 images (N, H, W) into one (nrow*(H+pad)+pad, ncol*(W+pad)+pad) array.

    Raises:
        ValueError: fewer than nrow * ncol images.
    """
    images = np.asarray(images)
    n, h, w = images.shape
    if n < nrow * ncol:
        raise ValueError(f"need {nrow * ncol} images for a {nrow}x{ncol} grid, got {n}")
    canvas = np.full((nrow * (h + pad) + pad, ncol * (w + pad) + pad), 255, dtype=np.uint8)
    for k in range(nrow * ncol):
        r, c = divmod(k, ncol)
        canvas[pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = images[k]
    return canvas


def save_image_grid(images: np.ndarray, path: str | Path, nrow: int, ncol: int, title: str | None = None,
                    scale: int = 2) -> Path:
    """Save uint8 images (N, H, W) as an nrow x ncol grid PNG, each pixel an exact scale x scale block.

    The axes are sized to the canvas in whole screen pixels, so no resampling blurs or aliases the
    samples (a fractional zoom draws moire patterns that are not in the images).
    """
    canvas = tile_images(images, nrow, ncol)
    h, w = canvas.shape
    title_px = 22 if title else 0
    dpi = 100
    fig = plt.figure(figsize=(w * scale / dpi, (h * scale + title_px) / dpi), dpi=dpi)
    ax = fig.add_axes((0.0, 0.0, 1.0, h * scale / (h * scale + title_px)))
    ax.imshow(canvas, cmap="gray", vmin=0, vmax=255, interpolation="nearest", aspect="auto")
    ax.axis("off")
    if title:
        fig.text(0.5, 1 - title_px / 2 / (h * scale + title_px), title, ha="center", va="center", fontsize=8)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return Path(path)


def plot_curves(x: Sequence[float], series: dict[str, Sequence[float]], path: str | Path, xlabel: str, ylabel: str,
                title: str, reference: dict[str, dict[float, float]] | None = None,
                hlines: dict[str, float] | None = None, logy: bool = False) -> Path:
    """Line plot of several series against x, with optional reference points and lines.

    Args:
        reference: per series name, {x: value} drawn as markers (e.g. SPEC reference losses).
        hlines: label -> y of dashed horizontal lines (e.g. the equilibrium value log 2).
    """
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for name, ys in series.items():
        (line,) = ax.plot(x, ys, label=name)
        if reference and name in reference:
            rx, ry = zip(*sorted(reference[name].items()))
            ax.scatter(rx, ry, marker="x", s=50, color=line.get_color(), label=f"{name} (reference)", zorder=3)
    for label, y in (hlines or {}).items():
        hline(ax, y, label, x=x[0])
    if logy:
        ax.set_yscale("log")
    decorate(ax, xlabel, ylabel, title)
    return save(fig, path)


def save(fig, path: str | Path, dpi: int = 120) -> Path:
    """Lay out ``fig`` tightly, write it to ``path`` (PNG at ``dpi``) and close it; returns the path."""
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return Path(path)


def decorate(ax, xlabel: str, ylabel: str, title: str | None = None, title_size: float | None = None,
             grid: str | None = "major", legend: bool = True, **legend_kwargs) -> None:
    """Label the axes, title them (matplotlib's title size unless ``title_size``), draw a light
    grid on the ``grid`` ticks (major, minor or both; None: no grid) and, with ``legend``, a
    legend of the labelled artists (``legend_kwargs`` go to ``ax.legend``; font size 8 unless
    given)."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title is not None:
        ax.set_title(title, **({} if title_size is None else {"fontsize": title_size}))
    if grid is not None:
        ax.grid(alpha=0.3, which=grid)
    if legend:
        ax.legend(**{"fontsize": 8, **legend_kwargs})


def hline(ax, y: float, label: str, x: float | None = None, ls: str = "--", lw: float = 0.8) -> None:
    """A gray horizontal reference line at ``y`` (an equilibrium, a chance level, a closed form),
    labelled just above it at ``x`` (default: the left end of the axes' current x range)."""
    ax.axhline(y, ls=ls, lw=lw, color="gray")
    ax.text(ax.get_xlim()[0] if x is None else x, y, f" {label}", va="bottom", fontsize=8, color="gray")


def band(ax, x: Sequence[float], mean: Sequence[float], low: Sequence[float], high: Sequence[float],
         label: str | None = None, alpha: float = 0.2, **line_kwargs):
    """A line (``mean`` against ``x``) over a shaded band from ``low`` to ``high`` in its colour:
    a mean over seeds with its standard error or min-max range. ``line_kwargs`` go to
    ``ax.plot`` (``color``, ``lw``, ...). Returns the line (its colour for related artists)."""
    (line,) = ax.plot(x, mean, label=label, **line_kwargs)
    ax.fill_between(x, low, high, color=line.get_color(), alpha=alpha, lw=0)
    return line


def moving_average(values: Sequence[float], window: int) -> list[float]:
    """Trailing means: out[i] = mean(values[max(0, i - window + 1):i + 1]) (fewer values at the start)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v - (values[i - window] if i >= window else 0.0)
        out.append(total / min(i + 1, window))
    return out


def save_axes(fig: plt.Figure, ax: plt.Axes, path: str | Path, xlabel: str, ylabel: str, title: str,
              title_size: float | None = None) -> Path:
    """A one-axes figure's usual ending: :func:`decorate` ``ax`` (grid, legend) and :func:`save` ``fig``."""
    decorate(ax, xlabel, ylabel, title, title_size=title_size)
    return save(fig, path)


def seed_band(ax, x: Sequence[float], values, label: str | None = None, spread: str = "range",
              seed_lines: bool = False, alpha: float = 0.2, **line_kwargs):
    """The mean over seeds of ``values`` (S, T) against ``x`` (T,), over a :func:`band` of their
    range (``spread="range"``: min to max) or of ±1 standard error (``"sem"``: std with ddof=1
    over sqrt(S); no width for one seed). Non-finite values (a diverged seed) are left out, so a
    seed's curve ends at its last finite point; a column with no finite value is not drawn. With
    ``seed_lines`` each seed's own curve is drawn as well, thin, in the mean's colour.
    ``line_kwargs`` go to the mean's ``ax.plot``. Returns the mean's line.

    Raises:
        ValueError: ``spread`` is neither "range" nor "sem".
    """
    values = np.asarray(values, dtype=np.float64)
    values = np.where(np.isfinite(values), values, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # columns where no seed is finite
        mean = np.nanmean(values, 0)
        if spread == "range":
            low, high = np.nanmin(values, 0), np.nanmax(values, 0)
        elif spread == "sem":
            n = np.isfinite(values).sum(0)
            sem = np.where(n > 1, np.nanstd(values, 0, ddof=1) / np.sqrt(np.maximum(n, 1)), 0.0)
            low, high = mean - sem, mean + sem
        else:
            raise ValueError(f"spread must be 'range' or 'sem', got {spread!r}")
    line = band(ax, x, mean, low, high, label, alpha, **line_kwargs)
    if seed_lines:
        for seed_values in values:
            ax.plot(x, seed_values, color=line.get_color(), lw=0.5, alpha=0.35)
    return line


def heatmap(ax, matrix: np.ndarray, label: str, vmin: float = 0.0, vmax: float = 1.0,
            text: Callable[[float], str] = "{:.2f}".format, cmap: str = "viridis") -> None:
    """Draw ``matrix`` (R, C) on ``ax`` as a heat map: row i from the top, column j from the left,
    ticks numbered from 1, each finite value printed in its cell (by ``text``; white on the lower 60 %
    of the colour range, black above), NaN cells left blank, and a colour bar from ``vmin`` to ``vmax``
    labelled ``label``. The caller labels the axes (:func:`decorate` with ``grid=None, legend=False``)."""
    rows, cols = matrix.shape
    image = ax.imshow(np.ma.masked_invalid(matrix), vmin=vmin, vmax=vmax, cmap=cmap)
    for (i, j), value in np.ndenumerate(matrix):
        if not np.isnan(value):
            ax.text(j, i, text(value), ha="center", va="center", fontsize=7 if max(rows, cols) > 6 else 9,
                    color="white" if value < vmin + 0.6 * (vmax - vmin) else "black")
    ax.set_xticks(range(cols), [str(j + 1) for j in range(cols)])
    ax.set_yticks(range(rows), [str(i + 1) for i in range(rows)])
    ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label=label)
