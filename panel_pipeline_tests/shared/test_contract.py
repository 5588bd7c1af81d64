"""docs/contract.md and panel_pipeline/shared/contract.py say the same: SHARED_COLLECTIONS are the page's
collection sections and PIPELINE_COLLECTIONS the rows of its pipeline-only table, every collection the package
opens (`db.<name>`, `db[<name>]`) is in one of the two, every status and kind is on the page, and the page's
profile table lists exactly the module's values."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from panel_pipeline.shared import contract

ROOT = Path(__file__).resolve().parents[2]
PAGE = (ROOT / "docs" / "contract.md").read_text()
PIPELINE_SECTION_TITLE = "## Collections only the pipeline uses"
SHARED_PART, PIPELINE_SECTION = PAGE.split(PIPELINE_SECTION_TITLE, 1)


def shared_collections_documented() -> set[str]:
    """Collections with a section of their own (a heading such as "## `users`") before the pipeline's section."""
    return set(re.findall(r"^## `([a-z_]+)`", SHARED_PART, flags=re.MULTILINE))


def pipeline_collections_documented() -> set[str]:
    """Collections named in the first cell of a row of the pipeline's table."""
    first_cells = re.findall(r"^\| ([^|]+) \|", PIPELINE_SECTION.split("\n## ", 1)[0], flags=re.MULTILINE)
    return {name for cell in first_cells for name in re.findall(r"`([a-z_]+)`", cell)}


def named_collection(key: ast.expr, where: ast.expr) -> str:
    """A collection named by a string literal or a contract constant; anything else fails the test (unlistable)."""
    if isinstance(key, ast.Constant) and isinstance(key.value, str):
        return key.value
    if isinstance(key, ast.Name) and isinstance(getattr(contract, key.id, None), str):
        return str(getattr(contract, key.id))
    raise AssertionError(f"{ast.unparse(where)}: name the collection with a contract constant")


def collection_name(node: ast.expr) -> str | None:
    """The collection that `db.<name>` or `db[<name>]` opens, if node is one (queues: QUEUED_COLLECTIONS)."""
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "db":
        return node.attr
    if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id == "db":
        return named_collection(node.slice, node)
    return None


def collections_the_code_uses() -> dict[str, str]:
    """Each collection the package opens, with the first place that opens it."""
    used: dict[str, str] = {}
    for path in sorted((ROOT / "panel_pipeline").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            name = collection_name(node) if isinstance(node, ast.expr) else None
            if name is not None:
                used.setdefault(name, f"{path.relative_to(ROOT)}:{node.lineno}")
    return used


def profile_table() -> dict[str, set[str]]:
    """The page's `profile` table: each attribute named in a row, with the backquoted values of that row."""
    section = PAGE.split("`profile` values", 1)[1].split("\n\n", 2)[1]
    rows: dict[str, set[str]] = {}
    for line in section.splitlines()[2:]:
        name_cell, values_cell = line.strip("|").split("|", 1)
        names = re.findall(r"`([a-z_0-9]+)`", name_cell)
        values = set(re.findall(r"`([^`]+)`", values_cell)) - set(contract.PROFILE_CATEGORIES) - {"birth_year", "age"}
        rows.update({name: values for name in names})
    return rows


def test_the_shared_and_pipeline_collections_are_apart():
    assert not set(contract.SHARED_COLLECTIONS) & set(contract.PIPELINE_COLLECTIONS)
    assert set(contract.QUEUED_COLLECTIONS) <= set(contract.SHARED_COLLECTIONS)


def test_each_shared_collection_has_its_section_and_no_other():
    assert shared_collections_documented() == set(contract.SHARED_COLLECTIONS)


def test_each_pipeline_collection_is_in_the_pipeline_table_and_no_other():
    assert pipeline_collections_documented() == set(contract.PIPELINE_COLLECTIONS)


def test_every_collection_the_code_uses_is_listed():
    listed = {*contract.SHARED_COLLECTIONS, *contract.PIPELINE_COLLECTIONS}
    unlisted = {name: where for name, where in collections_the_code_uses().items() if name not in listed}
    assert not unlisted


@pytest.mark.parametrize("value", [*contract.QUEUE_STATUSES, *contract.MEMBER_STATUSES, *contract.MAIL_KINDS])
def test_every_status_and_kind_is_documented(value):
    assert f"`{value}`" in PAGE


def test_the_profile_table_lists_exactly_the_contract_values():
    documented = profile_table()
    for attribute, values in contract.PROFILE_CATEGORIES.items():
        assert attribute in documented, attribute
        # vote_2019 and vote_2024 share a row: each one's values are among the row's.
        assert set(values) <= documented[attribute], (attribute, set(values) - documented[attribute])
    shared_rows = {frozenset(v) for v in documented.values()}
    for row_values in shared_rows:
        owners = [a for a, v in documented.items() if v == row_values and a in contract.PROFILE_CATEGORIES]
        if owners:
            union = set().union(*(contract.PROFILE_CATEGORIES[a] for a in owners))
            assert row_values == union, (owners, row_values ^ union)
