"""The code location: every part's definitions, with the resources of the current environment.

Each asset links to its source (file and line) in the UI through Dagster's code references.
"""

from typing import Any

import dagster as dg

from panel_pipeline.extractor import definitions as extractor
from panel_pipeline.mailer import definitions as mailer
from panel_pipeline.queue import definitions as queue
from panel_pipeline.resources import current_environment, resources_for
from panel_pipeline.sampler import definitions as sampler
from panel_pipeline.updater import definitions as updater


def with_code_references(parts: dg.Definitions, resources: dict[str, Any]) -> dg.Definitions:
    """`parts` with the environment's resources, each asset linking to its source in the UI."""
    return dg.Definitions(
        assets=dg.with_source_code_references(list(parts.assets or [])),
        asset_checks=parts.asset_checks,
        jobs=parts.jobs,
        sensors=parts.sensors,
        schedules=parts.schedules,
        resources=resources,
    )


defs = with_code_references(
    dg.Definitions.merge(queue.defs, extractor.defs, sampler.defs, mailer.defs, updater.defs),
    resources_for(current_environment()),
)
