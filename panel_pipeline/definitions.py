"""The code location: every part's definitions, with the resources of the current environment."""

import dagster as dg

from panel_pipeline import extractor, mailer, queue, sampler, updater
from panel_pipeline.resources import current_environment, resources_for

defs = dg.Definitions.merge(
    queue.defs,
    extractor.defs,
    sampler.defs,
    mailer.defs,
    updater.defs,
    dg.Definitions(resources=resources_for(current_environment())),
)
