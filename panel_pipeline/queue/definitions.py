"""The queue's definitions: what the code location loads from this part."""

import dagster as dg

from panel_pipeline.queue.sensors import build_run_failure_sensors
from panel_pipeline.shared.contract import QUEUED_COLLECTIONS

defs = dg.Definitions(sensors=build_run_failure_sensors(QUEUED_COLLECTIONS))
