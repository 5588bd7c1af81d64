"""The Extractor's jobs: the hourly extract, the weekly deletion sweep, and survey completions."""

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

extract_job = dg.define_asset_job(
    "extract_job",
    selection=dg.AssetSelection.assets(surveygizmo_responses, users),
    executor_def=dg.in_process_executor,
    tags={"panel/part": "extractor"},
)
# What extract_job materialises, with the checks on users: for dg.materialize in tests and benchmarks.
extract_job_assets = [surveygizmo_responses, users, profile_coverage, profile_values_allowed, quarantined_responses]

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
