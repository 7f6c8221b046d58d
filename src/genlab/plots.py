"""Figures: image grids and metric curves (matplotlib, Agg backend)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

__all__ = ["tile_images", "save_image_grid", "plot_curves", "save_axes"]


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
        ax.axhline(y, ls="--", lw=0.8, color="gray")
        ax.text(x[0], y, f" {label}", va="bottom", fontsize=8, color="gray")
    if logy:
        ax.set_yscale("log")
    return save_axes(fig, ax, path, xlabel, ylabel, title)


def save_axes(fig: plt.Figure, ax: plt.Axes, path: str | Path, xlabel: str, ylabel: str, title: str,
              title_size: float | None = None) -> Path:
    """Label ``ax``, grid it, add a legend, save ``fig`` as a 120 dpi PNG at ``path`` and close it."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, **({"fontsize": title_size} if title_size else {}))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def moving_average(values: Sequence[float], window: int) -> list[float]:
    """Trailing means: out[i] = mean(values[max(0, i - window + 1):i + 1]) (fewer values at the start)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v - (values[i - window] if i >= window else 0.0)
        out.append(total / min(i + 1, window))
    return out
