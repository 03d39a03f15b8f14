"""The quality reports: each experiment owns its files under docs/quality/, and regenerating one of them
leaves every other file of docs/ byte-identical."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from conftest import REPO
from stage1_ds.experiments.harness import render_again
from stage1_ds.experiments.registry import EXPERIMENTS

DOCS = REPO / "docs"
STORED = sorted(name for name in EXPERIMENTS if (DOCS / "quality" / f"{name}.json").is_file())


def _snapshot(root: Path) -> dict[Path, bytes]:
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_every_experiment_owns_files_of_its_own_name() -> None:
    owned = [path for e in EXPERIMENTS.values() for path in e.paths().values()]
    assert len(owned) == len(set(owned)), "two experiments would write one file"
    assert all(e.name == name for name, e in EXPERIMENTS.items())
    assert {"context", "ladder", "market_rule", "stage2"} <= set(STORED), (
        "the current reports keep their results"
    )


@pytest.mark.parametrize("name", STORED)
def test_regenerating_one_report_changes_no_other_file_and_reproduces_its_own(
    name: str, tmp_path: Path
) -> None:
    """Rewriting a report from its stored results (`scripts/quality_report.py --experiment NAME --render`)
    writes that experiment's files only, and its markdown comes out as committed: every report under
    docs/quality/ is generated, never edited by hand."""
    docs = tmp_path / "docs"
    shutil.copytree(DOCS, docs)
    before = _snapshot(docs)
    experiment = EXPERIMENTS[name]
    written = render_again(experiment, docs / "quality")
    after = _snapshot(docs)
    own = {path.relative_to(docs) for path in written}
    assert {path for path in before if before[path] != after.get(path)} <= own
    assert set(after) - set(before) <= own
    assert after[Path("quality") / f"{name}.md"] == before[Path("quality") / f"{name}.md"]
