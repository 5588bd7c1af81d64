"""The local run's profile-survey answers: one Complete response per demo member."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from panel_pipeline.local.demo import demo_user_id
from panel_pipeline.local.profile_survey import PROFILE_SURVEY, PROFILE_SURVEY_ID, response_record
from panel_pipeline.local.surveygizmo.store import ResponseStore

if TYPE_CHECKING:
    import pandas as pd


def load_demo_data(
    server: ResponseStore, profiles: pd.DataFrame, start: dt.datetime, end: dt.datetime, first_id: int = 1001
) -> None:
    """The profile survey plus one Complete response per profile row, spread evenly over [start, end)."""
    server.add_survey(PROFILE_SURVEY)
    step = (end - start) / max(1, len(profiles))
    for index, row in enumerate(_profile_dicts(profiles)):
        record = response_record(
            row,
            response_id=first_id + index,
            submitted_at=start + step * index,
            account_zone=server.zone,
            panel_id=str(demo_user_id(index + 1)),
        )
        server.add_response(PROFILE_SURVEY_ID, record)


def _profile_dicts(profiles: pd.DataFrame) -> Iterable[dict[str, Any]]:
    for row in profiles.astype(object).to_dict(orient="records"):
        yield {
            str(key): (int(value) if key == "birth_year" else str(value))
            for key, value in row.items()
            if value is not None
        }
