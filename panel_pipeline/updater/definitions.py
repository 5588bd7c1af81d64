"""The Updater's definitions: what the code location loads from this part."""

import dagster as dg

from panel_pipeline.updater.assets import dynamic_sample_updates
from panel_pipeline.updater.jobs import dynamic_sample_updates_job
from panel_pipeline.updater.sensors import member_changes_sensor

defs = dg.Definitions(
    assets=[dynamic_sample_updates], jobs=[dynamic_sample_updates_job], sensors=[member_changes_sensor]
)
