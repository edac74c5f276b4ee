"""Figures that stages below evaluation write (the training loss), and the one way figures are saved.

matplotlib's object API only: no global state, nothing drawn on import.
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)


def save(fig, path: Path) -> Path:
    """Write ``fig`` as a PNG at ``path`` (its directory created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def loss_curve(history: list[dict], path) -> Path | None:
    """Training and test loss per epoch, with the three loss terms (skipped, with a warning,
    without matplotlib: the ``evaluate`` extra)."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        log.warning("%s not drawn: matplotlib is not installed (pip install 'galcae[evaluate]')", path)
        return None

    epochs = [h["epoch"] for h in history]
    fig = Figure(figsize=(9, 3.2))
    axes = fig.subplots(1, 4)
    for ax, key in zip(axes, ("loss", "bce", "mse", "l1")):
        ax.plot(epochs, [h[key] for h in history], label="train")
        ax.plot(epochs, [h[f"test_{key}"] for h in history], label="test")
        ax.set_title({"loss": "total", "bce": "BCE (reconstruction)", "mse": "latent MSE",
                      "l1": "mean |z_res|"}[key], fontsize=9)
        ax.set_xlabel("epoch")
        if key != "bce":
            ax.set_yscale("log")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return save(fig, path)
