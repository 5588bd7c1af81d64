"""The package's boundaries: production code never imports the local stack, nothing leans on Dagster's
private modules, and the wheel ships no local stack.

Imports are read with `ast` (every `import` and `from ... import`, relative ones resolved), not grep,
so a comment or a string naming a module does not count and an aliased import does.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "panel_pipeline"
LOCAL = PACKAGE / "local"
CHECKED_FOR_PRIVATE_DAGSTER = (PACKAGE, ROOT / "panel_pipeline_tests", ROOT / "benchmarks")


def python_files(*folders: Path) -> list[Path]:
    return sorted(path for folder in folders for path in folder.rglob("*.py"))


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> Iterator[tuple[int, str]]:
    """(line, module) for each module the file imports; `from a import b` yields `a` and `a.b`
    (b may be a module), with relative imports resolved against the file's package."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            yield node.lineno, module
            for alias in node.names:
                yield node.lineno, f"{module}.{alias.name}"


def is_within(module: str, package: str) -> bool:
    return module == package or module.startswith(f"{package}.")


def is_private_dagster(module: str) -> bool:
    top, *rest = module.split(".")
    is_dagster = top == "dagster" or top.startswith("dagster_")
    return is_dagster and any(part.startswith("_") and not part.startswith("__") for part in rest)


def private_dagster_attributes(path: Path) -> Iterator[tuple[int, str]]:
    """`dg._core...`: a private attribute reached through a name bound to a Dagster package."""
    tree = ast.parse(path.read_text(), filename=str(path))
    bound = {
        alias.asname or alias.name: alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
        if alias.name.split(".")[0].startswith("dagster")
    }
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in bound
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
        ):
            yield node.lineno, f"{bound[node.value.id]}.{node.attr}"


def test_production_code_never_imports_the_local_stack():
    production = [path for path in python_files(PACKAGE) if LOCAL not in path.parents]
    assert production, "no production modules found"
    offending = [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for path in production
        for line, module in imported_modules(path)
        if is_within(module, "panel_pipeline.local")
    ]
    assert offending == []


def test_the_import_reader_sees_relative_and_aliased_imports(tmp_path, monkeypatch):
    """A positive control: the reader the boundary tests rely on finds what they look for."""
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    module = tmp_path / "panel_pipeline" / "mailer" / "x.py"
    module.parent.mkdir(parents=True)
    module.write_text(
        "from ..local import stack\nimport dagster._core.instance as inner\nimport dagster as dg\ndg._check\n"
    )
    assert {name for _line, name in imported_modules(module)} >= {"panel_pipeline.local", "panel_pipeline.local.stack"}
    assert any(is_private_dagster(name) for _line, name in imported_modules(module))
    assert [name for _line, name in private_dagster_attributes(module)] == ["dagster._check"]


def test_nothing_imports_a_private_dagster_module():
    offending = [
        f"{path.relative_to(ROOT)}:{line} uses {name}"
        for path in python_files(*CHECKED_FOR_PRIVATE_DAGSTER)
        for line, name in [*imported_modules(path), *private_dagster_attributes(path)]
        if is_private_dagster(name)
    ]
    assert offending == []


@pytest.mark.slow
def test_the_wheel_ships_no_local_stack(tmp_path):
    """Built from a copy of the sources (pip builds in the tree it is given), as `pip wheel .` would."""
    source = tmp_path / "source"
    shutil.copytree(PACKAGE, source / "panel_pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    completed = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(tmp_path / "dist"), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    (wheel,) = (tmp_path / "dist").glob("panel_pipeline-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "panel_pipeline/definitions.py" in names and "panel_pipeline/resources.py" in names
    assert [name for name in names if name.startswith(("panel_pipeline/local/", "panel_pipeline_tests/"))] == []


# The files that hold Dagster definitions; every other production module is pure logic.
DAGSTER_ROLES = {
    "definitions",
    "jobs",
    "assets",
    "sensors",
    "checks",
    "schedules",
    "resources",
    "metadata",
    "partitions",
}


def pure_modules() -> list[str]:
    return [
        module_name(path)
        for path in python_files(PACKAGE)
        if LOCAL not in path.parents and path.parent != PACKAGE and path.stem not in DAGSTER_ROLES
    ]


def test_package_init_files_import_nothing():
    offending = [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for path in PACKAGE.rglob("__init__.py")
        for line, module in imported_modules(path)
    ]
    assert offending == []


def test_pure_modules_import_without_dagster():
    """Importing every pure module (in a fresh interpreter) loads no Dagster: a run that needs only
    the sampler's quotas, or a tool that reads the templates, does not pay for the code location."""
    modules = pure_modules()
    assert "panel_pipeline.sampler.quotas" in modules and "panel_pipeline.shared.clock" in modules
    script = "\n".join(
        [
            "import importlib, sys",
            f"for name in {modules!r}:",
            "    importlib.import_module(name)",
            "    loaded = sorted(m for m in sys.modules if m == 'dagster' or m.startswith('dagster.'))",
            "    assert not loaded, f'{name} imports dagster'",
        ]
    )
    completed = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr[-2000:]
