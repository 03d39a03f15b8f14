"""The market-context comparison (``--experiment context``): does an encoder that sees the other markets'
windows at the same minute (``data.context``) know more than one that sees its own instrument only, against
rules that see the same?

Options read: ``data`` (ROOT), ``out`` (WORK), ``steps`` (default `CONTEXT_STEPS`), ``held_out``,
``max_anchors``, ``overrides``.

ROOT is the ladder's corpus (`stage1_ds.experiments.ladder`): one prepared folder per instrument. Two
variants of the ladder's chosen signal (`CONTEXT_SIGNAL`) are trained at equal steps on the same folders
(every one but the held-out instruments', one corpus): ``single`` (the ladder's own rung of that signal,
reused where the ladder trained it) and ``context`` (the same with `CONTEXT_OVERRIDES`: up to seven other
instruments of the corpus at each sample's anchor time). Each is measured on the test split of EURUSD
(trained on) and of each held-out instrument, with the probe's nested readout against two rules, each
chosen on val:

- the ``single`` rule: ``best_rule`` of the instrument's own bars (`stage1_ds.evaluation.probe`);
- the ``market`` rule: ``best_rule`` when the rules also read every folder of ROOT (the market rules,
  `stage1_ds.evaluation.probe.MARKET_RULES`, taken where they win on val).

A context model's windows (its embeddings', and its untrained control's) always see the market: every
folder of ROOT, each instrument from its own split of the same name, scaled with the model's statistics for
the instruments it was trained on and with its own train split's for the others. Each measurement is
written to ``WORK/context/<variant>_<steps>.json`` and read back by a later run instead of measuring again.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from stage1_ds.data.store import load_prepared, model_stats
from stage1_ds.evaluation.probe import format_p, probe
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
from stage1_ds.experiments.ladder import LADDER_CONFIG, LADDER_OVERRIDES, SIGNALS, gain_cells
from stage1_ds.model.stage1 import Stage1Model, load_export_stats

log = logging.getLogger(__name__)

#: The pretraining signal of both variants: the ladder's choice (docs/quality.md, the budget ladder).
CONTEXT_SIGNAL = "future"
#: What makes the ``context`` variant: the windows of up to seven other instruments at the anchor time.
CONTEXT_OVERRIDES = ["data.context=true", "data.context_max=7"]
VARIANTS = {"single": [], "context": CONTEXT_OVERRIDES}
CONTEXT_STEPS = (8000,)
#: The rules each variant is measured against (see the module docstring).
RULES = ("single", "market")
#: Readouts read per variant, rule and instrument: (key in the JSON, probe method).
READOUTS = {
    "nested": "best_rule_plus_embeddings",
    "nested_untrained": "best_rule_plus_embeddings_random_init",
}


def run_name(variant: str, steps: int) -> str:
    """The run folder of a variant: the single one is the ladder's rung of `CONTEXT_SIGNAL`."""
    return f"ladder_{CONTEXT_SIGNAL}_{steps}" if variant == "single" else f"context_{CONTEXT_SIGNAL}_{steps}"


def variant_run(
    variant: str,
    steps: int,
    corpus: list[Path],
    work: Path,
    base: str = LADDER_CONFIG,
    overrides: list[str] | None = None,
) -> Run:
    """The trained and exported run of a variant (`trained_run`; ``overrides`` applied before the variant's
    own, as the ladder applies them): the single variant is the ladder's rung of `CONTEXT_SIGNAL`, read back
    where the ladder trained it."""
    plan = [*LADDER_OVERRIDES, *(overrides or []), *SIGNALS[CONTEXT_SIGNAL], *VARIANTS[variant]]
    return trained_run(run_name(variant, steps), plan, steps, corpus, work, base)


def market_stats(export: Path, folders: dict[str, Path]) -> dict[str, Any]:
    """The statistics that scale every folder of the market for a model (`model_stats`, folder by folder)."""
    stats = load_export_stats(export)
    for folder in folders.values():
        stats = model_stats(stats, load_prepared(folder), allow_other=False)
    return stats


