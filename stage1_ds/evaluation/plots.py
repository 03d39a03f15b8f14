"""Figures: a masked window, true against reconstructed bars, masked spans shaded."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # files and TensorBoard only; never a screen

import numpy as np
from matplotlib import pyplot as plt
from matplotlib.figure import Figure


def masked_window_figure(
    timeframes: list[str],
    truth: dict[str, np.ndarray],
    reconstruction: dict[str, np.ndarray],
    mask: dict[str, np.ndarray],
    valid: dict[str, np.ndarray],
) -> Figure:
    """One panel per timeframe: the close of one sample, true and reconstructed, masked bars shaded.

    Args:
        truth, reconstruction: per timeframe (L, F) features of one sample (close is column 3).
        mask, valid: per timeframe (L,) bool.
    """
    figure, axes = plt.subplots(len(timeframes), 1, figsize=(9, 1.8 * len(timeframes)), squeeze=False)
    for ax, tf in zip(axes[:, 0], timeframes, strict=True):
        x = np.arange(len(truth[tf]))
        ax.plot(x, truth[tf][:, 3], color="black", linewidth=1.0, label="true close")
        ax.plot(x, reconstruction[tf][:, 3], color="tab:orange", linewidth=1.0, label="reconstructed")
        ax.fill_between(
            x,
            0,
            1,
            where=mask[tf] & valid[tf],
            transform=ax.get_xaxis_transform(),
            color="tab:blue",
            alpha=0.15,
            step="mid",
            label="masked",
        )
        ax.set_ylabel(tf)
        if not valid[tf].any():
            ax.set_title(f"{tf} dropped from this sample", fontsize=8)
    axes[0, 0].legend(loc="upper left", fontsize=7, ncol=3)
    axes[-1, 0].set_xlabel("bar (oldest to anchor)")
    figure.tight_layout()
    return figure
