"""Figures in a trader's units: candlesticks in price against UTC time, fixed colours per method.

Each figure is built in two steps: a plain description of what it shows (`ExampleWindow`, from a batch
and the predictions) and a function that draws it. Tests read the description, never pixels.

- `choose_example`: which window to draw, chosen rather than taken first: trading in every timeframe's
  panel, no weekend or break inside the finest panel (and no coarser panel mostly gap), several masked
  bars; one of those drawn with a seed.
- `example_window` / `example_figure`: one masked window, a panel per timeframe (and a volume panel when
  bars carry volume, in the instrument's own units): the true bars as candles in price, masked bars
  shaded, the model's reconstruction and the best baseline's drawn beside them on the masked bars only
  (the model is never trained on visible bars); one legend above the panels, never over the candles; the
  title names the instrument, the window's end (UTC), the masking mode and the window's MSE ratio; the
  figure is as wide as a masked bar's candles need to be `MIN_CANDLE_PIXELS` wide. `stage1 evaluate`
  saves one per mode; training logs one to TensorBoard (``val/masked_window``), the same window all run.
- `error_bars_figure`: RMSE per timeframe of every method of one masking mode, with n.
- `mse_figure`: the test MSE of the probe's rule and of each readout, with 95% intervals, a panel per target.
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
from stage1_ds.timeframes import Timeframe

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
#: Resolution of saved figures (matplotlib's default; TensorBoard's too).
DPI = 100
#: A masked bar's reconstructed candle is at least this wide at `DPI` (up to `MAX_WIDTH_INCHES`).
MIN_CANDLE_PIXELS = 4
#: Width of the model's and the baseline's candles beside a masked bar, in bar widths.
MASKED_CANDLE = 0.3
#: Share of the figure's width the panels take (labels and margins take the rest).
AXES_SHARE = 0.85
MIN_WIDTH_INCHES, MAX_WIDTH_INCHES = 10.0, 28.0
#: A panel spanning more than this many bar lengths per bar is mostly gap (a weekend inside an hourly
#: window); the finest panel may not span more than `MAX_FINEST_SPAN` (a break inside it). FX h4 windows
#: span about 1.4 (their weekends): fine.
MAX_SPAN, MAX_FINEST_SPAN = 1.6, 1.1
#: A drawn window has at least this many masked bars.
MIN_MASKED_BARS = 3


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

    @property
    def span(self) -> float:
        """Bar lengths from the first bar's start to the last bar's end, per bar (1: no gap)."""
        slots = (self.start[-1] - self.start[0]).astype(np.int64) / (60 * self.minutes) + 1
        return float(slots / len(self.start))


@dataclass
class ExampleWindow:
    """What `example_figure` draws: a title's facts and a `Panel` per timeframe that the sample keeps.

    Attributes:
        end_utc: the window's end (the anchor bar's end), UTC. volume_units: what the volume panels count
            (the instrument's own units), None without volume.
    """

    instrument: str
    end_utc: str
    mode: str
    mse_ratio: float  # model / baseline over this window's masked bars: price features, every timeframe
    panels: list[Panel]
    volume_units: str | None = None

    @property
    def title(self) -> str:
        ratio = f"{self.mse_ratio:.2f}" if np.isfinite(self.mse_ratio) else "-"
        return (
            f"{self.instrument}, window ending {self.end_utc} UTC, masking mode {self.mode}: "
            f"MSE model / baseline on the masked bars {ratio}"
        )

    @property
    def width_inches(self) -> float:
        """As wide as `MIN_CANDLE_PIXELS` masked candles need in the panel of most bar lengths, within
        `MIN_WIDTH_INCHES` and `MAX_WIDTH_INCHES`."""
        slots = max(panel.span * len(panel.start) for panel in self.panels)
        needed = MIN_CANDLE_PIXELS / MASKED_CANDLE * slots / (AXES_SHARE * DPI)
        return float(np.clip(needed, MIN_WIDTH_INCHES, MAX_WIDTH_INCHES))

    @property
    def masked_candle_pixels(self) -> float:
        """The narrowest panel's reconstructed candle width in pixels at `DPI` (about: margins vary)."""
        slots = max(panel.span * len(panel.start) for panel in self.panels)
        return MASKED_CANDLE * AXES_SHARE * DPI * self.width_inches / slots


def window_spans(batch: Batch, sample: int) -> dict[str, float]:
    """Per timeframe the sample keeps, its valid bars' span in bar lengths per bar (`Panel.span`)."""
    spans = {}
    for tf, window in batch.windows.items():
        valid = window.valid[sample].numpy()
        if valid.any():
            start = window.start_time[sample].numpy()[valid]
            spans[tf] = float(((start[-1] - start[0]) / Timeframe(tf).seconds + 1) / valid.sum())
    return spans


def choose_example(batch: Batch, candidates: np.ndarray, seed: int) -> int | None:
    """The sample of a masked ``batch`` to draw, among ``candidates`` ((B,) bool): one whose every timeframe
    has bars that moved (trading), whose finest panel spans no break (`MAX_FINEST_SPAN`) and no coarser
    panel is mostly gap (`MAX_SPAN`), with at least `MIN_MASKED_BARS` masked bars; which of those is drawn
    follows ``seed``. Where none qualifies, the candidate whose widest span is least (a figure still, just
    a worse one); None without candidates."""
    rows = np.flatnonzero(candidates)
    if len(rows) == 0:
        return None
    finest = next(iter(batch.windows))
    good, worst = [], []
    for sample in rows:
        spans = window_spans(batch, int(sample))
        worst.append(max(spans.values(), default=np.inf))
        trading = len(spans) == len(batch.windows) and all(
            bool((w.features[sample, :, 1] > w.features[sample, :, 2])[w.valid[sample]].any())
            for w in batch.windows.values()
        )
        masked = sum(
            int((w.mask[sample] & w.valid[sample]).sum())
            for w in batch.windows.values()
            if w.mask is not None
        )
        if (
            trading
            and spans.get(finest, np.inf) <= MAX_FINEST_SPAN
            and max(spans.values()) <= MAX_SPAN
            and masked >= MIN_MASKED_BARS
        ):
            good.append(int(sample))
    if not good:
        return int(rows[int(np.argmin(worst))])
    return good[int(np.random.default_rng(seed).integers(len(good)))]


def example_window(
    batch: Batch,
    sample: int,
    model: dict[str, torch.Tensor],
    baseline: dict[str, torch.Tensor],
    baseline_names: dict[str, str],
    instrument: str,
    mode: str,
    volume_unit: float = 1.0,
) -> ExampleWindow:
    """The example of sample ``sample`` of a masked ``batch`` (on the CPU), with the model's and a
    baseline's reconstructions (``{tf: (B, L, F)}`` features) and the baseline's name per timeframe;
    ``volume_unit``: the instrument's volume per unit of its folder (the manifest's ``volume_unit``)."""
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
            per_minute = 1.0 if batch.reference_volume is None else float(batch.reference_volume[sample])
            vscale = float(window.volume_scale[sample]) * per_minute * volume_unit
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
    end = np.datetime64(int(batch.anchor_time[sample]), "s")  # the anchor bar's end
    has_volume = any(panel.volume is not None for panel in panels)
    return ExampleWindow(
        instrument=instrument,
        end_utc=str(end).replace("T", " "),
        mode=mode,
        mse_ratio=model_error / baseline_error if baseline_error > 0 else float("nan"),
        panels=panels,
        volume_units=(
            None
            if not has_volume
            else f"{instrument}'s volume units"
            if batch.reference_volume is not None
            else "x reference/min"
        ),
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
    top = 1.0  # inches above the panels: the title and the one legend
    figure, axes = plt.subplots(
        len(rows),
        1,
        figsize=(example.width_inches, sum(heights) + 0.6 + top),
        squeeze=False,
        gridspec_kw={"height_ratios": heights},
        dpi=DPI,
    )
    for ax, (panel, is_volume) in zip(axes[:, 0], rows, strict=True):
        _shade_masked(ax, panel)
        if is_volume:
            _volume_panel(ax, panel, example.volume_units or "")
        else:
            _price_panel(ax, panel)
        locator = mdates.AutoDateLocator()
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
        ax.tick_params(labelsize=7)
    axes[-1, 0].set_xlabel("time (UTC)")
    figure.suptitle(example.title, fontsize=9)
    baselines = dict.fromkeys(panel.baseline_name for panel in example.panels)
    handles = [
        Patch(facecolor="white", edgecolor=colour, label=label)
        for colour, label in (
            (TRUE_COLOUR, "true bars"),
            (METHOD_COLOURS["model"], "model (masked bars)"),
            *((METHOD_COLOURS.get(name, "tab:purple"), f"{name} (masked bars)") for name in baselines),
        )
    ]
    handles.append(Patch(facecolor=MASK_COLOUR, alpha=0.12, label="masked"))
    height = figure.get_figheight()
    figure.legend(handles=handles, loc="upper center", ncol=len(handles), fontsize=7, frameon=False,
                  bbox_to_anchor=(0.5, 1 - 0.45 / height))  # fmt: skip
    figure.tight_layout(rect=(0, 0, 1, 1 - top / height))
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
    _candles(
        ax, _centres(panel, -0.3), panel.model, MASKED_CANDLE * day_width, METHOD_COLOURS["model"], "model"
    )
    _candles(
        ax,
        _centres(panel, 0.3),
        panel.baseline,
        MASKED_CANDLE * day_width,
        METHOD_COLOURS.get(panel.baseline_name, "tab:purple"),
        panel.baseline_name,
    )
    ax.set_ylabel(f"{panel.timeframe} price", fontsize=8)
    ax.ticklabel_format(axis="y", useOffset=False)  # whole prices, never "+1.12" above the axis


def _volume_panel(ax: Axes, panel: Panel, units: str) -> None:
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
    ax.set_ylabel(f"{panel.timeframe} volume\n({units})", fontsize=7)


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
class MseBar:
    """One method of `mse_figure`: its test MSE, the half-width of its 95% interval, and whether it is a
    readout that declined to correct the rule (drawn hatched)."""

    label: str
    mse: float
    half_width: float
    declined: bool = False


def mse_figure(panels: dict[str, list[MseBar]], split: str, instruments: list[str]) -> Figure:
    """One panel per target: each method's MSE as a horizontal bar with its 95% interval, the first (the
    rule) as a dashed reference line through every bar, so a gain reads at a glance."""
    figure, axes = plt.subplots(
        1, len(panels), figsize=(6.5 * len(panels), 0.6 + 0.45 * max(map(len, panels.values())))
    )
    axes = np.atleast_1d(axes)
    for ax, (target, bars) in zip(axes, panels.items(), strict=True):
        y = np.arange(len(bars))[::-1]
        colours = [
            "tab:gray" if k == 0 else ("tab:blue" if "untrained" in bar.label else "tab:orange")
            for k, bar in enumerate(bars)
        ]
        ax.barh(
            y,
            [bar.mse for bar in bars],
            xerr=[bar.half_width for bar in bars],
            color=colours,
            hatch=["//" if bar.declined else "" for bar in bars],
            capsize=3,
        )
        ax.axvline(bars[0].mse, color="black", linestyle="--", linewidth=0.8)
        ax.set_yticks(
            y, [bar.label + (" (declined on val)" if bar.declined else "") for bar in bars], fontsize=8
        )
        low = min(bar.mse - bar.half_width for bar in bars)
        high = max(bar.mse + bar.half_width for bar in bars)
        ax.set_xlim(low - 0.1 * (high - low), high + 0.1 * (high - low))
        ax.set_xlabel(f"{target}: test MSE (95% interval; dashed: best_rule)", fontsize=8)
    figure.suptitle(
        f"{split} split of {', '.join(instruments)}: the rule and the rule plus each readout", fontsize=9
    )
    figure.tight_layout()
    return figure
