"""Figures in a trader's units: candlesticks in price against UTC time, fixed colours per method.

Each figure is built in two steps: a plain description of what it shows (`ExampleWindow`, from a batch
and the predictions) and a function that draws it. Tests read the description, never pixels.

- `example_window` / `example_figure`: one masked window, a panel per timeframe (and a volume panel when
  bars carry volume): the true bars as candles in price, masked bars shaded, the model's reconstruction
  and the best baseline's drawn beside them on the masked bars only (the model is never trained on visible
  bars); the title names the instrument, the anchor time (UTC), the masking mode and the window's MSE
  ratio. `stage1 evaluate` saves one per mode; training logs one to TensorBoard (``val/masked_window``).
- `error_bars_figure`: RMSE per timeframe of every method of one masking mode, with n.
- `probe_scatter_figure`: predicted against realised log variance for two probe methods, with n, the split
  and the instruments.
"""

from __future__ import annotations

from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")  # files and TensorBoard only; never a screen

import matplotlib.dates as mdates
import numpy as np
import torch
from matplotlib import pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from stage1_ds.data.batch import Batch
from stage1_ds.data.features import VOLUME, to_prices
from stage1_ds.data.timeframes import Timeframe

#: One colour per method, the same in every figure (a method absent from a report leaves its colour unused).
METHOD_COLOURS = {
    "model": "tab:orange",
    "linear_interpolation": "tab:blue",
    "last_close": "tab:green",
    "train_mean": "tab:gray",
    "cross_timeframe_rules": "tab:purple",
    "best_rule": "tab:purple",
    "best_rule_plus_embeddings": "tab:orange",
}
TRUE_COLOUR = "black"
MASK_COLOUR = "tab:blue"


@dataclass
class Panel:
    """One timeframe of an example window, valid bars only, oldest first.

    Attributes:
        start: (L,) datetime64[s] bar starts, UTC.
        ohlc: (L, 4) true prices. model, baseline: (L, 4) reconstructed prices, NaN on visible bars.
        masked: (L,) bool.
        volume, model_volume, baseline_volume: (L,) volume in units of the window's reference volume per
            minute (reconstructions NaN on visible bars); None without volume.
        baseline_name: the baseline drawn (the best of this timeframe, where known).
    """

    timeframe: str
    start: np.ndarray
    ohlc: np.ndarray
    masked: np.ndarray
    model: np.ndarray
    baseline: np.ndarray
    baseline_name: str
    volume: np.ndarray | None = None
    model_volume: np.ndarray | None = None
    baseline_volume: np.ndarray | None = None

    @property
    def minutes(self) -> int:
        return Timeframe(self.timeframe).minutes


@dataclass
class ExampleWindow:
    """What `example_figure` draws: a title's facts and a `Panel` per timeframe that the sample keeps."""

    instrument: str
    anchor_utc: str
    mode: str
    mse_ratio: float  # model / baseline over this window's masked bars: price features, every timeframe
    panels: list[Panel]

    @property
    def title(self) -> str:
        ratio = f"{self.mse_ratio:.2f}" if np.isfinite(self.mse_ratio) else "-"
        return (
            f"{self.instrument}, window ending {self.anchor_utc} UTC, masking mode {self.mode}: "
            f"MSE model / baseline on the masked bars {ratio}"
        )


def example_window(
    batch: Batch,
    sample: int,
    model: dict[str, torch.Tensor],
    baseline: dict[str, torch.Tensor],
    baseline_names: dict[str, str],
    instrument: str,
    mode: str,
) -> ExampleWindow:
    """The example of sample ``sample`` of a masked ``batch`` (on the CPU), with the model's and a
    baseline's reconstructions (``{tf: (B, L, F)}`` features) and the baseline's name per timeframe."""
    panels = []
    model_error = baseline_error = 0.0
    reference = batch.reference_price[sample : sample + 1].double().numpy()
    for tf, window in batch.windows.items():
        assert window.mask is not None, "an example needs a masked batch"
        valid = window.valid[sample].numpy()
        if not valid.any():
            continue
        masked = window.mask[sample].numpy()[valid]
        scale = window.scale[sample : sample + 1].numpy()
        truth = window.features[sample].float().numpy()[valid]
        mine = model[tf][sample].float().numpy()[valid]
        theirs = baseline[tf][sample].float().numpy()[valid]
        model_error += float(((mine - truth)[masked, :4] ** 2).sum())  # prices, as the headline MSE
        baseline_error += float(((theirs - truth)[masked, :4] ** 2).sum())

        volume = model_volume = baseline_volume = None
        if window.volume_scale is not None and truth.shape[1] > VOLUME:
            vscale = float(window.volume_scale[sample])
            volume = truth[:, VOLUME] * vscale
            model_volume = np.where(masked, mine[:, VOLUME] * vscale, np.nan)
            baseline_volume = np.where(masked, theirs[:, VOLUME] * vscale, np.nan)
        panels.append(
            Panel(
                timeframe=tf,
                start=window.start_time[sample].numpy()[valid].astype("datetime64[s]"),
                ohlc=_prices(truth, reference, scale),
                masked=masked,
                model=_prices(mine, reference, scale, only=masked),
                baseline=_prices(theirs, reference, scale, only=masked),
                baseline_name=baseline_names[tf],
                volume=volume,
                model_volume=model_volume,
                baseline_volume=baseline_volume,
            )
        )
    anchor = np.datetime64(int(batch.anchor_time[sample]), "s")
    return ExampleWindow(
        instrument=instrument,
        anchor_utc=str(anchor).replace("T", " "),
        mode=mode,
        mse_ratio=model_error / baseline_error if baseline_error > 0 else float("nan"),
        panels=panels,
    )


