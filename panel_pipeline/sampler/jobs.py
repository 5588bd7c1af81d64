"""The Sampler's job: draws one sample request (one `sample_requests` partition) per run."""

import dagster as dg

sample_job = dg.define_asset_job(
    "sample_job",
    selection=dg.AssetSelection.assets("samples"),
    executor_def=dg.in_process_executor,
    tags={"panel/part": "sampler"},
)
