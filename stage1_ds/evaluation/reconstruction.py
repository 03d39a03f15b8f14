"""`stage1 evaluate`: masked-bar reconstruction of an exported model against simple rules, per masking mode.

For each masking mode (``spans``, ``time``, ``horizon``; see `stage1_ds.model.masking`) windows of a split
are masked with a fixed seed; on exactly those masked bars of kept timeframes the model and the baselines
of `stage1_ds.baselines` (which see the same visible bars) are scored. Errors are MSE and MAE in the
scaled feature space and in basis points of price (feature error x scale x 1e4, features being log price
ratios), over the four price features; with volume, ``volume_mse`` scores the volume feature alone. Per mode the report gives every method's errors per timeframe and overall, the best baseline and
the model's ratio to it (the best baseline of each timeframe chosen on the val split, never on the split
scored), the masked share and the share of masked bars the visible bars of other
timeframes determine exactly, the cross-timeframe inconsistency of the model's reconstructions, and in
``horizon`` mode the accuracy of the direction of the predicted last close against the last visible close,
the sample's reference price (with its 95% Wilson interval).
"""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stage1_ds.config import EVAL_BATCH_SIZE, EVAL_BATCHES, EVAL_SEED, Config, MaskingMode
from stage1_ds.data.batch import Batch
from stage1_ds.data.corpus import DataSource, load_corpus, open_windows, volume_unit_of
from stage1_ds.data.features import NUM_FEATURES
from stage1_ds.data.figures import choose_example, error_bars_figure, example_figure, example_window
from stage1_ds.data.sampler import WindowSampler
from stage1_ds.evaluation.statistics import wilson_interval
from stage1_ds.model.baselines import (
    Predictor,
    cross_timeframe_rules,
    last_close,
    linear_interpolation,
    recoverable,
)
from stage1_ds.model.losses import cross_timeframe_terms
from stage1_ds.model.masking import MODES, MaskedWindows
from stage1_ds.model.stage1 import Stage1Model

log = logging.getLogger(__name__)
BASELINES = ("linear_interpolation", "last_close", "train_mean", "cross_timeframe_rules")


@dataclass
class Scores:
    """Running sums of errors on masked bars of one timeframe."""

    squared: float = 0.0
    absolute: float = 0.0
    squared_bps: float = 0.0
    absolute_bps: float = 0.0
    count: int = 0
    volume_squared: float = 0.0
    volume_count: int = 0

    def add(self, pred: torch.Tensor, batch: Batch, tf: str, rows: torch.Tensor) -> None:
        """Add the errors of the masked bars of the samples ``rows`` (B,) bool: the price features (open,
        high, low, close) into the headline figures, the volume feature (if any) on its own."""
        window = batch.windows[tf]
        scored = window.mask & window.valid & rows[:, None]  # type: ignore[operator]
        prices = window.features[..., :NUM_FEATURES]
        selected = scored.unsqueeze(-1).expand_as(prices)
        error = (pred[..., :NUM_FEATURES].float() - prices)[selected]
        scale = window.scale[:, None, None].expand_as(prices)[selected]
        bps = error * scale * 1e4
        self.squared += float(error.pow(2).sum())
        self.absolute += float(error.abs().sum())
        self.squared_bps += float(bps.pow(2).sum())
        self.absolute_bps += float(bps.abs().sum())
        self.count += int(selected.sum())
        if window.features.shape[-1] > NUM_FEATURES:
            volume_error = (pred[..., NUM_FEATURES].float() - window.features[..., NUM_FEATURES])[scored]
            self.volume_squared += float(volume_error.pow(2).sum())
            self.volume_count += int(scored.sum())

    def merged(self, other: Scores) -> Scores:
        return Scores(
            self.squared + other.squared,
            self.absolute + other.absolute,
            self.squared_bps + other.squared_bps,
            self.absolute_bps + other.absolute_bps,
            self.count + other.count,
            self.volume_squared + other.volume_squared,
            self.volume_count + other.volume_count,
        )

    def summary(self) -> dict[str, float]:
        n = max(self.count, 1)
        out = {
            "mse": self.squared / n,
            "mae": self.absolute / n,
            "rmse_bps": (self.squared_bps / n) ** 0.5,
            "mae_bps": self.absolute_bps / n,
            "masked_values": self.count,
        }
        if self.volume_count:
            out["volume_mse"] = self.volume_squared / self.volume_count
        return out


