"""Property-based tests over `mailings` documents (Hypothesis): generated documents, valid and not,
are each accepted or rejected with an error naming a field, never an unhandled exception (which the
asset would retry). One run on the pure check, one through the real mongod (the document stored and
read back as the backend would leave it, then checked, resolved, planned and written to the ledger
exactly as the `mailings` asset expands it). Each run prints how many documents it generated and how
many were refused, and how many recipients were failed alone, with a field-named reason."""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections import Counter
from typing import Any

import bson
import pytest
from bson import ObjectId
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from panel_pipeline.mailer.assets import find_template
from panel_pipeline.mailer.dispatch import plan_recipients
from panel_pipeline.mailer.recipients import resolve_recipients
from panel_pipeline.mailer.store import FAILED, PENDING, SUPPRESSED, MailLedger
from panel_pipeline.mailer.validation import LinkPolicy, check_mailing
from panel_pipeline.queue.store import RequestRejected
from panel_pipeline.shared.templates import load_templates

TEMPLATES = ("new_survey", "password_recovery", "welcome", "points_registered", "paid")
PATH = r"(\.[A-Za-z0-9_-]+|\[.*?\])*"  # .key, or ["odd key"]
MAILING_FIELD = re.compile(rf"^(template|kind|default_data|recipients|sample_id|invitation_for_sample){PATH}: \S")
RECIPIENT_FIELD = re.compile(
    rf"^(recipients\.\d+{PATH}|email|data{PATH}|member [0-9a-f]{{24}}: address|missing template data): \S"
)
LINKS = LinkPolicy.of(["survey.example", "panel.example", "*.example.org"])
USERS = [ObjectId() for _ in range(4)]
ADDRESSES = [
    "m0@panel.example",
    " M1@Panel.example",
    "stranger@panel.example",
    "STRANGER@panel.example ",
    "not-an-address",
    "a@b",
    "x@@panel.example",
    "bounce@simulator.amazonses.com",
    "",
]
DATA_KEYS = [
    "first_name",
    "survey_name",
    "duration_minutes",
    "points",
    "survey_url",
    "reset_url",
    "expires_in_minutes",
    "profile_survey_url",
    "dashboard_url",
    "amount",
    "unsubscribe_url",
    "html",
    "when",
    "ref",
]

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats()
    | st.text(max_size=12)
    | st.sampled_from(
        [
            "https://survey.example/s/1",
            "https://evil.example/x",
            "javascript:alert(1)",
            "http://panel.example/r",
            "https://survey.example/a b",
            "https://panel.example/r?token=t",
        ]
    )
    | st.datetimes(min_value=dt.datetime(1970, 1, 1), max_value=dt.datetime(2100, 1, 1))
    | st.builds(ObjectId)
    | st.binary(max_size=4)
    | st.decimals(allow_nan=False, places=2, max_value=10**6, min_value=-(10**6))
)
keys = st.sampled_from(DATA_KEYS) | st.text(max_size=6)
values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=3), max_leaves=6
)
data = st.dictionaries(keys, values, max_size=6) | values
ids = (
    st.sampled_from(USERS)
    | st.builds(ObjectId)
    | st.builds(lambda: str(ObjectId()))
    | st.sampled_from([str(u) for u in USERS])
    | scalars
)
entry = (
    st.fixed_dictionaries({}, optional={"user_id": ids, "email": st.sampled_from(ADDRESSES) | scalars, "data": data})
    | scalars
)
template = (
    st.sampled_from(TEMPLATES)
    | st.text(max_size=10)
    | st.lists(st.sampled_from(TEMPLATES), max_size=2)
    | scalars
    | st.dictionaries(st.sampled_from(["$in", "name"]), st.sampled_from(TEMPLATES), max_size=1)
)
wild_documents = st.fixed_dictionaries(
    {"template": template},
    optional={
        "kind": st.sampled_from(["bulk", "transactional", "newsletter", ""]) | scalars,
        "default_data": data,
        "recipients": st.lists(entry, max_size=6) | scalars | st.dictionaries(keys, values, max_size=2),
        "sample_id": ids,
        "invitation_for_sample": ids,
    },
)


ADDRESS_LIKE = re.compile(r"[^\s'\"<>]@[^\s'\"<>]")


small_data = st.dictionaries(keys, values, max_size=2)
listed_entry = st.fixed_dictionaries(
    {"user_id": st.sampled_from(USERS)}, optional={"data": small_data}
) | st.fixed_dictionaries({"email": st.sampled_from(ADDRESSES)}, optional={"data": small_data})


