"""The completes file an analyst downloads: one row per completer of a sample (pure; no Mongo, no Dagster).

Invariants:

- `user_id` is the only identifier: the table is built from an allow-list of columns (the profile
  fields the sample's targets use, then COMPLETE_COLUMNS), so no address or name can reach the file.
- Rows are in user id order and times are ISO 8601 UTC, so the same completes give the same file.
- `weight` is empty until fieldwork closed with converged weights (fieldwork_state.py writes them
  then, and only then).
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from panel_pipeline.sampler.targets import Target

COMPLETE_COLUMNS = ("wave", "invited_at", "completed_at", "weight")
TIME_COLUMNS = ("invited_at", "completed_at")
PREVIEW_ROWS = 10


def target_fields(targets: Sequence[Target]) -> list[str]:
    """The profile fields the targets are defined on, in the targets' order, each once."""
    return list(dict.fromkeys(field for target in targets for field in target.fields))


def completes_table(members: pd.DataFrame, fields: Sequence[str]) -> pd.DataFrame:
    """`members` (store.completed_members: index = user id) as the file's rows: user_id, `fields`,
    then COMPLETE_COLUMNS. A field the frame lacks is a missing-field error naming it."""
    missing = [column for column in (*fields, *COMPLETE_COLUMNS) if column not in members]
    if missing:
        raise KeyError(f"the completers' frame has no column {', '.join(missing)}")
    table = members.loc[:, [*fields, *COMPLETE_COLUMNS]].sort_index()
    for column in TIME_COLUMNS:
        table[column] = pd.to_datetime(table[column], utc=True).dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    table["wave"] = pd.to_numeric(table["wave"], errors="coerce").astype("Int64")
    table["weight"] = pd.to_numeric(table["weight"], errors="coerce")
    table.insert(0, "user_id", table.index.astype(str))
    return table.reset_index(drop=True)
