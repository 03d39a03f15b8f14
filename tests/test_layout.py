"""docs/layout.md's tree is the tree: every file of the package, the scripts, configs, launchers and
examples named once, and nothing that is not there."""

from __future__ import annotations

import re

from conftest import REPO

LISTED = ("stage1_ds", "configs", "ds_configs", "launch", "scripts", "examples")


def _tree_paths() -> set[str]:
    text = (REPO / "docs" / "layout.md").read_text()
    block = text.split("<!-- tree -->", 1)[1].split("<!-- /tree -->", 1)[0]
    paths, stack = set(), []
    for line in block.splitlines():
        match = re.match(r"^( *)(\S+)", line)
        if not match or line.startswith("```"):
            continue
        depth, name = len(match.group(1)) // 2, match.group(2)
        stack = [*stack[:depth], name]
        if not name.endswith("/"):
            paths.add("".join(stack))
    return paths


def test_the_layout_names_every_file_and_only_files_that_exist() -> None:
    actual = {
        str(path.relative_to(REPO))
        for top in LISTED
        for path in (REPO / top).rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and not path.name.endswith(".pyc")
    }
    listed = {path for path in _tree_paths() if path.startswith(tuple(f"{top}/" for top in LISTED))}
    assert sorted(actual - listed) == [], "files the layout does not name"
    assert sorted(listed - actual) == [], "files the layout names that do not exist"
