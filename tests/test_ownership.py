"""Only what the tool made is replaced or removed: `--force` replaces a command's own files in a folder it
made and keeps the user's; a folder (or a ``.partial`` one) the tool did not make is refused, untouched."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from stage1_ds.cli import main
from stage1_ds.outputs import MARK, made_by


def _user_folder(path: Path) -> dict[str, str]:
    path.mkdir(parents=True)
    files = {"notes.txt": "mine", "results.csv": "a,b\n1,2\n"}
    for name, text in files.items():
        (path / name).write_text(text)
    return files


def _intact(path: Path, files: dict[str, str]) -> bool:
    return all((path / name).read_text() == text for name, text in files.items())


def test_convert_force_replaces_its_own_files_and_keeps_the_users(
    trained_export: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = trained_export.parent
    export = tmp_path / "export"
    assert main(["convert", str(run), "--out", str(export)]) == 0
    assert made_by(export) == "stage1 convert"
    (export / "eval_test.json").write_text("{}")  # a report the user (or `stage1 evaluate`) put beside it
    assert main(["convert", str(run), "--out", str(export), "--force"]) == 0
    assert (export / "eval_test.json").read_text() == "{}" and (export / "model.safetensors").is_file()
    assert not export.with_name("export.partial").exists()

    theirs = tmp_path / "theirs"
    files = _user_folder(theirs)
    assert main(["convert", str(run), "--out", str(theirs), "--force"]) == 2
    assert f"was not made by stage1 convert (it has no {MARK}" in capsys.readouterr().err
    assert _intact(theirs, files) and sorted(p.name for p in theirs.iterdir()) == sorted(files)


def test_convert_never_removes_a_partial_folder_it_did_not_make(
    trained_export: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    staging = tmp_path / "export.partial"
    files = _user_folder(staging)
    assert main(["convert", str(trained_export.parent), "--out", str(tmp_path / "export")]) == 2
    assert "export.partial: exists and was not made by stage1 convert" in capsys.readouterr().err
    assert _intact(staging, files) and not (tmp_path / "export").exists()
    # One an interrupted convert left (it carries the mark) is removed and the export written.
    shutil.rmtree(staging)
    staging.mkdir()
    (staging / MARK).write_text('{"made_by": "stage1 convert", "files": []}')
    assert main(["convert", str(trained_export.parent), "--out", str(tmp_path / "export")]) == 0
    assert not staging.exists()


def test_prepare_refuses_a_users_parts_folder_and_a_folder_it_did_not_prepare(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    synthetic = ["prepare", "--synthetic", "--days", "60", "--window-bars", "16"]
    out = tmp_path / "data"
    files = _user_folder(out / "parts.partial")
    assert main([*synthetic, "--out", str(out)]) == 2
    assert "parts.partial: exists and was not made by stage1 prepare" in capsys.readouterr().err
    assert _intact(out / "parts.partial", files)
    shutil.rmtree(out / "parts.partial")
    (out / "mine.txt").write_text("keep")
    assert main([*synthetic, "--out", str(out)]) == 0 and made_by(out) == "stage1 prepare"
    assert main([*synthetic, "--out", str(out), "--force", "--seed", "3"]) == 0
    assert (out / "mine.txt").read_text() == "keep", "--force replaces the prepared files only"

    foreign = tmp_path / "foreign"
    files = _user_folder(foreign)
    (foreign / "manifest.json").write_text("{}")
    assert main([*synthetic, "--out", str(foreign), "--force"]) == 2
    assert "was not made by stage1 prepare" in capsys.readouterr().err
    assert _intact(foreign, files) and (foreign / "manifest.json").read_text() == "{}"


def test_demo_never_removes_a_run_folder_it_did_not_make(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = _user_folder(tmp_path / "run")
    assert main(["demo", "--out", str(tmp_path), "train.max_steps=1"]) == 2
    assert "run: exists and was not made by stage1 train" in capsys.readouterr().err
    assert _intact(tmp_path / "run", files)
