"""The local SurveyGizmo server's in-memory account: surveys, their responses, and listings.

Tests add, edit and delete responses while a scan is running, so every method takes the store's
lock, and a listing is computed once per state of the store (`_version` moves on every change),
not once per page. Deletes are soft, as SurveyGizmo's are: a deleted response is neither listed
nor served, and can be restored.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

from panel_pipeline.extractor.responses import parse_timestamp
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
