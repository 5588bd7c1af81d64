"""Partitions shared by assets, jobs and sensors: the units of work and of re-execution."""

import dagster as dg

# One partition per sample request document (its `_id`), added by the samples queue sensor.
sample_requests = dg.DynamicPartitionsDefinition(name="sample_requests")

# One partition per mailing document (its `_id`), added by the mailings queue sensor.
mailings = dg.DynamicPartitionsDefinition(name="mailings")
