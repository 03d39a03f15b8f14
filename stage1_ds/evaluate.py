"""`stage1 evaluate`: masked-bar reconstruction of an exported model against naive baselines.

Windows of a split are masked with a fixed seed (the export's masking config); on exactly those masked
bars of kept timeframes the model and three baselines are scored:

- ``linear_interpolation``: each feature interpolated linearly across each masked span from the visible
  bars at its edges (held flat beyond the first or last visible bar);
- ``last_close``: the last visible close carried forward into every feature of the masked bars (the first
  visible close for a span at the start);
- ``train_mean``: the training split's mean of each feature at each position of the window.

Errors are MSE and MAE in the scaled feature space and in basis points of price (feature error x scale x
1e4, since features are log price ratios). The report also gives the model's error over the best
baseline's and the cross-timeframe inconsistency of the model's reconstructions.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stage1_ds.config import Config
from stage1_ds.data.batch import Batch
from stage1_ds.data.windows import WindowDataset, WindowSampler
from stage1_ds.model.losses import cross_timeframe_terms
from stage1_ds.model.masking import MaskedWindows
from stage1_ds.model.stage1 import Stage1Model
from stage1_ds.plots import masked_window_figure

BASELINES = ("linear_interpolation", "last_close", "train_mean")
Predictor = Callable[[Batch], dict[str, torch.Tensor]]


def linear_interpolation(batch: Batch) -> dict[str, torch.Tensor]:
    """Per feature, linear interpolation across masked bars from the visible ones."""
    out = {}
    for tf, window in batch.windows.items():
        features = window.features.numpy()
        visible = ~window.mask.numpy()  # type: ignore[union-attr]
        pred = features.copy()
        positions = np.arange(features.shape[1])
        for b in range(features.shape[0]):
            known = positions[visible[b]]
            if len(known) == 0:
                pred[b] = 0.0
                continue
            for f in range(features.shape[2]):
                pred[b, :, f] = np.interp(positions, known, features[b, known, f])
        out[tf] = torch.from_numpy(pred)
    return out


def last_close(batch: Batch) -> dict[str, torch.Tensor]:
    """The last visible close (the next visible one at the window start) in every feature of masked bars."""
    out = {}
    for tf, window in batch.windows.items():
        features = window.features.numpy()
        visible = ~window.mask.numpy()  # type: ignore[union-attr]
        length = features.shape[1]
        index = np.where(visible, np.arange(length), -1)
        last = np.maximum.accumulate(index, axis=1)  # last visible position at or before each bar
        first_visible = np.argmax(visible, axis=1)
        source = np.where(last >= 0, last, first_visible[:, None])
        close = np.take_along_axis(features[..., 3], source, axis=1)
        pred = np.where(visible[..., None], features, close[..., None])
        out[tf] = torch.from_numpy(pred.astype(np.float32))
    return out


def train_mean_predictor(
    data_dir: Path, config: Config, batches: int = 16, batch_size: int = 64
) -> Predictor:
    """The training split's mean feature per timeframe and window position, as a constant prediction."""
    windows = WindowDataset(data_dir, "train", config.data, seed=config.seed)
    sampler = WindowSampler(len(windows), min(batch_size, len(windows)), seed=12345, num_batches=batches)
    sums: dict[str, torch.Tensor] = {}
    count = 0
    for ids in sampler:
        batch = windows.batch(np.asarray(ids))
        for tf, window in batch.windows.items():
            sums[tf] = sums.get(tf, 0) + window.features.sum(0)
        count += batch.size
    means = {tf: s / count for tf, s in sums.items()}

    def predict(batch: Batch) -> dict[str, torch.Tensor]:
        return {tf: means[tf].expand_as(w.features).clone() for tf, w in batch.windows.items()}

    return predict


@dataclass
class Scores:
    """Running sums of errors on masked bars, per timeframe."""

    squared: float = 0.0
    absolute: float = 0.0
    squared_bps: float = 0.0
    absolute_bps: float = 0.0
    count: int = 0

    def add(self, pred: torch.Tensor, batch: Batch, tf: str) -> None:
        window = batch.windows[tf]
        selected = (window.mask & window.valid).unsqueeze(-1).expand_as(window.features)  # type: ignore[operator]
        error = (pred.float() - window.features)[selected]
        scale = window.scale[:, None, None].expand_as(window.features)[selected]
        bps = error * scale * 1e4
        self.squared += float(error.pow(2).sum())
        self.absolute += float(error.abs().sum())
        self.squared_bps += float(bps.pow(2).sum())
        self.absolute_bps += float(bps.abs().sum())
        self.count += int(selected.sum())

    def summary(self) -> dict[str, float]:
        n = max(self.count, 1)
        return {
            "mse": self.squared / n,
            "mae": self.absolute / n,
            "rmse_bps": (self.squared_bps / n) ** 0.5,
            "mae_bps": self.absolute_bps / n,
            "masked_values": self.count,
        }


