"""The Sampler: see assets.py (and its sensors, checks and schedules)."""

import dagster as dg

defs = dg.Definitions()
