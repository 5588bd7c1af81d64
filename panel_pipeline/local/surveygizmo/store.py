"""The local SurveyGizmo server's in-memory account: surveys, their responses, and listings.

Tests add, edit and delete responses while a scan is running, so every method takes the store's
lock, and a listing is computed once per state of the store (`_version` moves on every change),
not once per page. Deletes are soft, as SurveyGizmo's are: a deleted response is neither listed
nor served, and can be restored. `create_response` is the API's create (PUT): it numbers the new
response after the survey's highest id and writes the record in the v5 shape the GETs serve.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

from panel_pipeline.extractor.responses import format_timestamp, parse_timestamp
from panel_pipeline.local.surveygizmo.filters import Condition, matches
from panel_pipeline.shared.clock import Clock


@dataclass
class StoredResponse:
    record: dict[str, Any]
    submitted_at: dt.datetime | None
    deleted: bool = False


class ResponseStore:
    """Surveys and their responses, records kept as given (malformed or not)."""

    def __init__(self, zone: ZoneInfo, clock: Clock) -> None:
        self.zone = zone
        self.clock = clock
        self._lock = threading.RLock()
        self._surveys: dict[str, dict[str, Any]] = {}
        self._responses: dict[str, dict[str, StoredResponse]] = {}
        self._version = 0
        self._listings: dict[tuple[str, tuple[Condition, ...]], tuple[int, list[dict[str, Any]]]] = {}

    def add_survey(self, definition: Mapping[str, Any]) -> None:
        with self._lock:
            self._surveys[str(definition["id"])] = dict(definition)
            self._responses.setdefault(str(definition["id"]), {})
            self._version += 1

    def add_response(
        self, survey_id: str | int, record: Mapping[str, Any], submitted_at: dt.datetime | None = None
    ) -> None:
        """Store (or replace) a record as given, malformed or not. `submitted_at` overrides the
        instant the date filter uses; by default it is parsed from the record's `date_submitted`."""
        with self._lock:
            self._responses.setdefault(str(survey_id), {})[str(record["id"])] = StoredResponse(
                dict(record), submitted_at or self._parse_submitted(record)
            )
            self._version += 1

    def create_survey(self, title: str, survey_id: str | None = None) -> dict[str, Any]:
        """The API's survey create (PUT): a launched survey with the stand-in questionnaire. The local
        server lets the caller choose the id (`survey_id`), so a local run can make the survey a
        sample names; the real API numbers it. An existing survey is returned unchanged."""
        with self._lock:
            numbers = [int(sid) for sid in self._surveys if sid.isdigit()]
            chosen = survey_id or str(max(numbers, default=0) + 1)
            if chosen not in self._surveys:
                self.add_survey(stand_in_survey(chosen, title, self.clock.now()))
            return self._surveys[chosen]

    def create_response(self, survey_id: str, answers: Mapping[str, str], status: str = "Complete") -> dict[str, Any]:
        """A new response answering `answers` (question id or shortname -> answer text), submitted now.
        KeyError names an unknown survey or question."""
        with self._lock:
            survey = self._surveys[survey_id]
            questions = _questions(survey)
            by_key = {str(q["id"]): q for _page, q in questions}
            by_key.update({str(q["shortname"]): q for _page, q in questions if q.get("shortname")})
            unknown = sorted(set(answers) - set(by_key))
            if unknown:
                raise KeyError(f"Question {unknown[0]} not found in survey {survey_id}")
            answered = {str(by_key[key]["id"]): text for key, text in answers.items()}
            numbers = [int(rid) for rid in self._responses.get(survey_id, {}) if rid.isdigit()]
            response_id = str(max(numbers, default=0) + 1)
            now = self.clock.now()
            record = {
                "id": response_id,
                "contact_id": "",
                "status": status,
                "is_test_data": "0",
                "date_submitted": format_timestamp(now, self.zone),
                "date_started": format_timestamp(now, self.zone),
                "date_updated": now.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S"),
                "session_id": f"{int(now.timestamp())}_{response_id}",
                "language": "English",
                "link_id": "",
                "url_variables": [],
                "ip_address": "",
                "referer": "",
                "user_agent": "",
                "response_time": 0,
                "data_quality": [],
                "longitude": "",
                "latitude": "",
                "country": "",
                "city": "",
                "region": "",
                "postal": "",
                "dma": "0",
                "survey_data": {str(q["id"]): _entry(page, q, answered.get(str(q["id"]))) for page, q in questions},
            }
            self.add_response(survey_id, record, now)
            return record

    def edit_response(self, survey_id: str | int, response_id: str | int, **changes: Any) -> None:
        with self._lock:
            stored = self._responses[str(survey_id)][str(response_id)]
            stored.record.update(changes)
            stored.record["date_updated"] = self.clock.now().strftime("%Y-%m-%d %H:%M:%S")
            stored.submitted_at = self._parse_submitted(stored.record)
            self._version += 1

    def delete_response(self, survey_id: str | int, response_id: str | int) -> None:
        """Soft-delete, as SurveyGizmo does: gone from lists, 404 on a single GET."""
        with self._lock:
            self._responses[str(survey_id)][str(response_id)].deleted = True
            self._version += 1

    def restore_response(self, survey_id: str | int, response_id: str | int) -> None:
        """Undo a deletion: the response is listed and served again."""
        with self._lock:
            self._responses[str(survey_id)][str(response_id)].deleted = False
            self._version += 1

    def response_ids(self, survey_id: str | int) -> list[str]:
        with self._lock:
            return [rid for rid, stored in self._sorted(str(survey_id)) if not stored.deleted]

    def survey(self, survey_id: str) -> dict[str, Any] | None:
        with self._lock:
            return self._surveys.get(survey_id)

    def response(self, survey_id: str, response_id: str) -> dict[str, Any] | None:
        """The record, or None when there is none or it was deleted."""
        with self._lock:
            stored = self._responses.get(survey_id, {}).get(response_id)
            return None if stored is None or stored.deleted else stored.record

    def listing(self, survey_id: str, conditions: Sequence[Condition]) -> list[dict[str, Any]]:
        """The survey's records matching every condition, in response id order."""
        key = (survey_id, tuple(conditions))
        with self._lock:
            cached = self._listings.get(key)
            if cached is None or cached[0] != self._version:
                records = [
                    stored.record
                    for _rid, stored in self._sorted(survey_id)
                    if not stored.deleted and all(matches(stored.record, stored.submitted_at, c) for c in conditions)
                ]
                cached = self._listings[key] = (self._version, records)
            return cached[1]

    def statistics(self, survey_id: str) -> dict[str, int] | None:
        """How many responses the survey has per status, as `GET /v5/survey/{id}` reports them."""
        counts: dict[str, int] = {}
        with self._lock:
            for stored in self._responses.get(survey_id, {}).values():
                if not stored.deleted:
                    status = str(stored.record.get("status"))
                    counts[status] = counts.get(status, 0) + 1
        return counts or None

    def _parse_submitted(self, record: Mapping[str, Any]) -> dt.datetime | None:
        try:
            return parse_timestamp(str(record["date_submitted"]), self.zone)
        except (KeyError, ValueError):
            return None

    def _sorted(self, survey_id: str) -> list[tuple[str, StoredResponse]]:
        return sorted(self._responses.get(survey_id, {}).items(), key=lambda item: _id_sort_key(item[0]))


