"""The pictures of `--cam`: the model's input with a class-activation heat map over it (matplotlib, Agg)."""

from __future__ import annotations

import io
from typing import Sequence

import numpy as np

PANEL_INCHES = 3.6
HEAT_ALPHA = 0.45


def display_image(x: np.ndarray) -> np.ndarray:
    """A (C, H, W) model input as an image to show: (H, W) for one channel, (H, W, 3) for three, scaled
    to 0..1 over the whole input (undoing Normalize up to a constant, so colours keep their balance)."""
    x = np.asarray(x, dtype=np.float32)
    low, high = float(x.min()), float(x.max())
    x = (x - low) / (high - low) if high > low else np.zeros_like(x)
    if x.shape[0] == 3:
        return x.transpose(1, 2, 0)
    return x.mean(0)  # one channel, or a count an image cannot show: their mean in grey


def draw(image: np.ndarray, panels: Sequence[tuple[np.ndarray, str]], heading: str | None = None) -> bytes:
    """A PNG of one panel per (heat map, title): the image with its (H, W) map, 0..1, in colour over it."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(PANEL_INCHES * len(panels), PANEL_INCHES + (0.4 if heading else 0.1)))
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    for ax, (heat, title) in zip(axes, panels):
        ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
        ax.imshow(heat, cmap="jet", alpha=HEAT_ALPHA, vmin=0, vmax=1, interpolation="bilinear")
        ax.set_title(title, fontsize=10)
        ax.axis("off")
    if heading:
        figure.suptitle(heading, fontsize=9)
    figure.tight_layout()
    png = io.BytesIO()
    figure.savefig(png, format="png", dpi=100)
    return png.getvalue()
