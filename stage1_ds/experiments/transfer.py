"""Instruments the encoder never saw (``--experiment transfer``): leave one instrument out at a time.

Options read: ``data`` (a root of one prepared folder per instrument), ``out``, ``steps`` (one count),
``held_out``, ``max_anchors``, ``batches``, ``overrides``. For each held-out instrument: (i) the demo-sized
model trained on the other instruments' folders (temperature sampling), (ii) the same trained on the
held-out instrument alone, (iii) the untrained control and the simple rules fitted on it; reconstruction
per masking mode and the probe on its test split, with (i)'s zero-shot readout fitted on the others.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from stage1_ds.data.store import load_prepared, model_stats
from stage1_ds.evaluation.probe import format_p, horizon_steps, probe, report_data
from stage1_ds.evaluation.reconstruction import evaluate, evaluation_data
from stage1_ds.evaluation.statistics import diebold_mariano
from stage1_ds.evaluation.volatility import VARIANCE_TARGETS
from stage1_ds.experiments.harness import DEMO_CONFIG, Experiment, Options, instrument_folders, trained_run
from stage1_ds.experiments.main import versions
from stage1_ds.model.stage1 import Stage1Model, load_export_config, load_export_stats

#: Rows of the transfer tables: (label, which run's probe, method).
ROWS = (
    ("(iii) untrained encoder, embeddings", "others", "embeddings_random_init"),
    ("(i) pretrained on the others, embeddings", "others", "embeddings"),
    ("(i) ... zero-shot readout", "others", "embeddings_zero_shot"),
    ("(ii) trained on it alone, embeddings", "alone", "embeddings"),
    ("best_rule + (i)", "others", "best_rule_plus_embeddings"),
    ("best_rule + (i), zero-shot readout", "others", "best_rule_plus_embeddings_zero_shot"),
    ("best_rule + (ii)", "alone", "best_rule_plus_embeddings"),
    ("best_rule, zero-shot readout", "others", "best_rule_zero_shot"),
)


def measure(options: Options) -> dict[str, Any]:
    """Train, evaluate and probe (i) and (ii) for each held-out instrument (see the module docstring).

    Raises:
        ValueError: no step count given.
    """
    if not options.steps:
        raise ValueError("transfer needs --steps: every run trains the same number of steps")
    root, work, steps = Path(options.data), Path(options.out), options.steps[0]
    folders = instrument_folders(root)
    work.mkdir(parents=True, exist_ok=True)
    shared = ["train.micro_batch_size=32", *options.overrides]
    held: dict[str, Any] = {}
    for name in options.held_out:
        others = [folder for other, folder in folders.items() if other != name]
        runs = {
            "others": trained_run(
                f"{name}_others", [*shared, "data.instrument_sampling=temperature"], steps, others, work
            ),
            "alone": trained_run(f"{name}_alone", shared, steps, folders[name], work),
        }
        cell: dict[str, Any] = {"runs": {kind: run.record() for kind, run in runs.items()}}
        for kind, run in runs.items():
            model = Stage1Model.from_pretrained(run.export)
            exported = load_export_stats(run.export)
            stats = model_stats(exported, load_prepared(folders[name]), allow_other=False)
            config = load_export_config(run.export)
            evaluation = evaluate(model, folders[name], config, "test", options.batches, stats=stats)
            readout: dict[str, Any] = {}
            if kind == "others":
                other_stats = exported
                for folder in others:
                    other_stats = model_stats(other_stats, load_prepared(folder), allow_other=False)
                readout = {"readout_from": others, "readout_stats": other_stats}
            untrained = Stage1Model.untrained_like(run.export)
            report = probe(model, untrained, folders[name], options.max_anchors, stats=stats, **readout)
            cell[f"evaluation_{kind}"] = evaluation_data(evaluation)
            cell[f"probe_{kind}"] = report_data(report)
            if kind == "others":
                cell["against_control"] = against_control(report)
        held[name] = cell
    config = load_export_config(work / f"{options.held_out[0]}_others_export")
    return {
        "root": str(root),
        "steps": steps,
        "overrides": options.overrides,
        "versions": versions(),
        "sources": {
            name: [
                {"path": s["path"], "sha256": s["sha256"]}
                for s in load_prepared(folder).manifest["instruments"][name]["sources"]
            ]
            for name, folder in folders.items()
        },
        "model": {
            "position_bias": config.model.position_bias.value,
            "timeframe_pair_bias": config.model.timeframe_pair_bias,
            "calendar": list(config.model.calendar),
            "window_bars": config.data.window_bars,
        },
        "held_out": held,
    }


def against_control(report: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per variance target: the Diebold-Mariano test of the embeddings' squared test errors against the
    untrained control's (negative statistic: the trained encoder's are lower)."""
    tests = {}
    for target in VARIANCE_TARGETS:
        values = report["predictions"][target]
        stat, p = diebold_mariano(
            (values["embeddings"] - values["truth"]) ** 2,
            (values["embeddings_random_init"] - values["truth"]) ** 2,
            horizon_steps(target),
        )
        tests[target] = {"dm_stat": stat, "p": p}
    return tests


