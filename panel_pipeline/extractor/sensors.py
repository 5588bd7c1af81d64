"""Jobs of the Extractor, and the transactions queue: one batch of completions per tick."""

import dagster as dg

from panel_pipeline.extractor.assets import (
    survey_completions,
    surveygizmo_deletions,
    surveygizmo_responses,
    users,
)
from panel_pipeline.queue.sensors import build_queue_sensor

extract_job = dg.define_asset_job(
    "extract_job",
    selection=dg.AssetSelection.assets(surveygizmo_responses, users),
    executor_def=dg.in_process_executor,
    tags={"panel/part": "extractor"},
)

deletion_sweep_job = dg.define_asset_job(
    "deletion_sweep_job",
    selection=dg.AssetSelection.assets(surveygizmo_deletions),
    executor_def=dg.in_process_executor,
    tags={"panel/part": "extractor"},
)

survey_completions_job = dg.define_asset_job(
    "survey_completions_job",
    selection=dg.AssetSelection.assets(survey_completions),
    executor_def=dg.in_process_executor,
    tags={"panel/part": "completions"},
)

transactions_queue_sensor = build_queue_sensor(
    collection="transactions",
    job=survey_completions_job,
    batch_op_name="survey_completions",
    description="Turns the unprocessed `transactions` of a tick into one survey_completions run.",
)
