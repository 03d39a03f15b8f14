"""The model card of an export: front matter the hub reads, the data from the manifest, the reports given."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from stage1_ds.card import write_card
from stage1_ds.cli import main
from stage1_ds.errors import CheckpointError
from stage1_ds.evaluation import evaluate, write_report
from stage1_ds.model.stage1 import Stage1Model, load_export_config


def _front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return dict(yaml.safe_load(card.split("---\n")[1]))


def test_a_converted_export_carries_a_card_with_the_manifests_instruments(
    trained_export: Path, synthetic_small: Path
) -> None:
    card = (trained_export / "README.md").read_text()
    front = _front_matter(card)
    assert front["library_name"] == "stage1_ds" and "time-series" in front["tags"] and "license" not in front
    manifest = json.loads((synthetic_small / "manifest.json").read_text())
    for name, record in manifest["instruments"].items():
        start, end = record["time_range_utc"]
        assert f"| {name} | {start} .. {end} |" in card
        assert record["splits"]["test"]["anchor_start_utc"] in card
    assert "from the synthetic market" in card and "| trained | 12 steps, last phase full" in card
    assert "# export: a Stage-1 multi-timeframe encoder" in card and "No report attached" in card
    assert (
        json.loads((trained_export / "data.json").read_text())["instruments"].keys()
        == manifest["instruments"].keys()
    )


def test_stage1_card_adds_the_reports_and_the_configs_license(
    trained_export: Path, synthetic_small: Path, tmp_path: Path
) -> None:
    export = tmp_path / "eurusd-encoder"
    shutil.copytree(trained_export, export)
    config = yaml.safe_load((export / "config.yaml").read_text())
    (export / "config.yaml").write_text(yaml.safe_dump({**config, "license": "apache-2.0"}))
    model = Stage1Model.from_pretrained(export)
    report = evaluate(model, synthetic_small, load_export_config(export), "test", batches=1, batch_size=8)
    write_report(report, tmp_path / "eval.json", None)
    probe_json = tmp_path / "probe.json"
    args = [
        "--model",
        str(export),
        "--data",
        str(synthetic_small),
        "--json",
        str(probe_json),
        "--max-anchors",
        "60",
    ]
    assert main(["probe", *args]) == 0
    assert main(["card", str(export), "--metrics", str(tmp_path / "eval.json"), str(probe_json)]) == 0
    card = (export / "README.md").read_text()
    assert _front_matter(card)["license"] == "apache-2.0"
    overall = report["modes"]["time"]["overall"]
    assert f"| time | overall | {overall['model']['mse']:.4f} | per_timeframe |" in card
    probed = json.loads(probe_json.read_text())
    rule = probed["best_rule"]["rv_60m"]["rule"]
    assert f"| rv_60m | {rule} | {probed['targets']['rv_60m'][rule]['r2']:.3f} |" in card
    assert "No report attached" not in card
    (tmp_path / "other.json").write_text("{}")
    with pytest.raises(CheckpointError, match=r"other\.json: neither a `stage1 evaluate` report"):
        write_card(export, [tmp_path / "other.json"])