def _prices(
    features: np.ndarray, reference: np.ndarray, scale: np.ndarray, only: np.ndarray | None = None
) -> np.ndarray:
    """(L, 4) prices of one sample's (L, F) features; NaN outside ``only`` when given."""
    values = to_prices(features[None, :, :4], reference, scale)[0]
    return values if only is None else np.where(only[:, None], values, np.nan)


def example_figure(example: ExampleWindow) -> Figure:
    """Draw an `ExampleWindow`: per timeframe a price panel of candles (true bars, and on masked bars the
    model's and the baseline's beside them), under it a volume panel when the bars carry volume."""
    rows: list[tuple[Panel, bool]] = []
    for panel in example.panels:
        rows.append((panel, False))
        if panel.volume is not None:
            rows.append((panel, True))
    heights = [0.6 if is_volume else 1.6 for _, is_volume in rows]
    figure, axes = plt.subplots(
        len(rows), 1, figsize=(10, sum(heights) + 0.8), squeeze=False, gridspec_kw={"height_ratios": heights}
    )
    for ax, (panel, is_volume) in zip(axes[:, 0], rows, strict=True):
        _shade_masked(ax, panel)
        if is_volume:
            _volume_panel(ax, panel)
        else:
            _price_panel(ax, panel)
        locator = mdates.AutoDateLocator()
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
        ax.tick_params(labelsize=7)
    axes[-1, 0].set_xlabel("time (UTC)")
    figure.suptitle(example.title, fontsize=9)
    figure.tight_layout()
    return figure


def _centres(panel: Panel, offset: float = 0.0) -> np.ndarray:
    """Matplotlib date numbers of each bar's middle, shifted by ``offset`` bar widths."""
    middle = panel.start + np.timedelta64(30 * panel.minutes, "s")
    return np.asarray(mdates.date2num(middle)) + offset * panel.minutes / 1440


def _candles(ax: Axes, x: np.ndarray, ohlc: np.ndarray, width: float, colour: str, label: str) -> None:
    """Candles of ``ohlc`` (NaN rows skipped): a wick from low to high, a body from open to close (filled
    when the close is below the open)."""
    keep = np.isfinite(ohlc).all(axis=1)
    if not keep.any():
        return
    x, ohlc = x[keep], ohlc[keep]
    ax.vlines(x, ohlc[:, 2], ohlc[:, 1], color=colour, linewidth=0.7)
    bottom = np.minimum(ohlc[:, 0], ohlc[:, 3])
    height = np.maximum(np.abs(ohlc[:, 3] - ohlc[:, 0]), 1e-12 * np.abs(ohlc[:, 3]))
    falling = ohlc[:, 3] < ohlc[:, 0]
    ax.bar(
        x,
        height,
        width,
        bottom,
        color=[colour if down else "white" for down in falling],
        edgecolor=colour,
        linewidth=0.7,
        label=label,
    )