def render(results: dict[str, Any]) -> str:
    """The report's markdown from `measure`'s results."""
    held = results["held_out"]
    sources = "; ".join(
        f"{name} (" + ", ".join(f"`{Path(s['path']).name}` sha256 {s['sha256'][:12]}" for s in files) + ")"
        for name, files in results["sources"].items()
    )
    model, steps = results["model"], results["steps"]
    setup = [
        f"- {name}: (i) {cell['runs']['others']['minutes']:.1f} min, final val loss "
        f"{cell['runs']['others']['val_loss']:.4f} (on the others' val splits); (ii) "
        f"{cell['runs']['alone']['minutes']:.1f} min, {cell['runs']['alone']['val_loss']:.4f}"
        for name, cell in held.items()
    ]
    lines = [
        f"# {EXPERIMENT.title}",
        "",
        f"Generated by `scripts/quality_report.py --experiment transfer {results['root']} --held-out "
        f"{' '.join(held)} --steps {steps}" + "".join(f" {o}" for o in results["overrides"]) + "`, code "
        f"{results['versions']['stage1_ds']}. Data: one prepared folder per instrument under "
        f"`{results['root']}`: {sources}. Model: `{DEMO_CONFIG}` (mini preset) with micro batch 32 and the "
        f"shipped defaults (position bias `{model['position_bias']}`, timeframe-pair bias "
        f"{model['timeframe_pair_bias']}, calendar {model['calendar'] or 'off'}), {model['window_bars']}-bar "
        f"windows, {steps:,} steps per run (frozen for 10%, LoRA to a third, then full), on "
        f"{results['versions']['machine']}, one run after another. (i) trains on the other instruments' "
        "folders served as one corpus with `data.instrument_sampling=temperature` (T = 2); (ii) on the "
        "held-out instrument alone, the same steps. The held-out instrument's features are scaled with "
        "statistics fitted on its own train split for both (for (ii) they are the model's own). Every "
        "readout's penalty and every rule is chosen on val; all figures are on the held-out instrument's "
        "test split. Minutes are wall time.",
        "",
        *setup,
        "",
        "## Targets, as measured",
        "",
        *(line for name, cell in held.items() for line in verdicts(name, cell)),
        "",
    ]
    for name, cell in held.items():
        lines += instrument_tables(name, cell)
    return "\n".join(lines)