def measure_variant(
    run: Run, folders: dict[str, Path], scored: list[str], max_anchors: int | None
) -> dict[str, Any]:
    """Per scored instrument, rule and target: the nested readouts' test gains over the rule (with DM p and
    the val gain), the rule chosen, and the share of anchors with each context instrument present."""
    model = Stage1Model.from_pretrained(run.export)
    untrained = Stage1Model.untrained_like(run.export)
    stats = market_stats(run.export, folders)
    market = list(folders.values())
    instruments: dict[str, Any] = {}
    for name in scored:
        instruments[name] = {}
        for rule in RULES:
            report = probe(
                model,
                untrained,
                folders[name],
                max_anchors,
                stats=stats,
                market=market if rule == "market" else None,
                context=market,
            )
            instruments[name][rule] = {
                "anchors": report["anchors"],
                "context": report.get("context"),
                **gain_cells(report, READOUTS),
            }
    return {**run.record(), "instruments": instruments}


def compare(
    root: Path,
    work: Path,
    steps: tuple[int, ...] = CONTEXT_STEPS,
    held_out: tuple[str, ...] = TRANSFER_HELD_OUT,
    max_anchors: int | None = None,
    base: str = LADDER_CONFIG,
    trained: str = TRAINED_SCORED,
    overrides: list[str] | None = None,
) -> dict[str, dict[int, dict[str, Any]]]:
    """Train (or read back) and measure both variants at each step count; measurements by variant and steps.

    Raises:
        ValueError: a held-out instrument, or ``trained``, has no folder under ``root``.
    """
    folders, corpus = training_corpus(root, held_out, trained)
    work = Path(work)
    measured = work / "context"
    measured.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[int, dict[str, Any]]] = {}
    for count in steps:
        for variant in VARIANTS:
            path = measured / f"{variant}_{count}.json"
            if not path.is_file():
                run = variant_run(variant, count, corpus, work, base, overrides)
                path.write_text(
                    json.dumps(measure_variant(run, folders, [trained, *held_out], max_anchors), indent=2)
                    + "\n"
                )
            results.setdefault(variant, {})[count] = json.loads(path.read_text())
    return results


#: The issue's targets: the context encoder's test gain over the market rule on ``rv_60m`` (percent, p) on
#: the trained instrument; and its gain at least this multiple of the single encoder's over its rule.
TARGET_GAIN, TARGET_P, TARGET_MULTIPLE = 3.0, 0.05, 2.0


def _cell(
    results: dict[str, dict[int, dict[str, Any]]], variant: str, steps: int, name: str, rule: str
) -> Any:
    return results[variant][steps]["instruments"][name][rule]


def context_verdicts(results: dict[str, dict[int, dict[str, Any]]], steps: int, trained: str) -> list[str]:
    """The issue's targets read off the measurements at ``steps`` (on ``rv_60m``, test split), as lines."""
    names = list(results["context"][steps]["instruments"])
    held = [name for name in names if name != trained]
    ours = {name: _cell(results, "context", steps, name, "market")["rv_60m"]["nested"] for name in names}
    single = {name: _cell(results, "single", steps, name, "single")["rv_60m"]["nested"] for name in names}
    first = ours[trained]
    met = first["gain"] >= TARGET_GAIN and first["p"] < TARGET_P
    lines = [
        f"- {trained}: the context encoder's nested readout against the market rule: {first['gain']:+.2f}% "
        f"(p {format_p(first['p'])}); target at least +{TARGET_GAIN:g}% at p < {TARGET_P:g}: "
        f"{'met' if met else 'missed'}."
    ]
    better = [name for name in held if ours[name]["gain"] > 0]
    worse = [name for name in held if ours[name]["gain"] < 0 and ours[name]["p"] < TARGET_P]
    lines.append(
        f"- Held-out instruments better than the market rule: {len(better)} of {len(held)} "
        f"({', '.join(better) or 'none'}); significantly worse: {', '.join(worse) or 'none'}; target at "
        f"least two better and none significantly worse: {'met' if len(better) >= 2 and not worse else 'missed'}."
    )
    mean_ours = sum(c["gain"] for c in ours.values()) / len(names)
    mean_single = sum(c["gain"] for c in single.values()) / len(names)
    twice = mean_ours >= TARGET_MULTIPLE * mean_single and mean_ours > 0
    lines.append(
        f"- Mean over the scored instruments: the context encoder over the market rule {mean_ours:+.2f}%, the "
        f"single encoder over the single rule {mean_single:+.2f}%; target at least {TARGET_MULTIPLE:g}x: "
        f"{'met' if twice else 'missed'}."
    )
    return lines


