"""The Sampler's definitions: what the code location loads from this part."""

import dagster as dg

from panel_pipeline.sampler.assets import (
    response_rates,
    sample_completes,
    sample_directory,
    sample_fieldwork,
    samples,
)
from panel_pipeline.sampler.checks import cells_within_tolerance, weights_converged
from panel_pipeline.sampler.jobs import response_rates_job, sample_fieldwork_job, sample_job
from panel_pipeline.sampler.schedules import daily_response_rates_schedule
from panel_pipeline.sampler.sensors import fieldwork_sensor, samples_queue_sensor

defs = dg.Definitions(
    assets=[samples, response_rates, sample_fieldwork, sample_completes, sample_directory],
    asset_checks=[cells_within_tolerance, weights_converged],
    jobs=[sample_job, sample_fieldwork_job, response_rates_job],
    sensors=[samples_queue_sensor, fieldwork_sensor],
    schedules=[daily_response_rates_schedule],
)
