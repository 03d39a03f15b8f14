"""The model card of an export: front matter the hub reads, the data from the manifest, the reports given."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file, save_file

from stage1_ds.card import write_card
from stage1_ds.cli import main
from stage1_ds.errors import CheckpointError
from stage1_ds.model.stage1 import export_identity


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


def _evaluate(export: Path, data: Path, out: Path) -> Path:
    """A `stage1 evaluate` report of ``export`` on ``data``'s test split (`time` mode, one batch)."""
    common = ["--model", str(export), "--data", str(data), "--split", "test", "--json", str(out)]
    assert main(["evaluate", *common, "--batches", "1", "--batch-size", "8", "--mode", "time"]) == 0
    return out


def _probe(export: Path, data: Path, out: Path) -> Path:
    """A `stage1 probe` report of ``export`` on ``data`` (60 anchors per split)."""
    assert (
        main(
            ["probe", "--model", str(export), "--data", str(data), "--json", str(out), "--max-anchors", "60"]
        )
        == 0
    )
    return out


@pytest.fixture(scope="module")
def reported(trained_export: Path, synthetic_small: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of `trained_export` (a copy is the same model) with a license in its config, and this
    model's evaluate and probe reports beside it (``eval.json``, ``probe.json``)."""
    root = tmp_path_factory.mktemp("reported")
    export = root / "eurusd-encoder"
    shutil.copytree(trained_export, export)
    config = yaml.safe_load((export / "config.yaml").read_text())
    (export / "config.yaml").write_text(yaml.safe_dump({**config, "license": "apache-2.0"}))
    _evaluate(export, synthetic_small, root / "eval.json")
    _probe(export, synthetic_small, root / "probe.json")
    return export


def test_every_report_records_the_model_and_the_data_it_measured(
    reported: Path, trained_export: Path, synthetic_small: Path, tmp_path: Path
) -> None:
    """evaluate, probe and encode record the export (resolved) and its content hash, and each data folder
    with its manifest's hash; a copy of an export is the same model, changed weights another."""
    manifest = hashlib.sha256((synthetic_small / "manifest.json").read_bytes()).hexdigest()
    encoded = tmp_path / "encoded"
    assert main(["encode", "--model", str(reported), "--data", str(synthetic_small), "--split", "test",
                 "--out", str(encoded), "--max-batches", "1"]) == 0  # fmt: skip
    for path in (reported.parent / "eval.json", reported.parent / "probe.json", encoded / "encoding.json"):
        provenance = json.loads(path.read_text())["provenance"]
        assert provenance["model"] == export_identity(reported), path
        assert provenance["model"]["export"] == str(reported.resolve())
        assert provenance["data"] == [{"folder": str(synthetic_small.resolve()), "manifest_sha256": manifest}]
    assert export_identity(reported)["sha256"] == export_identity(trained_export)["sha256"]
    changed = tmp_path / "changed"
    shutil.copytree(trained_export, changed)
    weights = load_file(changed / "model.safetensors")
    first = next(iter(weights))
    weights[first] = weights[first] + 1e-3
    save_file(weights, changed / "model.safetensors")
    assert export_identity(changed)["sha256"] != export_identity(trained_export)["sha256"]


def test_stage1_card_adds_the_reports_and_the_configs_license(reported: Path, tmp_path: Path) -> None:
    eval_json, probe_json = reported.parent / "eval.json", reported.parent / "probe.json"
    assert main(["card", str(reported), "--metrics", str(eval_json), str(probe_json)]) == 0
    card = (reported / "README.md").read_text()
    assert _front_matter(card)["license"] == "apache-2.0"
    overall = json.loads(eval_json.read_text())["modes"]["time"]["overall"]
    assert f"| time | overall | {overall['model']['mse']:.4f} | per_timeframe |" in card
    probed = json.loads(probe_json.read_text())
    rule = probed["best_rule"]["rv_60m"]["rule"]
    assert f"| rv_60m | {rule} | {probed['targets']['rv_60m'][rule]['r2']:.3f} |" in card
    assert "No report attached" not in card and "Attached with --force" not in card
    (tmp_path / "other.json").write_text("{}")
    with pytest.raises(CheckpointError, match=r"other\.json: a report that records no model"):
        write_card(reported, [tmp_path / "other.json"])
    forced = {**json.loads(eval_json.read_text()), "provenance": {}}
    (tmp_path / "old.json").write_text(json.dumps({"provenance": {}, "nothing": 1}))
    with pytest.raises(CheckpointError, match=r"old\.json: neither a `stage1 evaluate` report"):
        write_card(reported, [tmp_path / "old.json"], force=True)
    (tmp_path / "unrecorded.json").write_text(json.dumps(forced))
    write_card(reported, [tmp_path / "unrecorded.json"], force=True)
    assert "Attached with --force: a report that records no model" in (reported / "README.md").read_text()


def test_the_card_refuses_a_report_of_another_model_unless_forced(
    reported: Path, synthetic_small: Path, tmp_path: Path
) -> None:
    """A report of an export whose weights differ (another model) is refused naming both; --force attaches
    it under a warning, and it does not count as this model's measurement."""
    other = tmp_path / "other-encoder"
    shutil.copytree(reported, other)
    weights = load_file(other / "model.safetensors")
    first = next(iter(weights))
    weights[first] = weights[first] * 1.01
    save_file(weights, other / "model.safetensors")
    probe_json = _probe(other, synthetic_small, tmp_path / "probe.json")
    refused = ["card", str(reported), "--metrics", str(probe_json)]
    with pytest.raises(CheckpointError) as error:
        write_card(reported, [probe_json])
    message = str(error.value)
    assert (
        f"a report of another model ({other.resolve()}, sha256 {export_identity(other)['sha256'][:12]})"
        in message
    )
    assert f"this card is of {reported.resolve()}" in message and "--force" in message
    assert main(refused) == 2
    assert main([*refused, "--force"]) == 0
    card = (reported / "README.md").read_text()
    assert f"Attached with --force: a report of another model ({other.resolve()}" in card
    assert "Unmeasured here: what the embeddings add" in card, "another model's figures are not this one's"


def test_the_card_says_where_the_model_is_what_it_saw_and_what_was_measured(
    reported: Path, synthetic_small: Path, tmp_path: Path
) -> None:
    """The usage line loads the export by its resolved path (it runs from any folder); the card gives each
    instrument's train, val and test anchors, the windows seen (steps x batch x ranks), and limitations from
    the attached reports' figures, or says they are unmeasured."""
    manifest = json.loads((synthetic_small / "manifest.json").read_text())
    config = yaml.safe_load((reported / "config.yaml").read_text())
    write_card(reported)
    card = (reported / "README.md").read_text()
    assert f'Encoder.from_pretrained("{reported.resolve()}")' in card
    for name, record in manifest["instruments"].items():
        splits = record["splits"]
        periods = " | ".join(
            f"{splits[s]['anchor_start_utc']} .. {splits[s]['end_utc']}" for s in ("train", "val", "test")
        )
        assert (
            f"| {name} | {record['time_range_utc'][0]} .. {record['time_range_utc'][1]} | {periods} |" in card
        )
    batch = config["train"]["micro_batch_size"]
    assert (
        f"| windows seen | {12 * batch:,} (12 micro batches per rank x {batch} windows x 1 rank(s)) |" in card
    )
    assert "Unmeasured here: what the embeddings add" in card and "Unmeasured here: reconstruction" in card
    eval_json, probe_json = reported.parent / "eval.json", reported.parent / "probe.json"
    write_card(reported, [eval_json, probe_json])
    card = (reported / "README.md").read_text()
    assert "Unmeasured here" not in card
    probed = json.loads(probe_json.read_text())["targets"]["rv_60m"]
    rule = json.loads(probe_json.read_text())["best_rule"]["rv_60m"]["rule"]
    gain = 100 * (1 - probed["best_rule_plus_embeddings"]["mse"] / probed[rule]["mse"])
    assert (
        f"- Forecasting on the test split of {synthetic_small.name} (probe.json): `rv_60m`: the embeddings"
        in card
    )
    probe_report = json.loads(probe_json.read_text())
    if probe_report["alphas"]["rv_60m"]["best_rule_plus_embeddings"] is None:  # declined on val
        assert f"the embeddings declined on val (no correction: the forecast is `{rule}`'s own)" in card
    else:
        assert f"the embeddings on top of `{rule}`: " in card and f"MSE {gain:+.1f}%" in card
    overlapping = {
        **json.loads(eval_json.read_text()),
        "overlap": ["SYNTH: val overlaps"],
        "overlap_allowed": True,
    }
    (tmp_path / "own_data.json").write_text(json.dumps(overlapping))
    write_card(reported, [tmp_path / "own_data.json"])
    own = (reported / "README.md").read_text()
    assert (
        "**Scored on data the model was trained or validated on (--allow-overlap): SYNTH: val overlaps.**"
        in own
    )
    assert "Unmeasured here: reconstruction" in own, "a score on its own data is not a measurement of it"
    ratio = json.loads(eval_json.read_text())["modes"]["time"]["overall"]["ratio_to_best_baseline"]
    assert (
        f"- Reconstruction, `time` masking, test split of {synthetic_small.name} (eval.json): {ratio:.3f}"
        in card
    )


def test_convert_names_the_exports_final_folder_in_the_usage_line(trained_export: Path) -> None:
    """The card is written in a staging folder that is then renamed: the usage line names the final one."""
    card = (trained_export / "README.md").read_text()
    assert f'Encoder.from_pretrained("{trained_export.resolve()}")' in card
    assert ".partial" not in card
