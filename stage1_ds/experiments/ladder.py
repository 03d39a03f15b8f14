"""The budget ladder (``--experiment ladder``): does pretraining longer make the encoder worth more, and
with which pretraining signal?

Options read: ``data`` (ROOT), ``out`` (WORK), ``steps`` (the rungs; default `LADDER_STEPS`), ``signals``
(train the missing rungs of these only), ``held_out``, ``max_anchors``, ``batches``, ``overrides``.
ROOT holds one prepared folder per instrument (`stage1_ds.experiments.harness.instrument_folders`). For
each signal of `SIGNALS` and each step count, a model of `LADDER_CONFIG` (its overrides below) is trained
from scratch on every folder but the held-out instruments', served as one corpus, then converted and
measured on the test split of EURUSD (trained on) and of each held-out instrument (never seen; features
scaled with its own train split's statistics):

- the nested readout's gain over ``best_rule`` (`stage1_ds.evaluation.probe.fit_correction`): the test
  MSE reduction in percent (positive: the embeddings help) with its Diebold-Mariano p, on ``rv_60m`` and
  ``rv_240m``, beside the untrained encoder's gain and the principal-components readout's;
- `time`-mode reconstruction per timeframe against the best baseline (chosen on val), on EURUSD.

The signal is chosen on VAL: the mean over the scored instruments of the nested readout's val MSE
reduction on ``rv_60m`` at `CHOICE_STEPS` steps. Every rung's measurements are written to
``WORK/ladder/<signal>_<steps>.json`` and read back by a later run instead of measuring again; a run trained
before (its export and run record in WORK) is measured without training again (training is deterministic
on one machine), so the ladder can be climbed over several sittings.
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
from stage1_ds.evaluation.probe import format_p, probe
from stage1_ds.evaluation.reconstruction import evaluate
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
#: The pretraining signals compared: the reconstruction objective alone, the same with the masked bars'
#: log-range term, and with the future-size term (the log range of the bars after the anchor, at the probe's
#: two horizons). Each names its range weight: `LADDER_CONFIG` has the range term since the ladder chose it.
SIGNALS = {
    "reconstruction": ["model.loss.range_weight=0.0"],
    "range": ["model.loss.range_weight=1.0"],
    "future": [
        "model.loss.range_weight=0.0",
        "data.future_minutes=[60, 240]",
        "model.loss.future_weight=1.0",
    ],
}
#: The rung at which the signal is chosen (on val).
CHOICE_STEPS = 8000
#: Readouts of the probe read per rung: (key in the rung's JSON, probe method).
READOUTS = {
    "nested": "best_rule_plus_embeddings",
    "nested_untrained": "best_rule_plus_embeddings_random_init",
    "pca": "best_rule_plus_embeddings_pca",
}


def gain_cells(report: dict[str, Any], readouts: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Per variance target of a probe report: the rule chosen on val (and its test R^2) and, per readout
    (key: probe method), its test MSE gain over that rule in percent, DM p and val gain."""
    cells = {}
    for target in VARIANCE_TARGETS:
        best = report["best_rule"][target]["rule"]
        results, val = report["targets"][target], report["val_mse"][target]
        cell: dict[str, Any] = {"best_rule": best, "best_rule_r2": results[best]["r2"]}
        for key, method in readouts.items():
            cell[key] = {
                "gain": 100 * (1 - results[method]["mse"] / results[best]["mse"]),
                "p": results[method]["dm_p_vs_best_rule"],
                "val_gain": 100 * (1 - val[method] / val[best]),
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
    for name in scored:
        stats = model_stats(exported, load_prepared(folders[name]), allow_other=False)
        report = probe(model, untrained, folders[name], max_anchors, stats=stats)
        instruments[name] = {"anchors": report["anchors"], **gain_cells(report, READOUTS)}
    first = scored[0]
    stats = model_stats(exported, load_prepared(folders[first]), allow_other=False)
    config = load_export_config(run.export)
    evaluation = evaluate(
        model, folders[first], config, "test", batches, modes=(MaskingMode.TIME,), stats=stats
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
    """Train and measure every rung not measured yet (``work/ladder/<signal>_<steps>.json``), one after
    another; returns every rung's measurements by signal and steps.

    Args:
        trained: the instrument of the training corpus that every rung is scored on too.
        train_signals: train missing rungs of these signals only (None: every signal); the others' rungs
            are read back where measured and left out where not (a ladder climbed a signal at a time).

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
                log.info("ladder: %s at %d steps not measured yet (not trained in this run)", signal, count)
                continue
            else:
                plan = [*LADDER_OVERRIDES, *(overrides or []), *extra]
                run = trained_run(f"ladder_{signal}_{count}", plan, count, corpus, work, base)
                rung = measure_rung(run, folders, scored, max_anchors, batches)
                path.write_text(json.dumps(rung, indent=2) + "\n")
            rungs.setdefault(signal, {})[count] = json.loads(path.read_text())
    return rungs


def choose_signal(rungs: dict[str, dict[int, dict[str, Any]]], at: int = CHOICE_STEPS) -> tuple[str, int]:
    """The signal of highest mean val gain of the nested readout on ``rv_60m`` over the scored instruments,
    at ``at`` steps among the signals measured there (a signal not yet climbed that far cannot be chosen);
    where none is, at the most steps every signal has."""
    having = [signal for signal, by_steps in rungs.items() if at in by_steps]
    if not having:
        having, at = list(rungs), max(set.intersection(*(set(r) for r in rungs.values())))
    return max(having, key=lambda s: mean_gain(rungs[s][at], "rv_60m", "nested", "val_gain")), at


def mean_gain(rung: dict[str, Any], target: str, readout: str, key: str = "gain") -> float:
    """The mean over the rung's scored instruments of a readout's gain (or ``val_gain``) on ``target``."""
    return float(np.mean([cells[target][readout][key] for cells in rung["instruments"].values()]))


def gain_per_doubling(by_steps: dict[int, dict[str, Any]], target: str) -> float:
    """The least-squares slope of the mean nested test gain (points of MSE %) against log2(steps); nan with
    fewer than two rungs."""
    if len(by_steps) < 2:
        return float("nan")
    x = np.log2(np.array(list(by_steps), dtype=float))
    y = np.array([mean_gain(r, target, "nested") for r in by_steps.values()])
    return float(np.polyfit(x, y, 1)[0])


def ladder_figure(rungs: dict[str, dict[int, dict[str, Any]]], path: Path) -> None:
    """Test gain of the nested readout against steps (log x), one line per instrument and signal, a panel
    per target; the untrained encoder's gain dotted."""
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
                gains = [by_steps[s]["instruments"][name][target]["nested"]["gain"] for s in steps]
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
        ax.set_title(f"{target}: rule + embeddings (nested); dotted: untrained encoder")
    axes[0][0].legend(fontsize=7, loc="best")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


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
        train_signals=tuple(options.signals) or None,
    )
    return {
        "root": str(options.data),
        "planned": list(steps),
        "choice_steps": CHOICE_STEPS,
        "machine": versions()["machine"],
        "rungs": {
            signal: {str(n): rung for n, rung in by_steps.items()} for signal, by_steps in rungs.items()
        },
    }


def rungs_of(results: dict[str, Any]) -> dict[str, dict[int, dict[str, Any]]]:
    """The measured rungs of `measure`'s results by signal and (integer) steps."""
    return {signal: {int(n): r for n, r in by_steps.items()} for signal, by_steps in results["rungs"].items()}


def render(results: dict[str, Any]) -> str:
    """The ladder's report from `measure`'s results (`ladder_page`)."""
    return ladder_page(
        rungs_of(results),
        results["root"],
        f"{EXPERIMENT.name}.png",
        results.get("command", "scripts/quality_report.py --experiment ladder"),
        tuple(results["planned"]),
        results["choice_steps"],
        results["machine"],
    )


def figure(results: dict[str, Any], path: Path) -> None:
    """The ladder's figure from `measure`'s results (`ladder_figure`)."""
    ladder_figure(rungs_of(results), path)


def ladder_page(
    rungs: dict[str, dict[int, dict[str, Any]]],
    root: str,
    figure: str | None,
    command: str,
    planned: tuple[int, ...] = LADDER_STEPS,
    choice_steps: int = CHOICE_STEPS,
    machine: str = "",
) -> str:
    """The ladder's report from the measured rungs (signals may have climbed to different rungs; the choice
    is among those measured at ``choice_steps``)."""
    chosen, at = choose_signal(rungs, choice_steps)
    names = list(next(iter(next(iter(rungs.values())).values()))["instruments"])
    measured = sorted({s for by_steps in rungs.values() for s in by_steps})
    lines = [
        f"# {EXPERIMENT.title}",
        "",
        f"Generated by `{command}`. Every rung is `{LADDER_CONFIG}` with "
        + " ".join(f"`{o}`" for o in LADDER_OVERRIDES)
        + " (frozen for 10% of the steps, LoRA to a third, then full), trained from scratch on the "
        f"instrument folders under `{root}` except the held-out {', '.join(names[1:])}, on "
        f"{machine}, one run "
        "at a time. Each is probed on the test split of "
        f"{names[0]} (trained on) and of each held-out instrument (its features scaled from its own train "
        "split). Gain: the test MSE reduction of `best_rule` plus the embeddings' nested correction "
        "(`fit_correction`: penalty chosen on val, no correction allowed) over `best_rule` itself, in "
        "percent (positive: better), with its Diebold-Mariano p (HLN); `untrained`: the same readout of the "
        "untrained encoder; `pca`: the principal-components readout. "
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
            f"**`{target}`**, test gain % (p) / untrained gain % / pca gain %:",
            "",
            "| signal | steps | minutes | val loss | " + " | ".join(names) + " | mean |",
            "|---|---|---|---|" + "---|" * (len(names) + 1),
        ]
        for signal, by_steps in rungs.items():
            for count in sorted(by_steps):
                rung = by_steps[count]
                cells = []
                for name in names:
                    cell = rung["instruments"][name][target]
                    cells.append(
                        f"{cell['nested']['gain']:+.1f} ({format_p(cell['nested']['p'])}) / "
                        f"{cell['nested_untrained']['gain']:+.1f} / {cell['pca']['gain']:+.1f}"
                    )
                lines.append(
                    f"| {signal} | {count:,} | {rung['minutes']:.1f} | {rung['val_loss']:.4f} | "
                    + " | ".join(cells)
                    + f" | {mean_gain(rung, target, 'nested'):+.2f} |"
                )
        lines.append("")
    best_rules = {
        name: {
            t: next(iter(next(iter(rungs.values())).values()))["instruments"][name][t]["best_rule"]
            for t in VARIANCE_TARGETS
        }
        for name in names
    }
    lines += [
        "`best_rule` per instrument (chosen on val; the same in every rung): "
        + "; ".join(
            f"{name} " + ", ".join(f"`{t}` {r}" for t, r in rules.items())
            for name, rules in best_rules.items()
        )
        + ".",
        "",
        f"`time`-mode reconstruction on {names[0]}, model / best baseline (chosen on val) per timeframe:",
        "",
    ]
    timeframes = list(next(iter(next(iter(rungs.values())).values()))["time_mode"]["ratios"])
    lines += ["| signal | steps | " + " | ".join(timeframes) + " |", "|---|---|" + "---|" * len(timeframes)]
    for signal, by_steps in rungs.items():
        for count in sorted(by_steps):
            ratios = by_steps[count]["time_mode"]["ratios"]
            lines.append(
                f"| {signal} | {count:,} | " + " | ".join(f"{ratios[tf]:.3f}" for tf in timeframes) + " |"
            )
    lines += [
        "",
        "Slope, the mean nested test gain over the scored instruments per doubling of steps (least squares "
        "on log2 steps): "
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
        f"Signal chosen on val (mean nested val gain on `rv_60m` at {at:,} steps): **{chosen}** ("
        + ", ".join(
            f"{s} {mean_gain(r[at], 'rv_60m', 'nested', 'val_gain'):+.2f}%"
            if at in r
            else f"{s} not measured there"
            for s, r in rungs.items()
        )
        + ").",
        "",
        "## Targets, as measured (the chosen signal, its largest rung)",
        "",
        *ladder_verdicts(rungs, chosen),
        "",
        "",
    ]
    return "\n".join(lines)


def ladder_verdicts(rungs: dict[str, dict[int, dict[str, Any]]], chosen: str) -> list[str]:
    """The quality issue's targets for the ladder, met or missed, with their figures."""
    by_steps = rungs[chosen]
    top = max(by_steps)
    rung = by_steps[top]
    lines = []
    for name, cells in rung["instruments"].items():
        nested = cells["rv_60m"]["nested"]
        met = nested["gain"] >= 5 and nested["p"] < 0.05
        lines.append(
            f"- {name}, `rv_60m`, {top:,} steps: the nested readout beats `best_rule` by at least 5% MSE at "
            f"p < 0.05: {'met' if met else 'missed'} ({nested['gain']:+.1f}%, p {format_p(nested['p'])})."
        )
    for name, cells in rung["instruments"].items():
        trained, untrained = cells["rv_60m"]["nested"]["gain"], cells["rv_60m"]["nested_untrained"]["gain"]
        met = trained > 0 and trained >= 2 * max(untrained, 0.0)
        lines.append(
            f"- {name}, `rv_60m`: the trained encoder's gain at least twice the untrained one's: "
            f"{'met' if met else 'missed'} ({trained:+.1f}% vs {untrained:+.1f}%)."
        )
    slope = gain_per_doubling(by_steps, "rv_60m")
    lines.append(
        "- The gain rises with steps (mean over instruments, `rv_60m`): "
        + (
            "not measurable with one rung."
            if math.isnan(slope)
            else f"{'met' if slope > 0 else 'missed'} ({slope:+.2f} points per doubling over "
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
