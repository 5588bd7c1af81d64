"""The Updater's job: one run brings every open dynamic sample up to date with the changed members."""

import dagster as dg

from panel_pipeline.updater.assets import dynamic_sample_updates

dynamic_sample_updates_job = dg.define_asset_job(
    "dynamic_sample_updates_job",
    selection=dg.AssetSelection.assets(dynamic_sample_updates),
    executor_def=dg.in_process_executor,
    tags={"panel/part": "updater"},
)
