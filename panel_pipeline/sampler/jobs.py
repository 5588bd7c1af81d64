"""The Sampler's jobs: draws one sample request (one `sample_requests` partition) per run; one
sample's fieldwork per run (the same partitions, with its checks); the response rates, daily."""

import dagster as dg

sample_job = dg.define_asset_job(
    "sample_job",
    selection=dg.AssetSelection.assets("samples"),
    executor_def=dg.in_process_executor,
    tags={"panel/part": "sampler"},
)

sample_fieldwork_job = dg.define_asset_job(
    "sample_fieldwork_job",
    selection=dg.AssetSelection.assets("sample_fieldwork"),
    executor_def=dg.in_process_executor,
    tags={"panel/part": "sampler"},
)

response_rates_job = dg.define_asset_job(
    "response_rates_job",
    selection=dg.AssetSelection.assets("response_rates"),
    executor_def=dg.in_process_executor,
    tags={"panel/part": "sampler"},
)
