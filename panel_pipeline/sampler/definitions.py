"""The Sampler's definitions: what the code location loads from this part."""

import dagster as dg

from panel_pipeline.sampler.assets import samples
from panel_pipeline.sampler.jobs import sample_job
from panel_pipeline.sampler.sensors import samples_queue_sensor

defs = dg.Definitions(assets=[samples], jobs=[sample_job], sensors=[samples_queue_sensor])
