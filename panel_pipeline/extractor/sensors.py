"""The transactions queue: one batch of survey completions per tick."""

from panel_pipeline.extractor.jobs import survey_completions_job
from panel_pipeline.queue.sensors import build_queue_sensor
from panel_pipeline.shared.contract import TRANSACTIONS

transactions_queue_sensor = build_queue_sensor(
    collection=TRANSACTIONS,
    job=survey_completions_job,
    batch_op_name="survey_completions",
    description="Turns the unprocessed `transactions` of a tick into one survey_completions run.",
)
