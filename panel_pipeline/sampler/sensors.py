"""Sample requests from the queue: one run (and one `sample_requests` partition) per request."""

import dagster as dg

from panel_pipeline.shared.partitions import sample_request_partitions
from panel_pipeline.queue.sensors import build_queue_sensor

sample_job = dg.define_asset_job(
    "sample_job",
    selection=dg.AssetSelection.assets("samples"),
    executor_def=dg.in_process_executor,
    tags={"panel/part": "sampler"},
)

samples_queue_sensor = build_queue_sensor(
    collection="samples",
    job=sample_job,
    partitions_def=sample_request_partitions,
    description="Turns each `samples` document with processed: false into a run of its own partition.",
)