def train_mean_predictor(
    data_dir: DataSource, config: Config, batches: int = 16, batch_size: int = 64, stats: dict | None = None
) -> Predictor:
    """The training split's mean feature per timeframe and window position, over the samples that keep the
    timeframe (a dropped timeframe's zeros are not prices), as a constant prediction."""
    windows = open_windows(data_dir, "train", config.data, seed=config.seed, stats=stats)
    sampler = WindowSampler(len(windows), min(batch_size, len(windows)), seed=12345, num_batches=batches)
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, torch.Tensor] = {}
    for ids in sampler:
        batch = windows.batch(np.asarray(ids))
        for tf, window in batch.windows.items():
            kept = window.valid.any(dim=1)
            sums[tf] = sums.get(tf, 0) + window.features[kept].sum(0)
            counts[tf] = counts.get(tf, 0) + kept.sum()
    means = {tf: s / counts[tf].clamp(min=1) for tf, s in sums.items()}

    def predict(batch: Batch) -> dict[str, torch.Tensor]:
        return {tf: means[tf].expand_as(w.features).clone() for tf, w in batch.windows.items()}

    return predict


def model_predictor(model: Stage1Model) -> Predictor:
    """A `Stage1Model` as a function from a batch to its reconstructions (on the model's device)."""

    def predict(batch: Batch) -> dict[str, torch.Tensor]:
        device = next(model.parameters()).device
        with torch.no_grad():
            out = model(batch.to(device)).reconstruction
        return {tf: v.float().cpu() for tf, v in out.items()}

    return predict


