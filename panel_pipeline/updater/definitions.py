"""The Updater's definitions: what the code location loads from this part."""

import dagster as dg

from panel_pipeline.updater.assets import dynamic_sample_updates
from panel_pipeline.updater.jobs import dynamic_sample_updates_job, dynamic_samples_worker_job
from panel_pipeline.updater.sensors import dynamic_samples_worker_sensor, member_changes_sensor

defs = dg.Definitions(
    assets=[dynamic_sample_updates],
    jobs=[dynamic_sample_updates_job, dynamic_samples_worker_job],
    sensors=[member_changes_sensor, dynamic_samples_worker_sensor],
)