@st.composite
def plausible_documents(draw: st.DrawFn) -> dict[str, Any]:
    """What the backend means to write: a known template with its data, mostly right, sometimes
    missing a variable or carrying an odd value; listed recipients or an invitation."""
    name = draw(st.sampled_from(TEMPLATES))
    example = {
        k: v for k, v in load_templates()[name].example_data.items() if k not in ("unsubscribe_url", "first_name")
    }
    dropped = draw(st.sets(st.sampled_from(sorted(example)), max_size=1)) if draw(st.integers(0, 4)) == 0 else set()
    document: dict[str, Any] = {
        "template": name,
        "kind": draw(st.sampled_from(["bulk", "transactional"])),
        "default_data": {**{k: v for k, v in example.items() if k not in dropped}, **draw(small_data)},
    }
    if draw(st.integers(0, 3)) == 0:
        document |= {"invitation_for_sample": ObjectId(), "recipient_count": 3}
    else:
        document["recipients"] = draw(st.lists(listed_entry, min_size=1, max_size=5))
    return document


mailing_documents = plausible_documents() | wild_documents


def field_named(message: str, pattern: re.Pattern[str]) -> bool:
    """Starts with the field it is about, and repeats no address."""
    return bool(pattern.match(message)) and not ADDRESS_LIKE.search(message)


def test_the_document_check_names_a_field_or_accepts():
    tally: Counter[str] = Counter()

    @settings(max_examples=1500, deadline=None, database=None)
    @given(mailing_documents)
    def check(document: dict[str, Any]) -> None:
        tally["generated"] += 1
        try:
            check_mailing(document, TEMPLATES)
        except RequestRejected as rejected:
            assert field_named(str(rejected), MAILING_FIELD), str(rejected)
            tally["refused, field named"] += 1
        else:
            tally["accepted"] += 1

    check()
    print(f"\nmailings, pure check: {dict(tally)}")
    assert tally["generated"] == tally["accepted"] + tally["refused, field named"]
    assert tally["accepted"] and tally["refused, field named"]


@pytest.fixture
def property_db(mongo_client):
    name = f"props_{uuid.uuid4().hex[:8]}"
    db = mongo_client[name]
    db.users.insert_many(
        [
            {"_id": USERS[0], "email": "m0@panel.example", "first_name": "M0", "status": "active"},
            {"_id": USERS[1], "email": "m1@panel.example", "first_name": "M1", "status": "active"},
            {"_id": USERS[2], "email": "gone@panel.example", "first_name": "G", "status": "unsubscribed"},
            {"_id": USERS[3], "email": "bro ken@panel.example", "first_name": "B", "status": "active"},
        ]
    )
    yield db
    mongo_client.drop_database(name)


def test_documents_stored_in_mongo_are_expanded_or_refused_naming_a_field(property_db):
    db = property_db
    ledger = MailLedger(db.mail_log, db.mail_events)
    ledger.ensure_indexes()
    tally: Counter[str] = Counter()

    @settings(max_examples=400, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
    @given(mailing_documents, st.lists(ids, max_size=4))
    def expand(document: dict[str, Any], sample_member_ids: list[Any]) -> None:
        try:
            stored_id = db.mailings.insert_one({"processed": False, **document}).inserted_id
        except (bson.errors.InvalidDocument, OverflowError, bson.errors.InvalidStringData):
            return  # Mongo would not hold it: the backend cannot have written it
        tally["generated"] += 1
        mailing = db.mailings.find_one({"_id": stored_id})
        if isinstance(mailing.get("invitation_for_sample"), ObjectId) and not mailing.get("recipients"):
            members = [*USERS, *(uid for uid in sample_member_ids if isinstance(uid, ObjectId))]
            db.sample_members.insert_many(
                [
                    {"sample_id": mailing["invitation_for_sample"], "user_id": uid, "mailing_id": stored_id}
                    for uid in dict.fromkeys(members)
                ]
            )
        try:
            template = find_template(mailing)
            bulk = mailing.get("kind", "bulk") != "transactional"
            recipients = resolve_recipients(
                db, mailing, (lambda member: f"https://panel.example/u/{member}") if bulk else None
            )
            for chunk in recipients.chunks():
                planned = plan_recipients(template, chunk, mailing.get("default_data"), bulk, LINKS)
                ledger.add_recipients(stored_id, planned)
                for row in planned:
                    assert row.status in (PENDING, FAILED, SUPPRESSED)
                    if row.status == FAILED:
                        assert field_named(row.error, RECIPIENT_FIELD), row.error
                        tally["recipients failed alone, field named"] += 1
                    tally[f"recipients {row.status}"] += 1
        except RequestRejected as rejected:
            assert field_named(str(rejected), MAILING_FIELD), str(rejected)
            tally["refused, field named"] += 1
        else:
            tally["accepted"] += 1

    expand()
    print(f"\nmailings through mongod: {dict(tally)}")
    assert tally["generated"] == tally["accepted"] + tally["refused, field named"]
    assert tally["accepted"] and tally["refused, field named"] and tally["recipients failed alone, field named"]
