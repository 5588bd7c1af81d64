"""The Sampler's settings that differ between production and the local run, and where it writes
the files an analyst downloads (each sample's completes, as CSV)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Literal

import dagster as dg
import pandas as pd
from bson import ObjectId
from pydantic import Field
from pymongo.database import Database

from panel_pipeline.sampler import store
from panel_pipeline.shared.clock import FieldworkClock, ScaledFieldworkClock, SteppedFieldworkClock

DEFAULT_PASS_SECONDS = 180.0


class FieldworkTiming(dg.ConfigurableResource):
    """How often a sample's fieldwork is looked at, and the clock fieldwork durations are read on
    (shared/clock.py).

    `scaled`: the fieldwork durations a request states (`reminder_after_hours`, the default
    fieldwork length) pass `time_scale` times faster than wall time: 1 in production; the local run
    uses its respondent simulator's scale (an hour a second), so a demo's fieldwork closes in minutes.
    `stepped`: fieldwork time stands still until something (the fieldwork daemon test) steps it
    (`store.step_fieldwork_clock`); `time_scale` is then only its pace for estimates."""

    pass_seconds: float = Field(
        default=DEFAULT_PASS_SECONDS,
        gt=0,
        description="At most one fieldwork pass per sample this often (each pass is a run).",
    )
    time_scale: float = Field(default=1.0, gt=0, description="Fieldwork hours per wall-clock hour (1 in production).")
    clock: Literal["scaled", "stepped"] = Field(
        default="scaled", description="`scaled` (wall time x time_scale) or `stepped` (moved on by hand, tests)."
    )

    def fieldwork_clock(self, db: Database) -> FieldworkClock:
        """The clock now (a stepped one reads its steps from Mongo: read it once per pass)."""
        if self.clock == "stepped":
            return SteppedFieldworkClock(store.fieldwork_steps(db), pace=self.time_scale)
        return ScaledFieldworkClock(self.time_scale)


class CompletesFiles(dg.ConfigurableResource):
    """A directory of completes files, one per sample (`completes_<sample id>.csv`). A file is written
    to a temporary name beside it, flushed to disk, then renamed over the old one, so a reader (or a
    crash mid-write) never sees half a file."""

    directory: str = Field(description="Directory of the completes files (PANEL_COMPLETES_DIR); made if missing.")

    def path_for(self, sample_id: ObjectId) -> Path:
        return Path(self.directory) / f"completes_{sample_id}.csv"

    def write(self, sample_id: ObjectId, table: pd.DataFrame) -> Path:
        """`table` as the sample's completes file, replacing the previous one atomically."""
        path = self.path_for(sample_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(descriptor, "w", newline="", encoding="utf-8") as handle:
                table.to_csv(handle, index=False)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        return path