def _id_sort_key(response_id: str) -> tuple[int, int, str]:
    return (0, int(response_id), "") if response_id.isdigit() else (1, 0, response_id)


PANEL_ID_SHORTNAME = "panel_id"
SATISFACTION_QUESTION, PANEL_ID_QUESTION = 2, 3
SATISFACTION_OPTIONS = ("Very satisfied", "Fairly satisfied", "Neither", "Fairly dissatisfied", "Very dissatisfied")


def stand_in_survey(survey_id: str, title: str, created: dt.datetime) -> dict[str, Any]:
    """A survey definition in the v5 shape: one page, one single-choice question (`overall`) and the
    hidden `panel_id` the survey link fills with the member's panel id (as the profile survey does)."""
    options = [
        {"id": 10000 + index, "title": {"English": text}, "value": text, "properties": {"disabled": False}}
        for index, text in enumerate(SATISFACTION_OPTIONS, start=1)
    ]
    question = {"varname": [], "description": [], "has_showhide_deps": False, "comment": False}
    return {
        "id": survey_id,
        "team": "433737",
        "type": "Standard Survey",
        "status": "Launched",
        "created_on": created.strftime("%Y-%m-%d %H:%M:%S"),
        "modified_on": created.strftime("%Y-%m-%d %H:%M:%S"),
        "title": title,
        "statistics": None,
        "pages": [
            {
                "id": 1,
                "title": {"English": "Your views"},
                "questions": [
                    {
                        **question,
                        "id": SATISFACTION_QUESTION,
                        "base_type": "Question",
                        "type": "RADIO",
                        "title": {"English": "Overall, how satisfied are you with the way things are going?"},
                        "shortname": "overall",
                        "properties": {"required": True, "hidden": False},
                        "options": options,
                    },
                    {
                        **question,
                        "id": PANEL_ID_QUESTION,
                        "base_type": "Action",
                        "type": "HIDDEN",
                        "title": {"English": "panel_id"},
                        "shortname": PANEL_ID_SHORTNAME,
                        "properties": {"required": False, "hidden": True},
                        "options": [],
                    },
                ],
            }
        ],
    }


def _questions(survey: Mapping[str, Any]) -> list[tuple[int, Mapping[str, Any]]]:
    """(page id, question) in page order; grid rows are not answered one by one here."""
    return [
        (int(page.get("id", 1)), question)
        for page in survey.get("pages") or []
        for question in page.get("questions") or []
    ]


def _entry(page_id: int, question: Mapping[str, Any], answer: str | None) -> dict[str, Any]:
    """One `survey_data` entry as v5 reports it: not shown when unanswered; a choice carries its option id."""
    title = question.get("title")
    entry: dict[str, Any] = {
        "id": int(question["id"]),
        "type": str(question.get("type", "TEXTBOX")),
        "question": title.get("English", "") if isinstance(title, Mapping) else str(title or ""),
        "section_id": page_id,
    }
    if answer is None:
        return {**entry, "shown": False}
    option_ids = {str(option.get("value")): option.get("id") for option in question.get("options") or []}
    if answer in option_ids:
        entry["answer_id"] = option_ids[answer]
    return {**entry, "answer": answer, "shown": True}
