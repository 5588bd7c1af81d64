"""The Sampler's jobs: draws one sample request (one `sample_requests` partition) per run; one
sample's fieldwork per run (the same partitions, with its checks), then its completes file; the
response rates, daily. The draw and fieldwork runs also refresh `sample_directory` (unpartitioned:
a partition's run materialises it whole), so a new sample is found by name once it is drawn."""

import dagster as dg

sample_job = dg.define_asset_job(
    "sample_job",
    selection=dg.AssetSelection.assets("samples", "sample_directory"),
    executor_def=dg.in_process_executor,
    tags={"panel/part": "sampler"},
)

sample_fieldwork_job = dg.define_asset_job(
    "sample_fieldwork_job",
    selection=dg.AssetSelection.assets("sample_fieldwork", "sample_completes", "sample_directory"),
    executor_def=dg.in_process_executor,
    tags={"panel/part": "sampler"},
)

response_rates_job = dg.define_asset_job(
    "response_rates_job",
    selection=dg.AssetSelection.assets("response_rates"),
    executor_def=dg.in_process_executor,
    tags={"panel/part": "sampler"},
)
