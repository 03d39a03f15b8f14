"""The model card: ``README.md`` in an export folder, as the Hugging Face hub shows it.

`stage1 convert` writes it (with ``--card-metrics``, the evaluation and probe tables too); ``stage1 card
EXPORT --metrics eval.json probe.json`` rewrites it later. Everything in it comes from the export's own
files: ``config.yaml``, ``encoder_config.json``, ``export_info.json``, ``data.json`` (the data the model
was trained on, from the prepared folders' manifests) and the reports given.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import yaml

from stage1_ds.config import SPLITS, TrainConfig, config_to_dict
from stage1_ds.errors import CheckpointError
from stage1_ds.evaluation.probe.report import READOUT_NAMES, readout_verdict
from stage1_ds.model.stage1 import (
    EXPORT_CARD,
    EXPORT_DATA,
    EXPORT_ENCODER_CONFIG,
    EXPORT_INFO,
    export_identity,
    load_export_config,
)

TAGS = ("time-series", "finance", "market-data", "self-supervised", "t5", "multi-timeframe", "stage1_ds")


def write_card(
    export_dir: Path,
    metrics: list[Path] | None = None,
    name: str | None = None,
    force: bool = False,
    location: Path | None = None,
) -> Path:
    """Write (or rewrite) the export's model card.

    Args:
        metrics: ``stage1 evaluate`` and ``stage1 probe`` JSON reports, told apart by their content; each
            must record this model (its ``provenance``, `export_identity`) unless ``force``.
        name: the model's name (default: the folder's).
        location: the folder the usage line loads (default: ``export_dir``), resolved so that the line
            runs from anywhere; `stage1 convert` names the export's final path while writing a staging copy.

    Raises:
        CheckpointError: a metrics file is neither report, is a report of another model (or records none)
            and ``force`` is not set, or the export lacks a file the card reads.
    """
    export_dir = Path(export_dir)
    path = export_dir / EXPORT_CARD
    where = Path(location or export_dir).resolve()
    path.write_text(model_card(export_dir, metrics or [], name or where.name, force, where))
    return path


def model_card(
    export_dir: Path, metrics: list[Path], name: str, force: bool = False, location: Path | None = None
) -> str:
    config = load_export_config(export_dir)
    info = _json(export_dir / EXPORT_INFO)
    layout = _json(export_dir / EXPORT_ENCODER_CONFIG)
    data = _json(export_dir / EXPORT_DATA) if (export_dir / EXPORT_DATA).is_file() else None
    front = {"library_name": "stage1_ds", "tags": list(TAGS)}
    if config.license:
        front["license"] = config.license
    model, windows = config.model, config.data
    lines = [
        "---",
        yaml.safe_dump(front, sort_keys=False).rstrip(),
        "---",
        "",
        f"# {name}: a Stage-1 multi-timeframe encoder of market bars",
        "",
        "A self-supervised encoder of 1-minute OHLC bars seen at several timeframes at once (stage1_ds). Each "
        "timeframe's window is cut into patches by its own stem; the patch tokens of every timeframe go through "
        "ONE shared T5 encoder, trained to reconstruct masked bars and to keep coarser bars consistent with "
        "the finer bars inside them. Its pooled states are features for a downstream (Stage-2) model.",
        "",
        "| | |",
        "|---|---|",
        f"| timeframes and window bars | {', '.join(f'{tf} {windows.bars(tf)}' for tf in windows.timeframes)} |",
        f"| bar features | {', '.join(windows.channels)}, scale-free (log price over the window's reference) |",
        f"| patch length | {model.patch_len} bars |",
        f"| encoder | T5 layout d_model {layout.get('d_model')}, {layout.get('num_layers')} layers, "
        f"{layout.get('num_heads')} heads (preset {model.encoder.preset.value}; start: "
        f"{model.encoder.pretrained or 'random init'}) |",
        f"| position | {model.position_bias.value} bias"
        + (", per timeframe pair" if model.timeframe_pair_bias else "")
        + (f"; calendar inputs {', '.join(model.calendar)}" if model.calendar else "")
        + " |",
        f"| parameters | {info['parameters']['all']:,} (fp32; LoRA merged: {info['lora_merged']}) |",
        f"| trained | {info['global_step']:,} steps, last phase {info['phase']}, {info['trained_world_size']} "
        f"rank(s), code {info['trained_code_version']} |",
        f"| windows seen | {_windows_seen(info, config.train)} |",
        "",
        "## Training data",
        "",
        *_data_section(data),
        "## Use",
        "",
        "```python",
        "from stage1_ds import Encoder",
        "",
        f'encoder = Encoder.from_pretrained("{location or Path(export_dir).resolve()}")  # or its hub id',
        "vectors = encoder.embed(bars)  # bars: a DataFrame of 1-minute OHLC(V); {timeframe: (1, d_model)}",
        "```",
        "",
        "`bars` are 1-minute bars with their start times on the clock the data was prepared on (above); "
        "every timeframe is derived as in training, from bars that end by the decision time only.",
        "",
    ]
    evaluations, probes = _reports(metrics, export_identity(export_dir), force)
    for path, report in evaluations:
        lines += _evaluation_section(path, report)
    for path, report in probes:
        lines += _probe_section(path, report)
    if not evaluations and not probes:
        lines += [
            "## Evaluation",
            "",
            "No report attached: `stage1 evaluate` and `stage1 probe`, then "
            "`stage1 card EXPORT --metrics eval.json probe.json`.",
            "",
        ]
    lines += [
        "## Limitations",
        "",
        *_measured_limitations(evaluations, probes),
        "- Judge it by what it adds to the strongest simple rule that sees the same bars (`stage1 probe`), "
        "on data no choice was tuned on; the project's measured figures, misses included, are in its "
        "docs/quality.md.",
        "- Features are scaled with the statistics of the instruments it was trained on; another instrument "
        "needs its own history first (`Encoder.add_instrument`).",
        "",
        "## Config",
        "",
        "<details><summary>config.yaml</summary>",
        "",
        "```yaml",
        yaml.safe_dump(config_to_dict(config), sort_keys=False).rstrip(),
        "```",
        "",
        "</details>",
        "",
    ]
    return "\n".join(lines)


def _json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"{path}: missing; is {path.parent} a folder written by 'stage1 convert'?")
    return dict(json.loads(path.read_text()))


def _data_section(data: dict[str, Any] | None) -> list[str]:
    if data is None:
        return ["Not recorded (an export from before `data.json` was written).", ""]
    timezone = data.get("timezone")
    lines = [
        f"Prepared by `stage1 prepare`{' from the synthetic market' if data.get('synthetic') else ''}: "
        f"{'naive times converted from ' + timezone + ' to UTC' if timezone else 'times as given in the files'}, "
        f"buckets from {int(data.get('bucket_origin_seconds') or 0) // 60} minutes after midnight, splits "
        f"{data.get('split_fractions')} of each instrument's 1-minute rows (train, val, test, by time).",
        "",
        "Each split's anchors (decision times) below; a val or test window reaches back into the bars before "
        "its first anchor, never into another split's anchors. Score the model only on data after its val "
        "split ends (`stage1 evaluate` and `stage1 probe` refuse an overlap).",
        "",
        "| instrument | bars (UTC) | train | val | test | sources (SHA-256) |",
        "|---|---|---|---|---|---|",
    ]
    for name, record in data["instruments"].items():
        start, end = record.get("time_range_utc") or ["?", "?"]
        splits = record.get("splits") or {}
        periods = [
            f"{splits[split].get('anchor_start_utc', '?')} .. {splits[split].get('end_utc', '?')}"
            if split in splits
            else "?"
            for split in SPLITS
        ]
        sources = ", ".join(
            f"{Path(source['path']).name} ({source['sha256'][:12]})" for source in record.get("sources", [])
        )
        lines.append(f"| {name} | {start} .. {end} | {' | '.join(periods)} | {sources or 'synthetic'} |")
    return [*lines, ""]


def _windows_seen(info: dict[str, Any], train: TrainConfig) -> str:
    """Training windows the model saw (every rank's micro batches), from the export info; what a user
    weighs against the size of their own data. Exports from before the count was recorded: from the steps
    (exact unless the run was resumed on another number of ranks)."""
    seen = info.get("windows_seen")
    if seen is None:
        per_step = train.gradient_accumulation_steps * train.micro_batch_size * info["trained_world_size"]
        return (
            f"about {info['global_step'] * per_step:,} ({info['global_step']:,} steps x "
            f"{train.gradient_accumulation_steps} x {train.micro_batch_size} windows x "
            f"{info['trained_world_size']} rank(s) at the end)"
        )
    return (
        f"{seen['windows']:,} ({seen['micro_batches_per_rank']:,} micro batches per rank x "
        f"{seen['micro_batch_size']} windows x {seen['world_size']} rank(s))"
    )


def _reports(
    paths: list[Path], identity: dict[str, str], force: bool
) -> tuple[list[tuple[Path, dict]], list[tuple[Path, dict]]]:
    """The evaluate and probe reports of ``paths``; each must record the model of ``identity`` unless
    ``force`` (then it is marked ``attached_despite``, which its section shows)."""
    evaluations, probes = [], []
    for path in paths:
        try:
            report = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise CheckpointError(f"--metrics {path}: cannot be read as JSON ({error})") from None
        measured = (report.get("provenance") or {}).get("model") or {}
        if measured.get("sha256") != identity["sha256"]:
            problem = (
                f"a report of another model ({measured.get('export')}, sha256 {measured['sha256'][:12]})"
                if measured.get("sha256")
                else "a report that records no model (written before reports recorded one, or not by "
                "`stage1 evaluate` / `stage1 probe`)"
            )
            if not force:
                raise CheckpointError(
                    f"--metrics {path}: {problem}; this card is of {identity['export']} (sha256 "
                    f"{identity['sha256'][:12]}). Attach this model's reports (`stage1 evaluate --model "
                    f"{identity['export']} ...`), or pass --force to attach it anyway (the card says so)"
                )
            report["attached_despite"] = problem
        if "modes" in report:
            evaluations.append((Path(path), report))
        elif "targets" in report and "best_rule" in report:
            probes.append((Path(path), report))
        else:
            raise CheckpointError(
                f"--metrics {path}: neither a `stage1 evaluate` report (modes) nor a `stage1 probe` report "
                "(targets, best_rule)"
            )
    return evaluations, probes


def _forced(report: dict[str, Any]) -> list[str]:
    """The warnings under a report attached with --force, or scored on the model's own data
    (``--allow-overlap``)."""
    lines = []
    if "attached_despite" in report:
        lines += [f"**Attached with --force: {report['attached_despite']}; not this model's figures.**", ""]
    if report.get("overlap_allowed"):
        lines += [
            "**Scored on data the model was trained or validated on (--allow-overlap): "
            + "; ".join(report.get("overlap", []))
            + ".**",
            "",
        ]
    return lines


def _evaluation_section(path: Path, report: dict[str, Any]) -> list[str]:
    lines = [
        f"## Reconstruction of masked bars ({path.name}, {report['split']} split)",
        "",
        *_forced(report),
        "MSE on masked bars (feature units) of the model and of the best simple baseline of each timeframe "
        f"(chosen on the {report.get('best_baseline_chosen_on', 'val')} split); below 1 the model is better.",
        "",
        "| mode | timeframe | model | best baseline | MSE | model / baseline |",
        "|---|---|---|---|---|---|",
    ]
    for mode, entry in report["modes"].items():
        for tf, e in [*entry["timeframes"].items(), ("overall", entry["overall"])]:
            lines.append(
                f"| {mode} | {tf} | {e['model']['mse']:.4f} | {e['best_baseline']} | "
                f"{e['best_baseline_scores']['mse']:.4f} | {e['ratio_to_best_baseline']:.3f} |"
            )
    return [*lines, ""]


def _p(p: float) -> str:
    """A p-value; ``-`` where there is none (the readout chose no correction: the rule itself)."""
    return "-" if math.isnan(p) else f"{p:.2g}"


def _probe_section(path: Path, report: dict[str, Any]) -> list[str]:
    lines = [
        f"## What the embeddings add to the best rule ({path.name}, test split)",
        "",
        *_forced(report),
        "Future log realised variance: the strongest simple rule (chosen on val) alone, and with the "
        "embeddings; Diebold-Mariano p against the rule.",
        "",
        "| target | best rule | R^2 rule | R^2 rule + embeddings | p | n |",
        "|---|---|---|---|---|---|",
    ]
    for target, results in report["targets"].items():
        if target not in report["best_rule"] or "r2" not in next(iter(results.values())):
            continue
        rule = report["best_rule"][target]["rule"]
        plus = results["best_rule_plus_embeddings"]
        lines.append(
            f"| {target} | {rule} | {results[rule]['r2']:.3f} | {plus['r2']:.3f} | "
            f"{_p(plus['dm_p_vs_best_rule'])} | {plus['n']} |"
        )
    return [*lines, ""]


def _scored_on(report: dict[str, Any]) -> str:
    """The data folders a report scored, by name, from its provenance."""
    folders = [Path(entry["folder"]).name for entry in (report.get("provenance") or {}).get("data", [])]
    return ", ".join(folders) or "data not recorded"


def _measured_limitations(evaluations: list[tuple[Path, dict]], probes: list[tuple[Path, dict]]) -> list[str]:
    """Limitations as measured by the attached reports of this model (forced reports of another model, and
    reports scored on its own training or validation data, are not measurements of it), or the statement
    that they are unmeasured."""
    lines = []
    for path, report in probes:
        if "attached_despite" in report or report.get("overlap_allowed"):
            continue
        for target, results in report["targets"].items():
            for method in READOUT_NAMES:
                if target not in report["best_rule"] or "mse" not in results.get(method, {}):
                    continue  # direction targets (no MSE); a model without a future-size head
                lines.append(
                    f"- Forecasting on the test split of {_scored_on(report)} ({path.name}): "
                    f"{readout_verdict(report, target, method)}."
                )
    for path, report in evaluations:
        if "attached_despite" in report or report.get("overlap_allowed"):
            continue
        for mode, entry in report["modes"].items():
            ratios = {tf: e["ratio_to_best_baseline"] for tf, e in entry["timeframes"].items()}
            worst = max(ratios, key=lambda tf: ratios[tf])
            lines.append(
                f"- Reconstruction, `{mode}` masking, {report['split']} split of {_scored_on(report)} "
                f"({path.name}): {entry['overall']['ratio_to_best_baseline']:.3f} of the best simple baseline's MSE "
                f"overall, worst on {worst} ({ratios[worst]:.3f}; above 1: the baseline is better)."
            )
    if not any(r for _, r in probes if "attached_despite" not in r and not r.get("overlap_allowed")):
        lines.append(
            "- Unmeasured here: what the embeddings add to the best simple rule (attach a `stage1 probe` "
            "report of this model)."
        )
    if not any(r for _, r in evaluations if "attached_despite" not in r and not r.get("overlap_allowed")):
        lines.append(
            "- Unmeasured here: reconstruction against naive baselines (attach a `stage1 evaluate` report "
            "of this model)."
        )
    return lines
