"""docs/contract.md and panel_pipeline/shared/contract.py say the same: every collection, status and
profile value in the module is on the page, and the page's profile table lists exactly the module's values."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from panel_pipeline.shared import contract

PAGE = (Path(__file__).resolve().parents[2] / "docs" / "contract.md").read_text()
COLLECTIONS = [
    value
    for name, value in vars(contract).items()
    if name.isupper()
    and isinstance(value, str)
    and name
    not in {
        "PROCESSING",
        "RETRY",
        "POSTPONED",
        "DONE",
        "FAILED",
        "ACTIVE",
        "UNSUBSCRIBED",
        "BOUNCED",
        "DELETED",
        "BULK",
        "TRANSACTIONAL",
    }
]


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


@pytest.mark.parametrize("collection", COLLECTIONS)
def test_every_collection_is_documented(collection):
    assert f"`{collection}`" in PAGE


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
