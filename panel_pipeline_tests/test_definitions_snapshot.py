"""Every name the instance stores against: a rename breaks sensor cursors, run keys and partitions,
so it must show in review as a change to definitions_snapshot.json.

After a deliberate rename: `PANEL_UPDATE_SNAPSHOT=1 python -m pytest panel_pipeline_tests/test_definitions_snapshot.py`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import dagster as dg

from panel_pipeline.definitions import defs

SNAPSHOT = Path(__file__).with_name("definitions_snapshot.json")


def partitions_name(partitions_def: dg.PartitionsDefinition | None) -> str | None:
    if partitions_def is None:
        return None
    if isinstance(partitions_def, dg.DynamicPartitionsDefinition):
        return f"dynamic:{partitions_def.name}"
    if isinstance(partitions_def, dg.TimeWindowPartitionsDefinition):
        return (
            f"time:{partitions_def.cron_schedule}:{partitions_def.timezone}:{partitions_def.start.date().isoformat()}"
        )
    return type(partitions_def).__name__


def current_names() -> dict[str, object]:
    repository = defs.get_repository_def()
    graph = repository.asset_graph
    assets = {
        key.to_user_string(): partitions_name(graph.get(key).partitions_def)
        for key in sorted(graph.get_all_asset_keys())
    }
    checks = sorted(f"{key.asset_key.to_user_string()}:{key.name}" for key in graph.asset_check_keys)
    return {
        "assets": assets,
        "asset_checks": checks,
        "jobs": sorted(job.name for job in repository.get_all_jobs() if not job.name.startswith("__")),
        "sensors": {
            sensor.name: sorted(t.job_name for t in sensor.targets)
            for sensor in sorted(repository.sensor_defs, key=lambda s: s.name)
        },
        "schedules": {
            schedule.name: schedule.job_name for schedule in sorted(repository.schedule_defs, key=lambda s: s.name)
        },
    }


def test_every_stored_name_matches_the_snapshot():
    names = current_names()
    if os.environ.get("PANEL_UPDATE_SNAPSHOT"):
        SNAPSHOT.write_text(json.dumps(names, indent=2) + "\n")
    assert names == json.loads(SNAPSHOT.read_text())
