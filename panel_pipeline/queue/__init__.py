"""The queue shared with the backend: `processed: false` documents in, results written back."""

import dagster as dg

from panel_pipeline.queue.sensors import build_run_failure_sensors

QUEUED_COLLECTIONS = ("samples", "mailings", "transactions")

defs = dg.Definitions(sensors=build_run_failure_sensors(QUEUED_COLLECTIONS))
