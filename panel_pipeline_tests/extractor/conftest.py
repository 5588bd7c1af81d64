"""Fixtures for the Extractor tests: a local SurveyGizmo server over real HTTP, a clock the tests drive, and
the extract job's assets run on a real mongod."""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Callable, Iterator
from typing import Any

import dagster as dg
import pytest

from panel_pipeline.extractor.jobs import extract_job_assets
from panel_pipeline.extractor.resources import SurveyGizmoResource
from panel_pipeline.extractor.retries import RetryPolicy
from panel_pipeline.extractor.surveygizmo import SurveyGizmoClient
from panel_pipeline.local.profile_survey import (
    PROFILE_SURVEY,
    PROFILE_SURVEY_ID,
    response_record,
)
from panel_pipeline.local.surveygizmo.server import DEMO_TOKEN, DEMO_TOKEN_SECRET, LocalSurveyGizmo
from panel_pipeline.shared.resources import MongoResource
from panel_pipeline_tests.clock import ManualClock

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
CLOCK_START = dt.datetime(2024, 6, 3, 12, 0, tzinfo=dt.UTC)


class RecordingClock(ManualClock):
    """A ManualClock that keeps every sleep, so a test can tell the backoffs from the pacing."""

    def __init__(self, start: dt.datetime) -> None:
        super().__init__(start)
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        super().sleep(seconds)


@pytest.fixture
def sg_server() -> Iterator[LocalSurveyGizmo]:
    with LocalSurveyGizmo(API_TOKEN, API_TOKEN_SECRET, time_zone="America/New_York") as server:
        server.add_survey(PROFILE_SURVEY)
        yield server


@pytest.fixture
def clock() -> RecordingClock:
    return RecordingClock(CLOCK_START)


@pytest.fixture
def make_client(sg_server: LocalSurveyGizmo, clock: RecordingClock) -> Callable[..., SurveyGizmoClient]:
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
            EXAMPLE_PROFILE,
            response_id=first_id + index,
            submitted_at=start + step * index,
            account_zone=server.zone,
            **record_options,
        )
        server.add_response(PROFILE_SURVEY_ID, record)
        ids.append(record["id"])
    return ids


def extract_resources(mongo_uri: str, database: str, server: LocalSurveyGizmo) -> dict[str, Any]:
    """The extract's resources: Mongo on `database`, SurveyGizmo on a local server with the demo credentials
    (two attempts, quick retries)."""
    return {
        "mongo": MongoResource(uri=mongo_uri, database=database),
        "surveygizmo": SurveyGizmoResource(
            api_token=DEMO_TOKEN,
            api_token_secret=DEMO_TOKEN_SECRET,
            base_url=server.base_url,
            account_time_zone="America/New_York",
            profile_survey_ids=PROFILE_SURVEY_ID,
            max_attempts=2,
            retry_base_delay_seconds=0.01,
        ),
    }


def extract_day(instance: dg.DagsterInstance, resources: dict[str, Any], day: dt.date) -> dg.ExecuteInProcessResult:
    """One day's partition of the extract job's assets, as the hourly schedule runs it; a failed run is
    returned, not raised."""
    return dg.materialize(
        extract_job_assets, partition_key=day.isoformat(), instance=instance, resources=resources, raise_on_error=False
    )
