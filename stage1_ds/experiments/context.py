"""The market-context comparison (`scripts/quality_report.py ROOT --context`): does an encoder that sees
the other markets' windows at the same minute (``data.context``) know more than one that sees its own
instrument only, against rules that see the same?

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
from stage1_ds.evaluation.probe import probe
from stage1_ds.evaluation.volatility import VARIANCE_TARGETS
from stage1_ds.experiments.ladder import LADDER_CONFIG, LADDER_OVERRIDES, SIGNALS, TRAINED_SCORED
from stage1_ds.experiments.quality import TRANSFER_HELD_OUT, Run, instrument_folders, train_for
from stage1_ds.model.stage1 import Stage1Model, load_export_stats
from stage1_ds.version import code_version

log = logging.getLogger(__name__)

CONTEXT_HEADING = "## The encoder that sees the market"
#: The pretraining signal of both variants: the ladder's choice (docs/quality.md, the budget ladder).
CONTEXT_SIGNAL = "range"
#: What makes the ``context`` variant: the windows of up to seven other instruments at the anchor time.
CONTEXT_OVERRIDES = ["data.context=true", "data.context_max=7"]
VARIANTS = {"single": [], "context": CONTEXT_OVERRIDES}
CONTEXT_STEPS = (2000,)
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
    """The trained and exported run of a variant: read back from ``work/<name>.run.json`` (or, for the
    single variant, from the ladder's rung measurement beside its export) or trained now (``overrides``:
    applied before the variant's own, as the ladder applies them)."""
    name = run_name(variant, steps)
    plan = [*LADDER_OVERRIDES, *(overrides or []), *SIGNALS[CONTEXT_SIGNAL], *VARIANTS[variant]]
    export = work / f"{name}_export"
    record = work / f"{name}.run.json"
    rung = work / "ladder" / f"{CONTEXT_SIGNAL}_{steps}.json"
    if export.is_dir() and (record.is_file() or (variant == "single" and rung.is_file())):
        known = json.loads((record if record.is_file() else rung).read_text())
        if known["overrides"] != plan:
            raise ValueError(
                f"{export}: trained with {known['overrides']}, not {plan}; remove it to train again"
            )
        log.info("context: %s at %d steps trained before: %s", variant, steps, export)
        return Run(name, plan, steps, known["minutes"], export, known["val_loss"])
    run = train_for(name, plan, steps, corpus, work, base)
    fields = {"steps": steps, "overrides": plan, "minutes": run.minutes, "val_loss": run.val_loss}
    record.write_text(json.dumps(fields, indent=2) + "\n")
    return run


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
            cells: dict[str, Any] = {"anchors": report["anchors"], "context": report.get("context")}
            for target in VARIANCE_TARGETS:
                best = report["best_rule"][target]["rule"]
                results, val = report["targets"][target], report["val_mse"][target]
                cell: dict[str, Any] = {"best_rule": best, "best_rule_r2": results[best]["r2"]}
                for key, method in READOUTS.items():
                    cell[key] = {
                        "gain": 100 * (1 - results[method]["mse"] / results[best]["mse"]),
                        "p": results[method]["dm_p_vs_best_rule"],
                        "val_gain": 100 * (1 - val[method] / val[best]),
                    }
                cells[target] = cell
            instruments[name][rule] = cells
    return {
        "steps": run.steps,
        "overrides": run.overrides,
        "minutes": run.minutes,
        "val_loss": run.val_loss,
        "code": code_version(),
        "instruments": instruments,
    }


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
    folders, work = instrument_folders(root), Path(work)
    missing = [name for name in (*held_out, trained) if name not in folders]
    if missing:
        raise ValueError(f"{root}: no prepared folder of {missing} (folders of {sorted(folders)})")
    corpus = [folder for name, folder in folders.items() if name not in held_out]
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
