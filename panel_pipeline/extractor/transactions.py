"""A `transactions` document (a survey completion the backend queued) as a validated value.

Pure: no Mongo, no HTTP, no Dagster. `parse_transaction` returns a `Transaction` or raises
`TransactionError` whose message starts with the field (``response_id: must be a SurveyGizmo id
(a positive integer), got 'abc'``), so the run fails the document at once instead of retrying it.
SurveyGizmo ids (survey and response) are positive integers, written as a number or as its digits
(research note §8.1: ids arrive as int or string, stored as string). `user_id` is the member's
`users._id`: an ObjectId, or its 24 hex digits.

`response_deadline` is how long a response SurveyGizmo does not list yet is waited for: Alchemer
says a new response can take minutes to appear in the API, so a 404 within `wait` of the
transaction's `created_at` is retried (postponed), after it the transaction fails naming the id.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bson import ObjectId

from panel_pipeline.shared.mongo import as_utc
from panel_pipeline.shared.privacy import redact

SURVEYGIZMO_ID = re.compile(r"^[1-9][0-9]{0,18}$")  # a positive integer that fits an int64
OBJECT_ID = re.compile(r"^[0-9a-fA-F]{24}$")


class TransactionError(ValueError):
    """The document itself is wrong; the message names the field."""


@dataclass(frozen=True)
class Transaction:
    user_id: ObjectId
    survey_id: str
    response_id: str
    created_at: dt.datetime  # aware, UTC


def parse_transaction(document: Mapping[str, Any]) -> Transaction:
    problems: list[str] = []
    fields: dict[str, Any] = {}
    for name, parse in (("user_id", member_id), ("survey_id", surveygizmo_id), ("response_id", surveygizmo_id)):
        try:
            fields[name] = parse(document.get(name))
        except ValueError as bad:
            problems.append(f"{name}: {bad}")
    try:
        fields["created_at"] = created_at(document.get("created_at"), document.get("_id"))
    except ValueError as bad:
        problems.append(f"created_at: {bad}")
    if problems:
        raise TransactionError(redact("; ".join(problems)))  # a wrong value may be anything, an address too
    return Transaction(**fields)


def surveygizmo_id(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 2**63:
        return str(value)
    if isinstance(value, str) and SURVEYGIZMO_ID.match(value):
        return value
    raise ValueError(f"must be a SurveyGizmo id (a positive integer, as a number or its digits), got {_shown(value)}")


def member_id(value: Any) -> ObjectId:
    if isinstance(value, ObjectId):
        return value
    if isinstance(value, str) and OBJECT_ID.match(value):
        return ObjectId(value)
    raise ValueError(f"must be a member's id (an ObjectId), got {_shown(value)}")


def created_at(value: Any, document_id: Any) -> dt.datetime:
    """When the backend queued it; without one, the time in the document's ObjectId."""
    if value is None:
        if isinstance(document_id, ObjectId):
            return document_id.generation_time
        raise ValueError("missing, and the document id is no ObjectId to read the time from")
    if not isinstance(value, dt.datetime):
        raise ValueError(f"must be a date (BSON date, UTC), got {_shown(value)}")
    return as_utc(value)


def response_deadline(transaction: Transaction, wait: dt.timedelta) -> dt.datetime:
    return transaction.created_at + wait


def _shown(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, str):
        return repr(value if len(value) <= 30 else value[:30] + "…")
    if isinstance(value, bool | int | float):
        text = repr(value)
        return text if len(text) <= 30 else f"a {len(text)}-digit number"
    return f"a value of type {type(value).__name__}"
