"""The budget ladder (``--experiment ladder``): does pretraining longer make the encoder worth more, and
with which pretraining signal?

Options read: ``data`` (ROOT), ``out`` (WORK), ``steps`` (the rungs; default `LADDER_STEPS`), ``signals``
(train the missing rungs of these only), ``held_out``, ``trained``, ``max_anchors``, ``batches``,
``overrides``. ROOT holds one prepared folder per instrument (`stage1_ds.experiments.harness.
instrument_folders`). For each signal of `SIGNALS` and each step count, a model of `LADDER_CONFIG` (its
overrides below) is trained from scratch on every folder but the held-out instruments', served as one
corpus, then converted and measured on the test split of the trained-on instrument (EURUSD) and of each
held-out one (never seen; features scaled with its own train split's statistics):

- each readout's gain over ``best_rule`` (the best of the rules fitted once and refitted as time rolls,
  chosen on val; `stage1_ds.evaluation.probe`): the test MSE reduction in percent (positive: the encoder
  helps) with its Diebold-Mariano p, and the val MSE reduction with its standard error over the val
  anchors (paired with the rule's, overlapping horizons counted), on ``rv_60m`` and ``rv_240m``: the
  embeddings' nested correction, the future-size head's forecasts and both (models with the head), the
  frozen correction and the principal components, and the untrained encoder's twins;
- per cell the best of `CANDIDATE_READOUTS`, chosen on val;
- how much refitting alone moves the rule: the best refitted rule against the best rule fitted once;
- `time`-mode reconstruction per timeframe against the best baseline (chosen on val), on the trained-on
  instrument.

The signal is chosen on VAL at `CHOICE_STEPS` steps (`choose_signal`). Every rung's measurements are
written to ``WORK/ladder/<signal>_<steps>.json`` and read back by a later run instead of measuring again; a
model trained before (its export and run record in WORK) is measured without training again, so the
ladder can be climbed over several sittings and its models trained apart from its measurements.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from stage1_ds.config import MaskingMode
from stage1_ds.data.store import load_prepared, model_stats
from stage1_ds.evaluation.probe import format_p, horizon_steps, probe
from stage1_ds.evaluation.reconstruction import evaluate
from stage1_ds.evaluation.statistics import long_run_variance, mse_gain
from stage1_ds.evaluation.volatility import VARIANCE_TARGETS
from stage1_ds.experiments.harness import (
    TRAINED_SCORED,
    TRANSFER_HELD_OUT,
    Experiment,
    Options,
    Run,
    trained_run,
    training_corpus,
)
from stage1_ds.experiments.main import versions
from stage1_ds.model.stage1 import Stage1Model, load_export_config, load_export_stats

log = logging.getLogger(__name__)

LADDER_CONFIG = "configs/pretrain_fx_cpu.yaml"
#: Every rung: 32-bar windows (the config's otherwise).
LADDER_OVERRIDES = ["data.window_bars=32"]
LADDER_STEPS = (2000, 8000, 32000)
_FUTURE = ["data.future_minutes=[60, 240]", "model.loss.future_weight=1.0"]
_NO_FUTURE = ["data.future_minutes=[]", "model.loss.future_weight=0.0"]
#: The pretraining signals: the reconstruction objective alone, with the masked bars' log-range term, with
#: the future-size term (a head predicting the log range of the bars after the anchor at the probe's two
#: horizons), the same head at four horizons (a quarter hour to a day: the probe's two among them), and
#: with both terms. Each names every key of both terms, whatever `LADDER_CONFIG` has (its default is the
#: chosen signal, future, since 2026-12-06).
SIGNALS = {
    "reconstruction": ["model.loss.range_weight=0.0", *_NO_FUTURE],
    "range": ["model.loss.range_weight=1.0", *_NO_FUTURE],
    "future": ["model.loss.range_weight=0.0", *_FUTURE],
    "future_horizons": [
        "model.loss.range_weight=0.0",
        "data.future_minutes=[15, 60, 240, 1440]",
        "model.loss.future_weight=1.0",
    ],
    "future_range": ["model.loss.range_weight=1.0", *_FUTURE],
}
#: What a signal costs beside the reconstruction objective (more terms, more heads, more targets): of two
#: signals within two standard errors on val, the cheaper is preferred.
COST = {"reconstruction": 0, "range": 1, "future": 2, "future_horizons": 3, "future_range": 4}
#: The rung at which the signal is chosen (on val).
CHOICE_STEPS = 8000
#: Readouts of the probe read per rung: (key in the rung's JSON, probe method); absent ones are skipped
#: (the forecast readouts of a model without the future-size head, the frozen one of a rule fitted once).
READOUTS = {
    "nested": "best_rule_plus_embeddings",
    "nested_untrained": "best_rule_plus_embeddings_random_init",
    "frozen": "best_rule_plus_embeddings_frozen",
    "pca": "best_rule_plus_embeddings_pca",
    "forecast": "best_rule_plus_forecast",
    "forecast_untrained": "best_rule_plus_forecast_random_init",
    "forecast_and_embeddings": "best_rule_plus_forecast_and_embeddings",
    "forecast_and_embeddings_untrained": "best_rule_plus_forecast_and_embeddings_random_init",
}
#: The readouts a cell's best is chosen among, on val: the embeddings, the head's forecasts, both.
CANDIDATE_READOUTS = ("nested", "forecast", "forecast_and_embeddings")


def gain_cells(
    report: dict[str, Any], readouts: dict[str, str], keep_losses: bool = False
) -> dict[str, dict[str, Any]]:
    """Per variance target of a probe report (with its val forecasts): the rule chosen on val (and its test
    R^2), what the refit alone gains over the rule fitted once, and per readout present (key: probe method)
    its test MSE gain over the rule in percent with the DM p, and its val gain with the standard error of
    the paired val losses; ``best``: the readout of `CANDIDATE_READOUTS` of highest val gain. With
    ``keep_losses``, ``val_losses``: the squared val errors of the rule and of the best readout per anchor
    (what two signals' val gains are compared by, anchor by anchor: `choose_signal`)."""
    cells = {}
    for target in VARIANCE_TARGETS:
        best = report["best_rule"][target]["rule"]
        results, val = report["targets"][target], report["val_predictions"][target]
        rule_loss = (val[best] - val["truth"]) ** 2
        cell: dict[str, Any] = {"best_rule": best, "best_rule_r2": results[best]["r2"]}
        if "refit" in report["best_rule"][target]:
            cell["refit"] = report["best_rule"][target]["refit"]
        for key, method in readouts.items():
            if method not in results:
                continue
            val_gain, val_se = mse_gain((val[method] - val["truth"]) ** 2, rule_loss, horizon_steps(target))
            cell[key] = {
                "gain": 100 * (1 - results[method]["mse"] / results[best]["mse"]),
                "p": results[method]["dm_p_vs_best_rule"],
                "val_gain": val_gain,
                "val_se": val_se,
            }
        chosen = max((k for k in CANDIDATE_READOUTS if k in cell), key=lambda k: cell[k]["val_gain"])
        cell["best"] = {"readout": chosen, **cell[chosen]}
        if keep_losses:
            best_loss = (val[readouts[chosen]] - val["truth"]) ** 2
            cell["val_losses"] = {
                "rule": [float(f"{v:.6g}") for v in rule_loss],
                "best": [float(f"{v:.6g}") for v in best_loss],
            }
        cells[target] = cell
    return cells


def measure_rung(
    run: Run, folders: dict[str, Path], scored: list[str], max_anchors: int | None, batches: int
) -> dict[str, Any]:
    """The rung's probe gains per scored instrument and target, and its `time`-mode reconstruction ratios
    on the first scored instrument (see the module docstring)."""
    model = Stage1Model.from_pretrained(run.export)
    untrained = Stage1Model.untrained_like(run.export)
    exported = load_export_stats(run.export)
    instruments: dict[str, Any] = {}
    stats = {name: model_stats(exported, load_prepared(folders[name]), allow_other=False) for name in scored}
    for name in scored:
        report = probe(model, untrained, folders[name], max_anchors, stats=stats[name])
        instruments[name] = {"anchors": report["anchors"], **gain_cells(report, READOUTS, keep_losses=True)}
    first = scored[0]
    config = load_export_config(run.export)
    evaluation = evaluate(
        model, folders[first], config, "test", batches, modes=(MaskingMode.TIME,), stats=stats[first]
    )
    time_mode = {
        tf: entry["ratio_to_best_baseline"]
        for tf, entry in evaluation["modes"][MaskingMode.TIME.value]["timeframes"].items()
    }
    return {
        **run.record(),
        "instruments": instruments,
        "time_mode": {"instrument": first, "ratios": time_mode},
    }


def climb(
    root: Path,
    work: Path,
    steps: tuple[int, ...] = LADDER_STEPS,
    held_out: tuple[str, ...] = TRANSFER_HELD_OUT,
    max_anchors: int | None = None,
    batches: int = 20,
    overrides: list[str] | None = None,
    signals: dict[str, list[str]] | None = None,
    base: str = LADDER_CONFIG,
    trained: str = TRAINED_SCORED,
    train_signals: tuple[str, ...] | None = None,
) -> dict[str, dict[int, dict[str, Any]]]:
    """Train (or read back) and measure every rung not measured yet (``work/ladder/<signal>_<steps>.json``),
    one after another; returns every rung's measurements by signal and steps.

    Args:
        trained: the instrument of the training corpus that every rung is scored on too.
        train_signals: measure missing rungs of these signals only (None: every signal; empty: none, the
            report of what is measured); the others' rungs are read back where measured and left out where
            not (a ladder climbed a signal at a time).

    Raises:
        ValueError: a held-out instrument, or ``trained``, has no folder under ``root``.
    """
    folders, corpus = training_corpus(root, held_out, trained)
    work, scored = Path(work), [trained, *held_out]
    measured = work / "ladder"
    measured.mkdir(parents=True, exist_ok=True)
    rungs: dict[str, dict[int, dict[str, Any]]] = {}
    for signal, extra in (signals or SIGNALS).items():
        for count in steps:
            path = measured / f"{signal}_{count}.json"
            if path.is_file():
                log.info("ladder: %s at %d steps measured before: %s", signal, count, path)
            elif train_signals is not None and signal not in train_signals:
                log.info("ladder: %s at %d steps not measured yet (not in this run's signals)", signal, count)
                continue
            else:
                plan = [*LADDER_OVERRIDES, *(overrides or []), *extra]
                run = trained_run(f"ladder_{signal}_{count}", plan, count, corpus, work, base)
                rung = measure_rung(run, folders, scored, max_anchors, batches)
                path.write_text(json.dumps(rung, indent=2) + "\n")
            rungs.setdefault(signal, {})[count] = json.loads(path.read_text())
    return rungs


def mean_gain(rung: dict[str, Any], target: str, readout: str, key: str = "gain") -> float:
    """The mean over the rung's scored instruments of a readout's gain (or ``val_gain``) on ``target``."""
    return float(np.mean([cells[target][readout][key] for cells in rung["instruments"].values()]))


def val_score(rung: dict[str, Any]) -> tuple[float, float]:
    """What a signal is chosen by: the mean over the scored instruments and both targets of the best
    readout's val gain (percent), and its standard error. An instrument's two targets share anchors, so
    their errors are taken as moving together (their standard errors averaged, not pooled): conservative."""
    cells = [cells for cells in rung["instruments"].values()]
    gains = [c[t]["best"]["val_gain"] for c in cells for t in VARIANCE_TARGETS]
    per_instrument = [np.mean([c[t]["best"]["val_se"] for t in VARIANCE_TARGETS]) for c in cells]
    return float(np.mean(gains)), float(math.sqrt(sum(s * s for s in per_instrument)) / len(cells))


def paired_difference(a: dict[str, Any], b: dict[str, Any]) -> tuple[float, float]:
    """How much higher signal ``a``'s `val_score` is than ``b``'s, and the standard error of that
    difference from the val anchors themselves (both rungs' ``val_losses``: the same anchors, the same
    rule): per anchor, the two best readouts' squared errors apart, in percent of the rule's MSE, averaged
    over the two targets; per instrument the mean and its long-run variance (overlapping horizons); the
    instruments independent."""
    means, variances = [], []
    for name, cells in a["instruments"].items():
        parts = []
        for target in VARIANCE_TARGETS:
            ours, theirs = cells[target]["val_losses"], b["instruments"][name][target]["val_losses"]
            rule = np.asarray(ours["rule"])
            if len(rule) != len(theirs["rule"]):
                raise ValueError(f"{name} {target}: the two rungs were scored on different val anchors")
            parts.append(100 * (np.asarray(theirs["best"]) - np.asarray(ours["best"])) / rule.mean())
        per_anchor = np.mean(parts, axis=0)
        means.append(float(per_anchor.mean()))
        horizon = max(horizon_steps(t) for t in VARIANCE_TARGETS)
        variances.append(long_run_variance(per_anchor, horizon) / len(per_anchor))
    return float(np.mean(means)), float(math.sqrt(sum(variances)) / len(means))


def has_losses(rung: dict[str, Any]) -> bool:
    return all("val_losses" in c[t] for c in rung["instruments"].values() for t in VARIANCE_TARGETS)


def choose_signal(rungs: dict[str, dict[int, dict[str, Any]]], at: int = CHOICE_STEPS) -> dict[str, Any]:
    """The signal chosen on val at ``at`` steps among the signals measured there (where none is, at the most
    steps every signal has): the highest `val_score`, unless another signal is within two standard errors
    of it, in which case the cheapest (`COST`) of those. The standard error of a difference is the paired
    one over the val anchors (`paired_difference`) where the rungs kept their val losses, else that of two
    independent scores (larger). Returns ``chosen``, ``at``, each signal's ``scores`` (mean, se), the
    ``differences`` from the highest (difference, se, paired or not) and the signals ``close`` to it."""
    having = [signal for signal, by_steps in rungs.items() if at in by_steps]
    if not having:
        having, at = list(rungs), max(set.intersection(*(set(r) for r in rungs.values())))
    scores = {signal: val_score(rungs[signal][at]) for signal in having}
    top = max(scores, key=lambda s: scores[s][0])
    differences: dict[str, tuple[float, float, bool]] = {}
    for signal in having:
        if signal == top:
            continue
        if has_losses(rungs[top][at]) and has_losses(rungs[signal][at]):
            differences[signal] = (*paired_difference(rungs[top][at], rungs[signal][at]), True)
        else:
            gap = scores[top][0] - scores[signal][0]
            differences[signal] = (gap, math.hypot(scores[top][1], scores[signal][1]), False)
    close = [top, *(s for s, (d, e, _) in differences.items() if d <= 2 * e)]
    chosen = min(close, key=lambda s: COST.get(s, len(COST)))
    return {"chosen": chosen, "at": at, "scores": scores, "differences": differences, "close": close}


def without_losses(rung: dict[str, Any]) -> dict[str, Any]:
    """A rung as the report keeps it: the per-anchor val losses left out (they stay in WORK)."""
    return {
        **rung,
        "instruments": {
            name: {
                key: (
                    {k: v for k, v in cell.items() if k != "val_losses"} if isinstance(cell, dict) else cell
                )
                for key, cell in cells.items()
            }
            for name, cells in rung["instruments"].items()
        },
    }


def gain_per_doubling(by_steps: dict[int, dict[str, Any]], target: str, readout: str = "best") -> float:
    """The least-squares slope of the mean test gain of ``readout`` (points of MSE %) against log2(steps);
    nan with fewer than two rungs."""
    if len(by_steps) < 2:
        return float("nan")
    x = np.log2(np.array(list(by_steps), dtype=float))
    y = np.array([mean_gain(r, target, readout) for r in by_steps.values()])
    return float(np.polyfit(x, y, 1)[0])


def measure(options: Options) -> dict[str, Any]:
    """Climb the ladder (`climb`) with the options (see the module docstring); the rungs by signal and
    steps (keys as strings: JSON's), with what the report says of them."""
    steps = tuple(options.steps or LADDER_STEPS)
    rungs = climb(
        options.data,
        options.out,
        steps,
        tuple(options.held_out),
        options.max_anchors,
        options.batches,
        options.overrides,
        trained=options.trained,
        train_signals=() if options.read_only else tuple(options.signals) or None,
    )
    return {
        "root": str(options.data),
        "planned": list(steps),
        "machine": versions()["machine"],
        "choice": choose_signal(rungs, CHOICE_STEPS),
        "rungs": {
            signal: {str(n): without_losses(rung) for n, rung in by_steps.items()}
            for signal, by_steps in rungs.items()
        },
    }


def rungs_of(results: dict[str, Any]) -> dict[str, dict[int, dict[str, Any]]]:
    """The measured rungs of `measure`'s results by signal and (integer) steps."""
    return {signal: {int(n): r for n, r in by_steps.items()} for signal, by_steps in results["rungs"].items()}


def render(results: dict[str, Any]) -> str:
    """The ladder's report from `measure`'s results (`ladder_page`)."""
    return ladder_page(
        rungs_of(results),
        results["choice"],
        results["root"],
        f"{EXPERIMENT.name}.png",
        results.get("command", "scripts/quality_report.py --experiment ladder"),
        tuple(results["planned"]),
        results["machine"],
    )


def figure(results: dict[str, Any], path: Path) -> None:
    """The ladder's figure from `measure`'s results (`ladder_figure`)."""
    ladder_figure(rungs_of(results), path)


def ladder_figure(rungs: dict[str, dict[int, dict[str, Any]]], path: Path) -> None:
    """Test gain of each cell's best readout against steps (log x), one line per instrument and signal, a
    panel per target; the untrained encoder's nested gain dotted."""
    from matplotlib import pyplot as plt

    targets = list(VARIANCE_TARGETS)
    figure, axes = plt.subplots(1, len(targets), figsize=(6 * len(targets), 4.2), squeeze=False)
    styles = dict(zip(rungs, ("-", "--", "-.", ":"), strict=False))
    names = list(next(iter(next(iter(rungs.values())).values()))["instruments"])
    colours = {name: plt.get_cmap("tab10")(k) for k, name in enumerate(names)}
    for ax, target in zip(axes[0], targets, strict=True):
        for signal, by_steps in rungs.items():
            steps = sorted(by_steps)
            for name in names:
                gains = [by_steps[s]["instruments"][name][target]["best"]["gain"] for s in steps]
                ax.plot(
                    steps, gains, styles[signal], marker="o", color=colours[name], label=f"{name}, {signal}"
                )
        first = next(iter(rungs.values()))
        for name in names:
            untrained = np.mean(
                [r["instruments"][name][target]["nested_untrained"]["gain"] for r in first.values()]
            )
            ax.axhline(untrained, color=colours[name], linestyle=":", linewidth=1)
        ax.axhline(0.0, color="black", linewidth=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("pretraining steps (log)")
        ax.set_ylabel("test MSE reduction over best_rule, %")
        ax.set_title(f"{target}: rule + the best readout (chosen on val); dotted: untrained")
    axes[0][0].legend(fontsize=7, loc="best")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _cell_text(cell: dict[str, Any]) -> str:
    best = cell["best"]
    untrained = cell.get(f"{best['readout']}_untrained", cell["nested_untrained"])
    return (
        f"{best['gain']:+.1f} ({format_p(best['p'])}) {best['readout']} / {untrained['gain']:+.1f} / "
        f"{cell['nested']['gain']:+.1f}"
    )


def ladder_page(
    rungs: dict[str, dict[int, dict[str, Any]]],
    choice: dict[str, Any],
    root: str,
    figure: str | None,
    command: str,
    planned: tuple[int, ...] = LADDER_STEPS,
    machine: str = "",
) -> str:
    """The ladder's report from the measured rungs (signals may have climbed to different rungs) and the
    choice made on val (`choose_signal`)."""
    chosen, at, close = choice["chosen"], choice["at"], choice["close"]
    names = list(next(iter(next(iter(rungs.values())).values()))["instruments"])
    measured = sorted({s for by_steps in rungs.values() for s in by_steps})
    lines = [
        f"# {EXPERIMENT.title}",
        "",
        f"Generated by `{command}`. Every rung is `{LADDER_CONFIG}` with "
        + " ".join(f"`{o}`" for o in LADDER_OVERRIDES)
        + " and its signal's overrides (frozen for 10% of the steps, LoRA to a third, then full), trained from "
        f"scratch on the instrument folders under `{root}` except the held-out {', '.join(names[1:])}, on "
        f"{machine}, one run at a time. Each is probed on the test split of {names[0]} (trained on) and of "
        "each held-out instrument (its features scaled from its own train split). Gain: the test MSE "
        "reduction of `best_rule` plus a readout (a correction nested in the rule: penalty chosen on val, no "
        "correction allowed) over `best_rule` itself, in percent (positive: better), with its "
        "Diebold-Mariano p (HLN). `best_rule` is the best, on val, of the rules fitted once and refitted "
        "every week as time rolls. A cell shows the best readout on val (`nested`: the embeddings; "
        "`forecast`: the future-size head's own forecasts; `forecast_and_embeddings`: both), then the same "
        "readout of the untrained encoder, then the embeddings' nested readout. "
        f"Rungs measured: {', '.join(f'{s:,}' for s in measured)} steps"
        + (
            f" (planned: {', '.join(f'{s:,}' for s in planned)}; the missing rungs are not yet run)."
            if set(planned) - set(measured)
            else "."
        ),
        "",
    ]
    if figure is not None:
        lines += [f"![Gain against steps]({figure})", ""]
    for target in VARIANCE_TARGETS:
        lines += [
            f"**`{target}`**, test gain % (p) best readout / untrained / embeddings nested:",
            "",
            "| signal | steps | minutes | val loss | " + " | ".join(names) + " | mean (best) |",
            "|---|---|---|---|" + "---|" * (len(names) + 1),
        ]
        for signal, by_steps in rungs.items():
            for count in sorted(by_steps):
                rung = by_steps[count]
                cells = [_cell_text(rung["instruments"][name][target]) for name in names]
                lines.append(
                    f"| {signal} | {count:,} | {rung['minutes']:.1f} | {rung['val_loss']:.4f} | "
                    + " | ".join(cells)
                    + f" | {mean_gain(rung, target, 'best'):+.2f} |"
                )
        lines.append("")
    first = next(iter(next(iter(rungs.values())).values()))
    lines += [
        "What refitting alone moves (the same in every rung): the best rule refitted as time rolls "
        "against the best rule fitted once, test MSE gain % (DM p); `best_rule` as chosen on val:",
        "",
    ]
    for name in names:
        parts = []
        for target in VARIANCE_TARGETS:
            cell = first["instruments"][name][target]
            refit = cell.get("refit")
            parts.append(
                f"`{target}` {cell['best_rule']}"
                + (
                    f" (refit {refit['gain']:+.1f}%, p {format_p(refit['p'])}, over `{refit['best_fixed']}`)"
                    if refit
                    else ""
                )
            )
        lines.append(f"- {name}: " + "; ".join(parts) + ".")
    timeframes = list(first["time_mode"]["ratios"])
    lines += [
        "",
        f"`time`-mode reconstruction on {names[0]}, model / best baseline (chosen on val) per timeframe:",
        "",
        "| signal | steps | " + " | ".join(timeframes) + " |",
        "|---|---|" + "---|" * len(timeframes),
    ]
    for signal, by_steps in rungs.items():
        for count in sorted(by_steps):
            ratios = by_steps[count]["time_mode"]["ratios"]
            lines.append(
                f"| {signal} | {count:,} | " + " | ".join(f"{ratios[tf]:.3f}" for tf in timeframes) + " |"
            )
    scores, differences = choice["scores"], choice["differences"]
    top = close[0]
    lines += [
        "",
        "Slope, the mean test gain of the best readout over the scored instruments per doubling of steps "
        "(least squares on log2 steps): "
        + "; ".join(
            f"{signal}: "
            + (
                ", ".join(f"`{t}` {gain_per_doubling(by_steps, t):+.2f} points" for t in VARIANCE_TARGETS)
                if len(by_steps) > 1
                else "one rung, no slope"
            )
            for signal, by_steps in rungs.items()
        )
        + ".",
        "",
        f"Signal chosen on val at {at:,} steps: the mean over instruments and both targets of the best "
        "readout's val gain, with its standard error over the val anchors ("
        + ", ".join(f"{s} {m:+.2f}% ± {e:.2f}" for s, (m, e) in scores.items())
        + f"). The highest, {top}, against each other signal, the difference with its standard error ("
        + "; ".join(
            f"{s}: {d:+.2f} ± {e:.2f}, {'paired over the same val anchors' if paired else 'unpaired'}"
            for s, (d, e, paired) in differences.items()
        )
        + f"): **{chosen}**"
        + (
            f", the cheapest of {', '.join(close)}, which are within two standard errors of the highest."
            if len(close) > 1
            else ", clear of the others by more than two standard errors."
        ),
        "",
        "## Targets, as measured (the chosen signal, its largest rung)",
        "",
        *ladder_verdicts(rungs, chosen),
        "",
        "",
    ]
    return "\n".join(lines)


def ladder_verdicts(rungs: dict[str, dict[int, dict[str, Any]]], chosen: str) -> list[str]:
    """The issue's targets for the ladder, met or missed, with their figures."""
    by_steps = rungs[chosen]
    top = max(by_steps)
    rung = by_steps[top]
    lines = []
    for target in VARIANCE_TARGETS:
        for name, cells in rung["instruments"].items():
            best = cells[target]["best"]
            met = best["gain"] >= 5 and best["p"] < 0.05
            lines.append(
                f"- {name}, `{target}`, {top:,} steps: the best readout ({best['readout']}) beats `best_rule` "
                f"by at least 5% MSE at p < 0.05: {'met' if met else 'missed'} ({best['gain']:+.1f}%, p "
                f"{format_p(best['p'])}; moonshot 10%)."
            )
    for name, cells in rung["instruments"].items():
        best = cells["rv_60m"]["best"]
        untrained = cells["rv_60m"].get(f"{best['readout']}_untrained", cells["rv_60m"]["nested_untrained"])
        met = best["gain"] > 0 and best["gain"] >= 2 * max(untrained["gain"], 0.0)
        lines.append(
            f"- {name}, `rv_60m`: the trained encoder's gain at least twice the untrained one's: "
            f"{'met' if met else 'missed'} ({best['gain']:+.1f}% vs {untrained['gain']:+.1f}%)."
        )
    slope = gain_per_doubling(by_steps, "rv_60m")
    lines.append(
        "- The gain rises at least a point per doubling of steps (mean over instruments, `rv_60m`): "
        + (
            "not measurable with one rung."
            if math.isnan(slope)
            else f"{'met' if slope >= 1 else 'missed'} ({slope:+.2f} points per doubling over "
            f"{', '.join(f'{s:,}' for s in sorted(by_steps))} steps)."
        )
    )
    ratios = rung["time_mode"]["ratios"]
    worst = max(ratios, key=lambda tf: ratios[tf])
    lines.append(
        f"- `time`-mode reconstruction at most 0.85 of the best baseline on every timeframe at {top:,} steps "
        f"({rung['time_mode']['instrument']}): {'met' if ratios[worst] <= 0.85 else 'missed'} (worst {worst}: "
        f"{ratios[worst]:.3f})."
    )
    return lines


EXPERIMENT = Experiment(
    name="ladder",
    title="The budget ladder: what more pretraining buys",
    measure=measure,
    render=render,
    figure=figure,
)
