"""Property tests over `transactions` documents (the pure validation part) and the metadata scrubber.

A generated document, valid or not, is either parsed into a Transaction whose ids are SurveyGizmo
ids (positive integers as digits) and whose member id is an ObjectId, or refused with a
TransactionError whose every part starts with a field name. Never another exception: the run
would release it for a retry instead of failing it at once.
"""

from __future__ import annotations

import datetime as dt
import re
from collections import Counter
from typing import Any

import pytest
from bson import ObjectId
from hypothesis import given, settings
from hypothesis import strategies as st

from panel_pipeline.extractor.review import VALUE, without_values
from panel_pipeline.extractor.transactions import (
    SURVEYGIZMO_ID,
    Transaction,
    TransactionError,
    parse_transaction,
)

FIELDS = ("user_id", "survey_id", "response_id", "created_at")
PART = re.compile(r"^(user_id|survey_id|response_id|created_at): \S")
SEEN: Counter[str] = Counter()

sg_id = st.integers(min_value=1, max_value=2**63 - 1) | st.integers(min_value=1, max_value=10**12).map(str)
anything = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats()
    | st.text(max_size=12)
    | st.datetimes()
    | st.builds(ObjectId)
    | st.sampled_from(["0", "007", "12a", " 12", "1e3", "-1", "../1", "0" * 24, "f" * 24]),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=4), children, max_size=3),
    max_leaves=5,
)
valid = st.fixed_dictionaries(
    {
        "_id": st.builds(ObjectId),
        "user_id": st.builds(ObjectId) | st.builds(lambda: str(ObjectId())),
        "survey_id": sg_id,
        "response_id": sg_id,
    },
    optional={
        "created_at": st.datetimes(timezones=st.just(dt.UTC)),
        "points": st.integers(0, 1000),
        "processed": st.just(False),
    },
)


@st.composite
def mutated(draw: Any) -> dict[str, Any]:
    document = dict(draw(valid))
    for field in draw(st.lists(st.sampled_from(FIELDS + ("_id",)), min_size=1, max_size=3, unique=True)):
        if draw(st.booleans()):
            document[field] = draw(anything)
        else:
            document.pop(field, None)
    return document


def check(document: dict[str, Any]) -> None:
    try:
        parsed = parse_transaction(document)
    except TransactionError as refused:
        SEEN["refused"] += 1
        for part in str(refused).split("; "):
            assert PART.match(part), part
        return
    SEEN["accepted"] += 1
    assert isinstance(parsed, Transaction) and isinstance(parsed.user_id, ObjectId)
    assert SURVEYGIZMO_ID.match(parsed.survey_id) and SURVEYGIZMO_ID.match(parsed.response_id)
    assert parsed.created_at.tzinfo is not None


@settings(max_examples=300, deadline=None)
@given(valid)
def test_valid_transactions_parse(document: dict[str, Any]) -> None:
    SEEN["valid generated"] += 1
    check(document)
    assert SEEN["refused"] == 0


@settings(max_examples=500, deadline=None)
@given(mutated())
def test_mutated_transactions_parse_or_are_refused_naming_the_field(document: dict[str, Any]) -> None:
    SEEN["mutated generated"] += 1
    check(document)


def test_report_the_counts(capsys: pytest.CaptureFixture[str]) -> None:
    generated = SEEN["valid generated"] + SEEN["mutated generated"]
    with capsys.disabled():
        print(
            f"\ntransactions documents: {generated} generated "
            f"({SEEN['valid generated']} valid, {SEEN['mutated generated']} mutated); "
            f"{SEEN['accepted']} accepted, {SEEN['refused']} refused naming a field"
        )
    if generated:
        assert SEEN["accepted"] + SEEN["refused"] == generated


@settings(max_examples=300, deadline=None)
@given(anything, st.text(alphabet="abc :;()-", max_size=10))
def test_without_values_leaves_no_repr_of_a_value(value: Any, context: str) -> None:
    """Whatever a reason quotes with !r (an answer, a record), the scrubbed text does not contain it."""
    reason = f"question 5{context}: answer {value!r} is not text"
    scrubbed = without_values(reason)
    if isinstance(value, str | list | dict):
        assert repr(value) not in scrubbed or repr(value) in (VALUE, "''")
        assert scrubbed.startswith("question 5") and scrubbed.endswith(" is not text")


@pytest.mark.parametrize(
    ("reason", "scrubbed"),
    [
        (
            "question 5: answer {'text': 'I vote Labour'} is not text or a number",
            "question 5: answer <value> is not text or a number",
        ),
        ("status 'Abandoned' is not one of Complete, Partial", "status <value> is not one of Complete, Partial"),
        (
            'date_submitted: not a SurveyGizmo timestamp: "it\'s \\" late"',
            "date_submitted: not a SurveyGizmo timestamp: <value>",
        ),
        ("unknown member (panel id 42, contact id missing)", "unknown member (panel id 42, contact id missing)"),
        ("the member's answer [1, ['x', '}']] is odd", "the member's answer <value> is odd"),
    ],
)
def test_without_values_examples(reason: str, scrubbed: str) -> None:
    assert without_values(reason) == scrubbed


def test_a_refusal_quotes_no_address() -> None:
    with pytest.raises(TransactionError) as refused:
        parse_transaction({"_id": ObjectId(), "user_id": "jo@example.org", "survey_id": "1", "response_id": "2"})
    assert str(refused.value).startswith("user_id: must be a member's id") and "example.org" not in str(refused.value)
