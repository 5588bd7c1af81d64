"""Partitions shared by assets, jobs and sensors: the units of work and of re-execution."""

import dagster as dg

# One partition per sample request document (its `_id`), added by the samples queue sensor.
sample_request_partitions = dg.DynamicPartitionsDefinition(name="sample_requests")

# One partition per mailing document (its `_id`), added by the mailings queue sensor.
mailing_partitions = dg.DynamicPartitionsDefinition(name="mailings")

# SurveyGizmo responses by the UK day they were submitted on. end_offset=1 makes today's partition
# exist, so the hourly schedule can keep it current while the day is still running.
response_day_partitions = dg.DailyPartitionsDefinition(start_date="2026-01-01", timezone="Europe/London", end_offset=1)
