"""The Sampler's settings that differ between production and the local run."""

from __future__ import annotations

import dagster as dg
from pydantic import Field

DEFAULT_PASS_SECONDS = 180.0


class FieldworkTiming(dg.ConfigurableResource):
    """How often a sample's fieldwork is looked at, and how fast fieldwork time runs.

    `time_scale` makes the fieldwork durations a request states (`reminder_after_hours`, the default
    fieldwork length) pass that many times faster than wall time: 1 in production; the local run
    uses its respondent simulator's scale (an hour a second), so a demo's fieldwork closes in minutes."""

    pass_seconds: float = Field(
        default=DEFAULT_PASS_SECONDS,
        gt=0,
        description="At most one fieldwork pass per sample this often (each pass is a run).",
    )
    time_scale: float = Field(default=1.0, gt=0, description="Fieldwork hours per wall-clock hour (1 in production).")
