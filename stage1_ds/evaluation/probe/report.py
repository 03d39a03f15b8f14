"""The probe's report: scores of each method on test, the printed tables, the JSON and the figure."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from stage1_ds.evaluation.probe.anchors import horizon_steps
from stage1_ds.evaluation.statistics import auc, auc_interval, long_run_variance, wilson_interval
from stage1_ds.evaluation.volatility import SIGN_TARGET, VARIANCE_TARGETS


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


#: How the printed report and the card name a readout of the trained encoder.
READOUT_NAMES = {
    "best_rule_plus_embeddings": "the embeddings",
    "best_rule_plus_forecast": "the future-size head's forecast",
    "best_rule_plus_forecast_and_embeddings": "the head's forecast and the embeddings",
}
DM_CONVENTION = (
    "DM: the Diebold-Mariano statistic (HLN) of a method's squared test errors against best_rule's; "
    "negative: the method's errors are smaller"
)


def declined(report: dict[str, Any], target: str, method: str) -> bool:
    """Whether a nested readout chose no correction on val (its forecast is the rule's own)."""
    return (
        method in report["alphas"].get(target, {})
        and report["alphas"][target][method] is None
        and (method.startswith("best_rule_plus_") and method not in report["components"].get(target, {}))
    )


def readout_verdict(report: dict[str, Any], target: str, method: str = "best_rule_plus_embeddings") -> str:
    """One sentence: what a readout of the trained encoder adds to ``best_rule`` on a variance target, on
    test (better, worse, or no measurable difference at p 0.05, with the MSE change and p), or that it was
    declined on val."""
    rule = report["best_rule"][target]["rule"]
    name = READOUT_NAMES.get(method, method)
    if declined(report, target, method):
        return f"`{target}`: {name} declined on val (no correction: the forecast is `{rule}`'s own)"
    results = report["targets"][target]
    result = results[method]
    gain = 100 * (1 - result["mse"] / results[rule]["mse"])
    p = result["dm_p_vs_best_rule"]
    verdict = "no measurable difference" if not p < 0.05 else ("better" if gain > 0 else "worse")
    return (
        f"`{target}`: {name} on top of `{rule}`: {verdict}, MSE {gain:+.1f}% (positive: better; DM p "
        f"{format_p(p)}, n {result['n']})"
    )


def _dropped(counts: dict[str, int]) -> str:
    parts = [f"{n} {reason.replace('_', ' ')}" for reason, n in counts.items() if n]
    return ", ".join(parts) or "none"


def format_probe(report: dict[str, Any]) -> str:
    """The printed report: the anchors (and what was dropped) once, the DM convention once, a table per
    target (a declined correction marked), then one verdict line per readout."""
    anchors, dropped = report["anchors"], report["anchors_dropped"]
    lines = [
        "probe anchors: "
        + ", ".join(f"{split} {n:,} (dropped: {_dropped(dropped[split])})" for split, n in anchors.items()),
        "test split scores; best_rule chosen per target on val among the rules fitted once and refitted "
        "weekly; " + DM_CONVENTION,
    ]
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
                f"  {'method':<56}{'accuracy':>10}{'95% interval':>18}{'AUC':>8}{'95% interval':>18}{'n':>7}"
            )
            for method, r in results.items():
                accuracy = f"[{r['accuracy_low']:.3f}, {r['accuracy_high']:.3f}]"
                area = f"[{r['auc_low']:.3f}, {r['auc_high']:.3f}]"
                lines.append(
                    f"  {_row_label(report, target, method):<56}{r['accuracy']:>10.3f}{accuracy:>18}"
                    f"{r['auc']:>8.3f}{area:>18}{r['n']:>7}"
                )
        else:
            lines.append(f"  {'method':<56}{'R2':>8}{'MSE':>9}{'QLIKE':>9}{'DM':>8}{'p':>9}{'n':>7}")
            for method, r in results.items():
                lines.append(
                    f"  {_row_label(report, target, method):<56}{r['r2']:>8.3f}{r['mse']:>9.4f}"
                    f"{r['qlike']:>9.4f}{r['dm_stat_vs_best_rule']:>8.2f}{format_p(r['dm_p_vs_best_rule']):>9}"
                    f"{r['n']:>7}"
                )
    lines.append("verdict (test split):")
    for target in report["targets"]:
        if target == SIGN_TARGET:
            continue
        for method in READOUT_NAMES:
            if method in report["targets"][target]:
                lines.append("  " + readout_verdict(report, target, method))
    return "\n".join(lines)


def _row_label(report: dict[str, Any], target: str, method: str) -> str:
    label = method_label(report, target, method)
    return f"{label} (declined on val)" if declined(report, target, method) else label


def report_data(report: dict[str, Any]) -> dict[str, Any]:
    """The report as plain JSON data: everything but the test predictions and val forecasts."""
    return {key: value for key, value in report.items() if key not in ("predictions", "val_predictions")}


def write_probe(report: dict[str, Any], json_path: Path, figure_path: Path | None) -> None:
    """The JSON report (`report_data`) and a PNG (`mse_figure`) of each variance target's test MSE for
    ``best_rule`` and each readout of the trained and the untrained encoder, with 95% intervals."""
    json_path.write_text(json.dumps(report_data(report), indent=2) + "\n")
    if figure_path is None:
        return
    from matplotlib import pyplot as plt

    from stage1_ds.data.figures import MseBar, mse_figure

    panels: dict[str, list[MseBar]] = {}
    for target in VARIANCE_TARGETS:
        values, rule = report["predictions"][target], report["best_rule"][target]["rule"]
        bars = []
        for method in (rule, *READOUT_NAMES):
            for suffix in ("", "_random_init") if method != rule else ("",):
                name = method + suffix
                if name not in values:
                    continue
                errors = (values[name] - values["truth"]) ** 2
                half = 1.96 * math.sqrt(long_run_variance(errors, horizon_steps(target)) / len(errors))
                label = (
                    "best_rule"
                    if name == rule
                    else READOUT_NAMES[method] + (" (untrained)" if suffix else "")
                )
                bars.append(MseBar(label, float(errors.mean()), half, declined(report, target, name)))
        panels[target] = bars
    figure = mse_figure(panels, "test", report["instruments"])
    figure.savefig(figure_path, dpi=110)
    plt.close(figure)
