"""Fixtures for the Extractor tests: a local SurveyGizmo server over real HTTP and a fast fake clock."""

from __future__ import annotations

import datetime as dt
import random
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from panel_pipeline.extractor.surveygizmo import RetryPolicy, SurveyGizmoClient
from panel_pipeline.local.profile_survey import (
    PROFILE_SURVEY,
    PROFILE_SURVEY_ID,
    response_record,
)
from panel_pipeline.local.surveygizmo.server import LocalSurveyGizmo

API_TOKEN = "tok-4f1c2d9e7a"
API_TOKEN_SECRET = "sec-b7e91f03c5-do-not-log"
EXAMPLE_PROFILE = {
    "gender": "female",
    "birth_year": 1984,
    "region": "Scotland",
    "social_grade": "C1",
    "education": "level_3",
    "vote_2019": "snp",
    "vote_2024": "labour",
    "eu_ref_vote": "remain",
}


class FakeClock:
    """Monotonic time that only moves when someone sleeps; records every sleep."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []
        self._lock = threading.Lock()

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.sleeps.append(seconds)
            self.now += seconds


@pytest.fixture
def sg_server() -> Iterator[LocalSurveyGizmo]:
    with LocalSurveyGizmo(API_TOKEN, API_TOKEN_SECRET, time_zone="America/New_York") as server:
        server.add_survey(PROFILE_SURVEY)
        yield server


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_client(sg_server: LocalSurveyGizmo, clock: FakeClock) -> Callable[..., SurveyGizmoClient]:
    def make(**overrides: Any) -> SurveyGizmoClient:
        options: dict[str, Any] = {
            "base_url": sg_server.base_url,
            "clock": clock,
            "rng": random.Random(7),
            "timeout": (2.0, 2.0),
            "retry": RetryPolicy(max_attempts=4),
            **overrides,
        }
        return SurveyGizmoClient(API_TOKEN, API_TOKEN_SECRET, **options)

    return make


@pytest.fixture
def client(make_client: Callable[..., SurveyGizmoClient]) -> SurveyGizmoClient:
    return make_client()


def add_responses(
    server: LocalSurveyGizmo,
    count: int,
    start: dt.datetime,
    step: dt.timedelta = dt.timedelta(minutes=1),
    first_id: int = 1000,
    **record_options: Any,
) -> list[str]:
    """`count` profile-survey responses submitted at start, start + step, ...; returns their ids."""
    ids = []
    for index in range(count):
        record = response_record(
            EXAMPLE_PROFILE, response_id=first_id + index, submitted_at=start + step * index,
            account_zone=server.zone, **record_options,
        )
        server.add_response(PROFILE_SURVEY_ID, record)
        ids.append(record["id"])
    return ids
