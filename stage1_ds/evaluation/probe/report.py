"""The probe's report: scores of each method on test, the printed tables, the JSON and the figure."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from stage1_ds.evaluation.statistics import auc, auc_interval, wilson_interval
from stage1_ds.evaluation.volatility import SIGN_TARGET


def variance_scores(truth: np.ndarray, pred: np.ndarray, train_mean: float) -> dict[str, float]:
    """Out-of-sample R^2 (against the train mean), MSE and QLIKE (on variances ``exp(log RV)``), and n."""
    mse = float(np.mean((pred - truth) ** 2))
    ratio = np.exp(truth - pred)  # realised over forecast variance
    return {
        "r2": 1.0 - mse / float(np.mean((train_mean - truth) ** 2)),
        "mse": mse,
        "qlike": float(np.mean(ratio - np.log(ratio) - 1.0)),
        "n": len(truth),
    }


def sign_scores(truth: np.ndarray, score: np.ndarray) -> dict[str, float]:
    """Accuracy and AUC of a direction forecast, each with its 95% interval, and n."""
    right = int(np.sum(np.sign(score) == truth))
    low, high = wilson_interval(right, len(truth))
    area = auc(truth > 0, score)
    area_low, area_high = auc_interval(area, int(np.sum(truth > 0)), int(np.sum(truth < 0)))
    return {
        "accuracy": right / len(truth),
        "accuracy_low": low,
        "accuracy_high": high,
        "auc": area,
        "auc_low": area_low,
        "auc_high": area_high,
        "n": len(truth),
    }


def format_p(p: float) -> str:
    """A p-value for a table; ``-`` where there is none (a method against itself)."""
    return f"{p:.2g}" if np.isfinite(p) else "-"


def method_label(report: dict[str, Any], target: str, method: str) -> str:
    """The method's name, marked when it is the target's ``best_rule``."""
    return f"{method} (best_rule)" if report["best_rule"][target]["rule"] == method else method


def format_probe(report: dict[str, Any]) -> str:
    lines = [f"probe anchors (train/val/test): {report['anchors']}; dropped: {report['anchors_dropped']}"]
    lines.append("test split scores; best_rule chosen per target on val")
    if report.get("fitted_on") == "readout_from":
        lines.append(
            f"train and val (every fit and choice) from --readout-from {' '.join(report['readout_from'])}: "
            "this folder has a test split only"
        )
    market = report.get("market", {})
    shares = market.get("present", {}).get("test", {})
    others = {name: share for name, share in shares.items() if share > 0}
    if others:
        present = ", ".join(f"{name} {share:.0%}" for name, share in others.items())
        lines.append(f"market (the market rules' other instruments, present on test anchors): {present}")
    for target, results in report["targets"].items():
        lines.append(f"{target}:")
        if target == SIGN_TARGET:
            lines.append(
                f"  {'method':<46}{'accuracy':>10}{'95% interval':>18}{'AUC':>8}{'95% interval':>18}{'n':>7}"
            )
            for method, r in results.items():
                accuracy = f"[{r['accuracy_low']:.3f}, {r['accuracy_high']:.3f}]"
                area = f"[{r['auc_low']:.3f}, {r['auc_high']:.3f}]"
                lines.append(
                    f"  {method_label(report, target, method):<46}{r['accuracy']:>10.3f}{accuracy:>18}"
                    f"{r['auc']:>8.3f}{area:>18}{r['n']:>7}"
                )
        else:
            lines.append(
                f"  {'method':<46}{'R2':>8}{'MSE':>9}{'QLIKE':>9}{'DM vs best_rule':>17}{'p':>9}{'n':>7}"
            )
            for method, r in results.items():
                lines.append(
                    f"  {method_label(report, target, method):<46}{r['r2']:>8.3f}{r['mse']:>9.4f}"
                    f"{r['qlike']:>9.4f}{r['dm_stat_vs_best_rule']:>17.2f}{format_p(r['dm_p_vs_best_rule']):>9}"
                    f"{r['n']:>7}"
                )
    return "\n".join(lines)


def report_data(report: dict[str, Any]) -> dict[str, Any]:
    """The report as plain JSON data: everything but the test predictions and val forecasts."""
    return {key: value for key, value in report.items() if key not in ("predictions", "val_predictions")}


def write_probe(report: dict[str, Any], json_path: Path, figure_path: Path | None) -> None:
    """The JSON report (`report_data`) and a PNG of predicted against realised log variance
    (``rv_60m``, test split) for ``best_rule`` and ``best_rule_plus_embeddings``."""
    json_path.write_text(json.dumps(report_data(report), indent=2) + "\n")
    if figure_path is None:
        return
    from matplotlib import pyplot as plt

    from stage1_ds.data.figures import ScatterPanel, probe_scatter_figure

    values = report["predictions"]["rv_60m"]
    best = report["best_rule"]["rv_60m"]["rule"]
    panels = [
        ScatterPanel(
            method="best_rule" if method == best else method,
            label=method_label(report, "rv_60m", method),
            predicted=values[method],
            realised=values["truth"],
            r2=report["targets"]["rv_60m"][method]["r2"],
        )
        for method in (best, "best_rule_plus_embeddings")
    ]
    figure = probe_scatter_figure(
        panels, "test", report["instruments"], "rv_60m (log realised variance, next 60 min)"
    )
    figure.savefig(figure_path, dpi=110)
    plt.close(figure)
