"""The completes table: user_id and an allow-list of columns, user id order, UTC times, empty weights open."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from panel_pipeline.sampler.completes import completes_table, target_fields
from panel_pipeline.sampler.targets import Target


def members() -> pd.DataFrame:
    at = pd.Timestamp(dt.datetime(2026, 3, 1, 9, 30, tzinfo=dt.UTC))
    return pd.DataFrame(
        {
            "gender": ["male", "female"],
            "age_band": ["18-24", None],
            "region": ["Wales", "London"],
            "email": ["m@panel.example", "f@panel.example"],  # never in the file
            "wave": [2, None],
            "invited_at": [at, at],
            "completed_at": [at + pd.Timedelta(hours=5), at + pd.Timedelta(hours=1)],
            "weight": [np.nan, np.nan],
        },
        index=["65f0000000000000000000b2", "65f0000000000000000000a1"],
    )


def test_target_fields_are_each_field_once_in_target_order():
    targets = [
        Target.from_shares("age_band|gender", {"18-24|male": 1.0}),
        Target.from_shares("gender", {"male": 1.0}),
        Target.from_shares("region", {"Wales": 1.0}),
    ]
    assert target_fields(targets) == ["age_band", "gender", "region"]


def test_the_table_holds_only_the_allowed_columns_in_user_id_order():
    table = completes_table(members(), ["age_band", "gender"])
    assert list(table.columns) == ["user_id", "age_band", "gender", "wave", "invited_at", "completed_at", "weight"]
    assert list(table["user_id"]) == ["65f0000000000000000000a1", "65f0000000000000000000b2"]
    assert list(table["completed_at"]) == ["2026-03-01T10:30:00Z", "2026-03-01T14:30:00Z"]
    assert table["wave"].isna().tolist() == [True, False] and table["weight"].isna().all()
    assert "@" not in table.to_csv(index=False)


def test_a_missing_column_is_named():
    with pytest.raises(KeyError, match="social_grade"):
        completes_table(members(), ["social_grade"])


def test_no_completers_give_the_header_alone():
    empty = members().iloc[0:0]
    table = completes_table(empty, ["gender"])
    assert table.to_csv(index=False).strip() == "user_id,gender,wave,invited_at,completed_at,weight"