def evaluate(
    model: Stage1Model | Predictor,
    data_dir: Path,
    config: Config,
    split: str = "test",
    batches: int = 20,
    batch_size: int = 64,
    seed: int = 2024,
) -> dict[str, Any]:
    """Score ``model`` (a `Stage1Model` or any function from a batch to reconstructions) and the baselines.

    Returns:
        The report: per timeframe and overall, each method's errors, the model's ratio to each baseline
        and to the best one, and the model's cross-timeframe inconsistency.
    """
    config.validate()
    windows = WindowDataset(data_dir, split, config.data, seed=seed)
    data = MaskedWindows(windows, config.model.masking, config.model.patch_len, seed=seed)
    size = min(batch_size, len(data))
    sampler = WindowSampler(len(data), size, seed=seed, num_batches=min(batches, max(1, len(data) // size)))
    predict: Predictor
    if isinstance(model, Stage1Model):
        stage1 = model

        def predict(batch: Batch) -> dict[str, torch.Tensor]:
            device = next(stage1.parameters()).device
            with torch.no_grad():
                out = stage1(batch.to(device)).reconstruction
            return {tf: v.float().cpu() for tf, v in out.items()}

    else:
        predict = model
    methods: dict[str, Predictor] = {
        "model": predict,
        "linear_interpolation": linear_interpolation,
        "last_close": last_close,
        "train_mean": train_mean_predictor(data_dir, config),
    }
    scores = {m: {tf.value: Scores() for tf in windows.timeframes} for m in methods}
    inconsistency: dict[str, list[float]] = {}
    example: dict[str, Any] | None = None
    for ids in sampler:
        batch = data.batch(np.asarray(ids))
        for method, fn in methods.items():
            preds = fn(batch)
            for tf in preds:
                scores[method][tf].add(preds[tf], batch, tf)
            if method == "model":
                for tf, term in cross_timeframe_terms(preds, batch).items():
                    if term.count > 0:
                        inconsistency.setdefault(tf, []).append(float(term.value))
                example = example or {"batch": batch, "preds": preds}
    report: dict[str, Any] = {
        "split": split,
        "batches": len(sampler),
        "samples": len(sampler) * size,
        "timeframes": {},
        "overall": {},
    }
    for tf in [t.value for t in windows.timeframes]:
        entry = {m: scores[m][tf].summary() for m in methods}
        report["timeframes"][tf] = _with_ratios(entry)
    total = {m: _merge([scores[m][tf] for tf in scores[m]]).summary() for m in methods}
    report["overall"] = _with_ratios(total)
    report["cross_timeframe_inconsistency"] = {tf: float(np.mean(v)) for tf, v in inconsistency.items()}
    report["example"] = example
    return report


def _merge(parts: list[Scores]) -> Scores:
    merged = Scores()
    for p in parts:
        merged.squared += p.squared
        merged.absolute += p.absolute
        merged.squared_bps += p.squared_bps
        merged.absolute_bps += p.absolute_bps
        merged.count += p.count
    return merged


def _with_ratios(entry: dict[str, dict[str, float]]) -> dict[str, Any]:
    best = min(BASELINES, key=lambda b: entry[b]["mse"])
    model_mse = entry["model"]["mse"]
    ratios = {b: model_mse / entry[b]["mse"] if entry[b]["mse"] > 0 else float("nan") for b in BASELINES}
    return {**entry, "best_baseline": best, "ratio_to_best_baseline": ratios[best], "ratio_to": ratios}


def format_report(report: dict[str, Any]) -> str:
    lines = [
        f"split {report['split']}: {report['samples']} windows, masked bars only; MSE in feature units, "
        "RMSE in basis points",
        f"{'timeframe':<10}{'model':>10}{'interp':>10}{'last close':>11}{'train mean':>11}"
        f"{'model bps':>11}{'interp bps':>11}{'model/best':>11}",
    ]
    rows = [*report["timeframes"].items(), ("overall", report["overall"])]
    for tf, e in rows:
        lines.append(
            f"{tf:<10}{e['model']['mse']:>10.4f}{e['linear_interpolation']['mse']:>10.4f}"
            f"{e['last_close']['mse']:>11.4f}{e['train_mean']['mse']:>11.4f}"
            f"{e['model']['rmse_bps']:>11.2f}{e['linear_interpolation']['rmse_bps']:>11.2f}"
            f"{e['ratio_to_best_baseline']:>11.3f}"
        )
    inconsistency = ", ".join(f"{tf} {v:.4f}" for tf, v in report["cross_timeframe_inconsistency"].items())
    lines.append(
        f"cross-timeframe inconsistency of the model (units of the coarser scale^2): {inconsistency}"
    )
    return "\n".join(lines)


def write_report(report: dict[str, Any], json_path: Path | None, figure_path: Path | None) -> None:
    """The JSON report (without the example batch) and a PNG: errors per timeframe, then one example."""
    if json_path is not None:
        json_path.write_text(json.dumps({k: v for k, v in report.items() if k != "example"}, indent=2) + "\n")
    if figure_path is None:
        return
    from matplotlib import pyplot as plt

    names = list(report["timeframes"])
    methods = ["model", *BASELINES]
    figure, ax = plt.subplots(figsize=(9, 3.5))
    width = 0.8 / len(methods)
    for i, method in enumerate(methods):
        values = [report["timeframes"][tf][method]["rmse_bps"] for tf in names]
        ax.bar(np.arange(len(names)) + i * width, values, width, label=method)
    ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2, names)
    ax.set_ylabel("RMSE on masked bars (bps)")
    ax.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(figure_path, dpi=110)
    plt.close(figure)
    example = report.get("example")
    if example:
        batch, preds = example["batch"], example["preds"]
        window_figure = masked_window_figure(
            names,
            {tf: batch.windows[tf].features[0].numpy() for tf in names},
            {tf: preds[tf][0].numpy() for tf in names},
            {tf: batch.windows[tf].mask[0].numpy() for tf in names},
            {tf: batch.windows[tf].valid[0].numpy() for tf in names},
        )
        window_figure.savefig(figure_path.with_name(figure_path.stem + "_example.png"), dpi=110)
        plt.close(window_figure)