def instrument_tables(name: str, cell: dict[str, Any]) -> list[str]:
    """The probe and reconstruction tables of one held-out instrument."""
    probes = {kind: cell[f"probe_{kind}"] for kind in ("others", "alone")}
    others = probes["others"]
    best = {t: others["best_rule"][t]["rule"] for t in VARIANCE_TARGETS}
    lines = [
        f"## {name} held out",
        "",
        f"Anchors (train / val / test): {others['anchors']}; zero-shot readout fitted on "
        f"{others['readout_anchors']} anchors of the other instruments. `best_rule`: "
        + ", ".join(f"`{t}` {best[t]} (R^2 {others['targets'][t][best[t]]['r2']:.3f})" for t in best)
        + ", chosen on val.",
        "",
        "| method | R^2 rv_60m | DM p vs best_rule | R^2 rv_240m | DM p vs best_rule |",
        "|---|---|---|---|---|",
    ]
    for label, kind, method in ROWS:
        cells = []
        for target in VARIANCE_TARGETS:
            r = probes[kind]["targets"][target][method]
            cells.append(f"{r['r2']:.3f} | {format_p(r['dm_p_vs_best_rule'])}")
        lines.append(f"| {label} | {' | '.join(cells)} |")
    lines += ["", "Reconstruction, model / best baseline (chosen on val) per timeframe, `time` mode:", ""]
    timeframes = list(cell["evaluation_others"]["modes"]["time"]["timeframes"])
    lines += ["| run | " + " | ".join(timeframes) + " | overall |", "|---|" + "---|" * (len(timeframes) + 1)]
    for kind, label in (("others", "(i) pretrained on the others"), ("alone", "(ii) trained on it alone")):
        mode = cell[f"evaluation_{kind}"]["modes"]["time"]
        ratios = [mode["timeframes"][tf]["ratio_to_best_baseline"] for tf in timeframes]
        lines.append(
            f"| {label} | "
            + " | ".join(f"{r:.3f}" for r in ratios)
            + f" | {mode['overall']['ratio_to_best_baseline']:.3f} |"
        )
    return [*lines, ""]


def verdicts(name: str, cell: dict[str, Any]) -> list[str]:
    """The transfer issue's four targets for one held-out instrument, met or missed, with their figures."""
    others, alone = cell["probe_others"], cell["probe_alone"]
    lines = []
    for target in VARIANCE_TARGETS:
        test = cell["against_control"][target]
        r2 = others["targets"][target]
        met = "met" if test["dm_stat"] < 0 and test["p"] < 0.05 else "missed"
        lines.append(
            f"- {name}, `{target}`: (i) beats the untrained control (iii): {met} (R^2 "
            f"{r2['embeddings']['r2']:.3f} vs {r2['embeddings_random_init']['r2']:.3f}, DM "
            f"{test['dm_stat']:.2f}, p {format_p(test['p'])})."
        )
    own = alone["targets"]["rv_60m"]["embeddings"]["r2"]
    pooled = others["targets"]["rv_60m"]["embeddings"]["r2"]
    lines.append(
        f"- {name}, `rv_60m`: (i) at least as good as (ii), within 0.01 R^2: "
        f"{'met' if pooled >= own - 0.01 else 'missed'} (embeddings {pooled:.3f} vs {own:.3f}; with the rule "
        f"{others['targets']['rv_60m']['best_rule_plus_embeddings']['r2']:.3f} vs "
        f"{alone['targets']['rv_60m']['best_rule_plus_embeddings']['r2']:.3f})."
    )
    rule = others["best_rule"]["rv_60m"]["rule"]
    for method, readout in (
        ("best_rule_plus_embeddings", "own"),
        ("best_rule_plus_embeddings_zero_shot", "zero-shot"),
    ):
        r = others["targets"]["rv_60m"][method]
        base = others["targets"]["rv_60m"][rule]
        better = r["mse"] < base["mse"] and r["dm_p_vs_best_rule"] < 0.05
        lines.append(
            f"- {name}, `rv_60m`: the rule plus (i)'s embeddings ({readout} readout) beats `best_rule` ({rule}): "
            f"{'met' if better else 'missed'} (R^2 {r['r2']:.3f} vs {base['r2']:.3f}, MSE "
            f"{100 * (r['mse'] / base['mse'] - 1):+.1f}%, DM {r['dm_stat_vs_best_rule']:.2f}, p "
            f"{format_p(r['dm_p_vs_best_rule'])})."
        )
    mode = cell["evaluation_others"]["modes"]["time"]["timeframes"]
    worst = max(mode, key=lambda tf: mode[tf]["ratio_to_best_baseline"])
    ratio = mode[worst]["ratio_to_best_baseline"]
    lines.append(
        f"- {name}: `time`-mode reconstruction of (i) at most 0.85 of the best baseline on every timeframe: "
        f"{'met' if ratio <= 0.85 else 'missed'} (worst {worst}: {ratio:.3f})."
    )
    return lines


EXPERIMENT = Experiment(
    name="transfer",
    title="One encoder for many markets: instruments it never saw",
    measure=measure,
    render=render,
)
