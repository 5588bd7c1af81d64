"""The Extractor's definitions: what the code location loads from this part."""

import dagster as dg

from panel_pipeline.extractor.assets import (
    survey_completions,
    surveygizmo_deletions,
    surveygizmo_responses,
    users,
)
from panel_pipeline.extractor.checks import (
    profile_coverage,
    profile_values_allowed,
    quarantined_responses,
)
from panel_pipeline.extractor.jobs import (
    deletion_sweep_job,
    extract_job,
    survey_completions_job,
)
from panel_pipeline.extractor.schedules import (
    hourly_extract_schedule,
    weekly_deletion_sweep_schedule,
)
from panel_pipeline.extractor.sensors import transactions_queue_sensor

defs = dg.Definitions(
    assets=[surveygizmo_responses, users, survey_completions, surveygizmo_deletions],
    asset_checks=[profile_coverage, profile_values_allowed, quarantined_responses],
    jobs=[extract_job, survey_completions_job, deletion_sweep_job],
    sensors=[transactions_queue_sensor],
    schedules=[hourly_extract_schedule, weekly_deletion_sweep_schedule],
)