def evaluate(
    model: Stage1Model | Predictor,
    data_dir: DataSource,
    config: Config,
    split: str = "test",
    batches: int = EVAL_BATCHES,
    batch_size: int = EVAL_BATCH_SIZE,
    seed: int = EVAL_SEED,
    modes: tuple[MaskingMode, ...] = MODES,
    stats: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Score ``model`` (a `Stage1Model` or any function from a batch to reconstructions) and the baselines
    in each masking mode of ``modes``.

    The best baseline of each timeframe is chosen on the val split (the baselines alone, scored the same
    way) and applied to ``split``; overall it is that choice per timeframe. A folder without a val split
    (all test) chooses on ``split`` itself and says so in ``best_baseline_chosen_on``.

    Args:
        stats: feature statistics to scale with (the model's, `stage1_ds.data.store.model_stats`); None: the
            data folder's own.

    Returns:
        The report: ``best_baseline_chosen_on`` and ``modes.<mode>.timeframes.<tf>`` and
        ``modes.<mode>.overall``, each with every method's errors, ``best_baseline`` (``per_timeframe``
        overall), ``best_baseline_scores`` and ``ratio_to_best_baseline``; per mode also ``masked_share``,
        ``recoverable_share``, ``cross_timeframe_inconsistency`` and (horizon) ``direction``.
    """
    config.validate()
    predict = model_predictor(model) if isinstance(model, Stage1Model) else model
    baselines: dict[str, Predictor] = {
        "linear_interpolation": linear_interpolation,
        "last_close": last_close,
        "cross_timeframe_rules": cross_timeframe_rules,
    }
    datas = load_corpus(data_dir)

    def has(split_name: str) -> bool:
        return not all(d.split(name, split_name).empty for d in datas for name in d.instruments)

    if has("train"):  # an all-test folder has none
        baselines["train_mean"] = train_mean_predictor(data_dir, config, stats=stats)
    chosen_on = "val" if has("val") else split
    if chosen_on != "val":
        log.warning(
            "%s has no val split: the best baseline is chosen on the %s split it is scored on",
            data_dir,
            split,
        )
    report: dict[str, Any] = {"split": split, "best_baseline_chosen_on": chosen_on, "modes": {}}
    for mode in modes:
        scored = _score_mode(
            mode, data_dir, split, config, batches, batch_size, seed, stats, predict, baselines
        )
        choice = (
            scored
            if chosen_on == split
            else _score_mode(
                mode, data_dir, chosen_on, config, batches, batch_size, seed, stats, None, baselines
            )
        )
        timeframes = list(scored.masked)
        best = {tf: _lowest_mse(choice, baselines, tf) for tf in timeframes}
        report["modes"][mode.value] = _entry(scored, best, timeframes)
    return report


def _lowest_mse(scored: ModeScores, baselines: dict[str, Predictor], tf: str) -> str:
    return min(baselines, key=lambda b: scored.scores[b][tf].summary()["mse"])


@dataclass
class ModeScores:
    """What one pass over a split in one masking mode measured (see `_score_mode`)."""

    scores: dict[str, dict[str, Scores]]  # method -> timeframe -> sums
    samples: int
    masked: dict[str, list[int]]  # timeframe -> [masked bars, kept bars]
    recovered: dict[str, int]
    inconsistency: dict[str, list[float]]
    direction: dict[str, list[int]] | None  # horizon mode: timeframe -> [right, scored]
    example: dict[str, Any] | None


def _score_mode(
    mode: MaskingMode,
    data_dir: DataSource,
    split: str,
    config: Config,
    batches: int,
    batch_size: int,
    seed: int,
    stats: dict[str, Any] | None,
    predict: Predictor | None,
    baselines: dict[str, Predictor],
) -> ModeScores:
    """Mask windows of ``split`` in ``mode`` (fixed seed) and score ``predict`` (the model; None: the
    baselines alone) and ``baselines`` on the masked bars of the samples that kept the mode."""
    windows = open_windows(data_dir, split, config.data, seed=seed, stats=stats)
    masking = copy.deepcopy(config.model.masking)
    masking.modes = {mode.value: 1.0}
    data = MaskedWindows(windows, masking, config.model.patch_len, seed=seed)
    size = min(batch_size, len(data))
    sampler = WindowSampler(len(data), size, seed=seed, num_batches=min(batches, max(1, len(data) // size)))
    methods = baselines if predict is None else {"model": predict, **baselines}
    timeframes = [t.value for t in windows.timeframes]
    out = ModeScores(
        scores={m: {tf: Scores() for tf in timeframes} for m in methods},
        samples=0,
        masked={tf: [0, 0] for tf in timeframes},
        recovered={tf: 0 for tf in timeframes},
        inconsistency={},
        direction={tf: [0, 0] for tf in timeframes} if mode == MaskingMode.HORIZON else None,
        example=None,
    )
    for ids in sampler:
        batch = data.batch(np.asarray(ids))
        assert batch.mask_mode is not None
        rows = batch.mask_mode == MODES.index(mode)  # samples that fell back to spans are left out
        out.samples += int(rows.sum())
        exact = recoverable(batch)
        for tf in timeframes:
            window = batch.windows[tf]
            kept = window.valid & rows[:, None]
            out.masked[tf][0] += int((window.mask & kept).sum())  # type: ignore[operator]
            out.masked[tf][1] += int(kept.sum())
            out.recovered[tf] += int((torch.from_numpy(exact[tf]) & kept).sum())
        for method, fn in methods.items():
            preds = fn(batch)
            for tf in timeframes:
                out.scores[method][tf].add(preds[tf], batch, tf, rows)
            if out.example is not None and out.example["batch"] is batch:
                out.example["preds"][method] = preds
            if method != "model":
                continue
            for tf, term in cross_timeframe_terms(preds, batch).items():
                if term.count > 0:
                    out.inconsistency.setdefault(tf, []).append(float(term.value))
            if out.direction is not None:
                for tf in timeframes:
                    right, scored = _direction(preds[tf], batch, tf, rows)
                    out.direction[tf][0] += right
                    out.direction[tf][1] += scored
            if out.example is None and bool(rows.any()):
                chosen = choose_example(batch, rows.numpy(), seed)  # legible, and it follows the seed
                assert chosen is not None
                instrument = windows.instruments[int(batch.instrument[chosen])]
                out.example = {
                    "batch": batch,
                    "preds": {"model": preds},
                    "sample": chosen,
                    "instrument": instrument,
                    "volume_unit": volume_unit_of(windows, instrument),
                }
    return out


def _entry(scored: ModeScores, best: dict[str, str], timeframes: list[str]) -> dict[str, Any]:
    """The report of one mode: errors per timeframe and overall with the model's ratios to each baseline
    and to ``best`` (per timeframe; overall, those choices together), shares, inconsistency, direction."""
    scores = scored.scores
    entry: dict[str, Any] = {"samples": scored.samples, "timeframes": {}}
    for tf in timeframes:
        summary = {m: scores[m][tf].summary() for m in scores}
        entry["timeframes"][tf] = _with_ratios(summary, best[tf], summary[best[tf]])
    overall = {m: _sum(scores[m][tf] for tf in timeframes).summary() for m in scores}
    composite = _sum(scores[best[tf]][tf] for tf in timeframes).summary()
    entry["overall"] = _with_ratios(overall, "per_timeframe", composite)
    masked = scored.masked
    entry["masked_share"] = {tf: m / max(k, 1) for tf, (m, k) in masked.items()}
    entry["recoverable_share"] = {tf: scored.recovered[tf] / max(masked[tf][0], 1) for tf in timeframes}
    entry["cross_timeframe_inconsistency"] = {tf: float(np.mean(v)) for tf, v in scored.inconsistency.items()}
    if scored.direction is not None:
        entry["direction"] = {}
        for tf, (right, n) in scored.direction.items():
            low, high = wilson_interval(right, n)
            entry["direction"][tf] = {
                "accuracy": right / n if n else float("nan"),
                "low": low,
                "high": high,
                "n": n,
            }
    if scored.example is not None:
        example, mode = (
            scored.example,
            MODES[int(scored.example["batch"].mask_mode[scored.example["sample"]])],
        )
        preds = example["preds"]
        entry["example"] = example_window(
            example["batch"],
            example["sample"],
            preds["model"],
            {tf: preds[best[tf]][tf] for tf in timeframes},
            best,
            example["instrument"],
            mode.value,
            volume_unit=example["volume_unit"],
        )
    return entry


def _direction(pred: torch.Tensor, batch: Batch, tf: str, rows: torch.Tensor) -> tuple[int, int]:
    """Of the samples whose last ``tf`` bar is masked and whose price moved: how often the predicted last
    close lies on the same side of the last visible close (the reference price, feature 0) as the true."""
    window = batch.windows[tf]
    assert window.mask is not None
    truth = torch.sign(window.features[:, -1, 3])
    guess = torch.sign(pred[:, -1, 3].float())
    scored = window.mask[:, -1] & window.valid[:, -1] & rows & (truth != 0)
    return int(((truth == guess) & scored).sum()), int(scored.sum())


def _sum(parts: Any) -> Scores:
    total = Scores()
    for part in parts:
        total = total.merged(part)
    return total


def _with_ratios(
    entry: dict[str, dict[str, float]], best: str, best_scores: dict[str, float]
) -> dict[str, Any]:
    baselines = [b for b in BASELINES if b in entry]  # train_mean is absent without a train split
    model_mse = entry["model"]["mse"]

    def ratio(mse: float) -> float:
        return model_mse / mse if mse > 0 else float("nan")

    return {
        **entry,
        "best_baseline": best,
        "best_baseline_scores": best_scores,
        "ratio_to_best_baseline": ratio(best_scores["mse"]),
        "ratio_to": {b: ratio(entry[b]["mse"]) for b in baselines},
    }


def format_report(report: dict[str, Any]) -> str:
    """A plain-text table per mode: MSE of each method, the model in bps, and model / best baseline."""
    lines = [
        f"split {report['split']}: masked bars only; MSE in feature units, RMSE in basis points; the best "
        f"baseline chosen per timeframe on the {report['best_baseline_chosen_on']} split"
    ]
    short = {
        "linear_interpolation": "interp",
        "last_close": "last",
        "train_mean": "mean",
        "cross_timeframe_rules": "rules",
        "per_timeframe": "per tf",
    }
    for mode, entry in report["modes"].items():
        lines.append(f"mode {mode}: {entry['samples']} windows")
        lines.append(
            f"{'timeframe':<10}{'masked':>8}{'model':>9}"
            + "".join(f"{short[b]:>9}" for b in BASELINES)
            + f"{'model bps':>11}{'best':>8}{'model/best':>11}"
        )
        rows = [*entry["timeframes"].items(), ("overall", entry["overall"])]
        for tf, e in rows:
            share = entry["masked_share"].get(tf)
            lines.append(
                f"{tf:<10}{'' if share is None else f'{share:.2f}':>8}{e['model']['mse']:>9.4f}"
                + "".join(f"{e[b]['mse']:>9.4f}" if b in e else f"{'-':>9}" for b in BASELINES)
                + f"{e['model']['rmse_bps']:>11.2f}{short[e['best_baseline']]:>8}{e['ratio_to_best_baseline']:>11.3f}"
            )
        if "volume_mse" in entry["overall"]["model"]:
            methods = ["model", *(b for b in BASELINES if b in entry["overall"])]
            lines.append("volume MSE on masked bars (feature units):")
            lines.append(f"{'timeframe':<10}" + "".join(f"{short.get(m, m):>9}" for m in methods))
            for tf, e in rows:
                lines.append(
                    f"{tf:<10}"
                    + "".join(
                        f"{e[m]['volume_mse']:>9.4f}" if "volume_mse" in e[m] else f"{'-':>9}"
                        for m in methods
                    )
                )
        if "direction" in entry:
            lines.append(
                "direction of the last close vs the last visible one: "
                + ", ".join(
                    f"{tf} {d['accuracy']:.3f} [{d['low']:.3f}, {d['high']:.3f}] n={d['n']}"
                    for tf, d in entry["direction"].items()
                    if d["n"]
                )
            )
    if report.get("in_sample") or report.get("overlap"):
        lines.append(
            "IN-SAMPLE: the scored split is, or overlaps, the model's own training or validation data ("
            + "; ".join([*report.get("in_sample", []), *report.get("overlap", [])])
            + "): these figures say how well it fits what it saw, not how it does on new bars"
        )
    lines.append("verdict (masked bars, model MSE against the best baseline chosen on val):")
    lines += ["  " + mode_verdict(mode, entry) for mode, entry in report["modes"].items()]
    return "\n".join(lines)


def mode_verdict(mode: str, entry: dict[str, Any]) -> str:
    """One sentence per masking mode: better or worse than the best baseline overall, by how much, and on
    how many of the timeframes."""
    ratio = entry["overall"]["ratio_to_best_baseline"]
    ratios = {
        tf: e["ratio_to_best_baseline"]
        for tf, e in entry["timeframes"].items()
        if e["model"]["masked_values"]
    }
    better = [tf for tf, r in ratios.items() if r < 1]
    word = "better than" if ratio < 1 else "worse than" if ratio > 1 else "level with"
    return (
        f"{mode}: the model is {word} the best baseline overall ({ratio:.3f} of its MSE, "
        f"{100 * abs(1 - ratio):.0f}% {'lower' if ratio < 1 else 'higher'}); better on {len(better)} of "
        f"{len(ratios)} timeframes{' (' + ', '.join(better) + ')' if better and len(better) < len(ratios) else ''}"
    )


def evaluation_data(report: dict[str, Any]) -> dict[str, Any]:
    """The report as plain JSON data: everything but each mode's example batch."""
    modes = {m: {k: v for k, v in e.items() if k != "example"} for m, e in report["modes"].items()}
    return {**report, "modes": modes}


def write_report(report: dict[str, Any], json_path: Path | None, figure_path: Path | None) -> None:
    """The JSON report (`evaluation_data`) and per mode two PNGs: errors per timeframe
    (``<figure>_<mode>.png``) and one example window (``<figure>_<mode>_example.png``)."""
    if json_path is not None:
        json_path.write_text(json.dumps(evaluation_data(report), indent=2) + "\n")
    if figure_path is None:
        return
    from matplotlib import pyplot as plt

    for mode, entry in report["modes"].items():
        timeframes = entry["timeframes"]
        errors = {
            tf: {m: v["rmse_bps"] for m, v in e.items() if isinstance(v, dict) and "rmse_bps" in v}
            for tf, e in timeframes.items()
        }
        masked = {tf: e["model"]["masked_values"] // NUM_FEATURES for tf, e in timeframes.items()}
        figure = error_bars_figure(errors, mode, entry["samples"], masked)
        figure.savefig(_mode_path(figure_path, mode), dpi=110)
        plt.close(figure)
        if entry.get("example") is not None:
            window_figure = example_figure(entry["example"])
            window_figure.savefig(_mode_path(figure_path, mode, "_example"), dpi=110)
            plt.close(window_figure)


def _mode_path(figure_path: Path, mode: str, suffix: str = "") -> Path:
    return figure_path.with_name(f"{figure_path.stem}_{mode}{suffix}{figure_path.suffix}")