def measure(options: Options) -> dict[str, Any]:
    """`compare` with the options; the measurements by variant and steps (keys as strings: JSON's)."""
    steps = tuple(options.steps or CONTEXT_STEPS)
    held_out = tuple(options.held_out)
    results = compare(
        options.data,
        options.out,
        steps,
        held_out,
        options.max_anchors,
        trained=options.trained,
        overrides=options.overrides,
    )
    return {
        "root": str(options.data),
        "signal": CONTEXT_SIGNAL,
        "trained": options.trained,
        "variants": {v: {str(n): m for n, m in by_steps.items()} for v, by_steps in results.items()},
    }


def render(results: dict[str, Any]) -> str:
    """The report's markdown from `measure`'s results (`context_page`)."""
    variants = {v: {int(n): m for n, m in by.items()} for v, by in results["variants"].items()}
    command = results.get("command", "scripts/quality_report.py --experiment context")
    return context_page(variants, results["root"], command, results["trained"], results["signal"])


def context_page(
    results: dict[str, dict[int, dict[str, Any]]],
    root: str,
    command: str,
    trained: str = TRAINED_SCORED,
    signal: str = CONTEXT_SIGNAL,
) -> str:
    """The report of `compare`'s measurements."""
    lines = [
        f"# {EXPERIMENT.title}",
        "",
        f"Generated by `{command}`. Two variants of the ladder's `{signal}` rung trained at equal steps "
        f"on the same folders of `{root}` (every one but the held-out instruments'): `single` (the ladder's "
        f"model) and `context` (`{' '.join(CONTEXT_OVERRIDES)}`: each sample also reads up to seven other "
        "instruments of the corpus at its anchor time, one summary token each). Each scored on the test split "
        f"of {trained} (trained on) and of each held-out instrument with the probe's nested readout (the "
        "embeddings as a correction to the rule, penalty chosen on val, no correction allowed) against two "
        "rules chosen on val: the `single` rule (the instrument's own bars) and the `market` rule (also every "
        "other folder's recent realised variance; taken only where it wins on val). A context model's "
        "windows see every folder of the root, each from its own split. Gain: test MSE reduction over the "
        "rule in percent (positive: the embeddings help), Diebold-Mariano p; val gain beside; `untrained`: "
        "the same architecture with fresh weights, nested alike.",
        "",
    ]
    for steps in sorted(results.get("context", {})):
        if steps not in results.get("single", {}):
            continue
        minutes = {v: results[v][steps]["minutes"] for v in VARIANTS}
        lines += [
            f"## {steps:,} steps (training minutes: single {minutes['single']:.1f}, context "
            f"{minutes['context']:.1f})",
            "",
            "| instrument | target | rule | rule chosen | single: test gain % (p) | single: val | context: test "
            "gain % (p) | context: val | context untrained | context instruments per test anchor |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name in results["context"][steps]["instruments"]:
            for target in VARIANCE_TARGETS:
                for rule in RULES:
                    mine = _cell(results, "context", steps, name, rule)
                    theirs = _cell(results, "single", steps, name, rule)
                    ours, base = mine[target], theirs[target]
                    present = (mine.get("context") or {}).get("present_per_anchor", {}).get("test")
                    lines.append(
                        f"| {name} | `{target}` | {rule} | {base['best_rule']} | "
                        f"{base['nested']['gain']:+.2f} ({format_p(base['nested']['p'])}) | "
                        f"{base['nested']['val_gain']:+.2f} | "
                        f"{ours['nested']['gain']:+.2f} ({format_p(ours['nested']['p'])}) | "
                        f"{ours['nested']['val_gain']:+.2f} | {ours['nested_untrained']['gain']:+.2f} | "
                        f"{'' if present is None else f'{present:.2f}'} |"
                    )
        lines += [
            "",
            "Against the issue's targets (`rv_60m`, test):",
            "",
            *context_verdicts(results, steps, trained),
        ]
        lines.append("")
    return "\n".join(lines)


EXPERIMENT = Experiment(
    name="context",
    title="The encoder that sees the market",
    measure=measure,
    render=render,
)