def _price_panel(ax: Axes, panel: Panel) -> None:
    day_width = panel.minutes / 1440
    _candles(ax, _centres(panel), panel.ohlc, 0.6 * day_width, TRUE_COLOUR, "true bars")
    _candles(ax, _centres(panel, -0.3), panel.model, 0.3 * day_width, METHOD_COLOURS["model"], "model")
    _candles(
        ax,
        _centres(panel, 0.3),
        panel.baseline,
        0.3 * day_width,
        METHOD_COLOURS.get(panel.baseline_name, "tab:purple"),
        panel.baseline_name,
    )
    ax.set_ylabel(f"{panel.timeframe} price", fontsize=8)
    ax.ticklabel_format(axis="y", useOffset=False)  # whole prices, never "+1.12" above the axis
    baseline_colour = METHOD_COLOURS.get(panel.baseline_name, "tab:purple")
    handles = [
        Patch(facecolor="white", edgecolor=colour, label=label)
        for colour, label in (
            (TRUE_COLOUR, "true bars"),
            (METHOD_COLOURS["model"], "model (masked bars)"),
            (baseline_colour, panel.baseline_name),
        )
    ]
    ax.legend(handles=handles, loc="upper left", fontsize=6, ncol=3)


def _volume_panel(ax: Axes, panel: Panel) -> None:
    assert panel.volume is not None and panel.model_volume is not None and panel.baseline_volume is not None
    width = panel.minutes / 1440
    ax.bar(
        _centres(panel), panel.volume, 0.6 * width, color="lightgray", edgecolor=TRUE_COLOUR, linewidth=0.3
    )
    for values, offset, colour in (
        (panel.model_volume, -0.3, METHOD_COLOURS["model"]),
        (panel.baseline_volume, 0.3, METHOD_COLOURS.get(panel.baseline_name, "tab:purple")),
    ):
        keep = np.isfinite(values)
        ax.bar(_centres(panel, offset)[keep], values[keep], 0.3 * width, color=colour)
    ax.set_ylabel(f"{panel.timeframe} volume\n(x ref/min)", fontsize=7)


def _shade_masked(ax: Axes, panel: Panel) -> None:
    half = np.timedelta64(30 * panel.minutes, "s")
    for start in panel.start[panel.masked]:
        ax.axvspan(
            mdates.date2num(start),
            mdates.date2num(start + 2 * half),
            color=MASK_COLOUR,
            alpha=0.12,
            linewidth=0,
        )


def error_bars_figure(
    errors: dict[str, dict[str, float]], mode: str, samples: int, masked_bars: dict[str, int]
) -> Figure:
    """RMSE in basis points per timeframe and method (``errors[tf][method]``), colours from
    `METHOD_COLOURS`; the title gives the windows scored and the legend the masked bars per timeframe."""
    names = list(errors)
    methods = [m for m in METHOD_COLOURS if m in errors[names[0]] and not m.startswith("best_rule")]
    figure, ax = plt.subplots(figsize=(9, 3.5))
    width = 0.8 / len(methods)
    for i, method in enumerate(methods):
        values = [errors[tf][method] for tf in names]
        ax.bar(np.arange(len(names)) + i * width, values, width, label=method, color=METHOD_COLOURS[method])
    ax.set_xticks(
        np.arange(len(names)) + 0.4 - width / 2, [f"{tf}\nn={masked_bars[tf]:,}" for tf in names], fontsize=8
    )
    ax.set_ylabel("RMSE on masked bars (bps)")
    ax.set_title(f"masking mode {mode}: {samples} windows; n = masked bars per timeframe", fontsize=9)
    ax.legend(fontsize=7)
    figure.tight_layout()
    return figure


@dataclass
class ScatterPanel:
    """One method of `probe_scatter_figure`: predictions against the realised values, and its R^2."""

    method: str
    label: str
    predicted: np.ndarray
    realised: np.ndarray
    r2: float


def probe_scatter_figure(
    panels: list[ScatterPanel], split: str, instruments: list[str], target: str
) -> Figure:
    """Predicted against realised values, one panel per method (sharing axes), with n, split, instruments."""
    figure, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 4.2), sharex=True, sharey=True)
    axes = np.atleast_1d(axes)
    for ax, panel in zip(axes, panels, strict=True):
        ax.scatter(
            panel.predicted,
            panel.realised,
            s=4,
            alpha=0.4,
            color=METHOD_COLOURS.get(panel.method, "tab:blue"),
        )
        low, high = float(np.min(panel.realised)), float(np.max(panel.realised))
        ax.plot([low, high], [low, high], color=TRUE_COLOUR, linewidth=0.8)
        ax.set_title(f"{panel.label}: R^2 {panel.r2:.3f}, n={len(panel.realised)}", fontsize=9)
        ax.set_xlabel(f"predicted {target}", fontsize=8)
    axes[0].set_ylabel(f"realised {target}", fontsize=8)
    figure.suptitle(f"{split} split of {', '.join(instruments)}", fontsize=9)
    figure.tight_layout()
    return figure
