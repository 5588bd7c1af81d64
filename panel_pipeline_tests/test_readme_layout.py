"""The README's layout block names every module and folder of the package, and nothing that is gone."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def layout_block() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Layout\n", 1)[1]
    return section.split("```\n", 2)[1].splitlines()


def listed_paths() -> set[str]:
    """Paths under panel_pipeline/ the block lists: a folder line opens a folder for the lines
    indented below it; each line's names come before its description (two spaces or more)."""
    folders: list[tuple[int, str]] = []
    paths: set[str] = set()
    for line in layout_block():
        indent = len(line) - len(line.lstrip())
        names = re.split(r"\s{2,}", line.strip())[0].split()
        while folders and folders[-1][0] >= indent:
            folders.pop()
        parent = folders[-1][1] if folders else ""
        for name in names:
            if name.endswith("/"):
                paths.add(parent + name)
                folders.append((indent, parent + name))
            elif name.endswith(".py"):
                paths.add(parent + name)
    return {path for path in paths if path.startswith("panel_pipeline/")}


def tree_paths() -> set[str]:
    package = ROOT / "panel_pipeline"
    paths = {"panel_pipeline/"}
    for path in package.rglob("*.py"):
        if path.name != "__init__.py" and "__pycache__" not in path.parts:
            paths.add(path.relative_to(ROOT).as_posix())
    for folder in package.rglob("*"):
        if folder.is_dir() and (folder / "__init__.py").exists():
            paths.add(folder.relative_to(ROOT).as_posix() + "/")
    return paths


def test_the_layout_block_matches_the_tree():
    listed, tree = listed_paths(), tree_paths()
    assert {"missing from the README": sorted(tree - listed), "gone from the tree": sorted(listed - tree)} == {
        "missing from the README": [],
        "gone from the tree": [],
    }
