"""The Updater: dynamic samples kept current as members join or answer surveys."""

import dagster as dg

from panel_pipeline.updater.assets import dynamic_sample_updates
from panel_pipeline.updater.sensors import member_changes_sensor, updater_job

defs = dg.Definitions(assets=[dynamic_sample_updates], jobs=[updater_job], sensors=[member_changes_sensor])
