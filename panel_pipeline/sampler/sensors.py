"""Sample requests from the queue: one run (and one `sample_requests` partition) per request."""

from panel_pipeline.queue.sensors import build_queue_sensor
from panel_pipeline.sampler.jobs import sample_job
from panel_pipeline.shared.contract import SAMPLES
from panel_pipeline.shared.partitions import sample_request_partitions

samples_queue_sensor = build_queue_sensor(
    collection=SAMPLES,
    job=sample_job,
    partitions_def=sample_request_partitions,
    description="Turns each `samples` document with processed: false into a run of its own partition.",
)
