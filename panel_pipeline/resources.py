"""Resource selection per environment: the only place where local and production differ.

Both read addresses and secrets from the environment through `dg.EnvVar`, resolved when a run or
tick starts and never stored in run config. PANEL_ENV=local (the default) expects the local stack's
addresses (`panel-pipeline dev` sets them) and uses dummy credentials; PANEL_ENV=production expects
real ones, with AWS credentials from boto3's default chain (role or environment).
"""

from __future__ import annotations

import os
from typing import Any

import dagster as dg

from panel_pipeline.queue.resources import MongoResource

ENVIRONMENTS = ("local", "production")


def local_resources() -> dict[str, Any]:
    return {
        "mongo": MongoResource(uri=dg.EnvVar("MONGO_URI"), database="panel"),
    }


def production_resources() -> dict[str, Any]:
    return {
        "mongo": MongoResource(uri=dg.EnvVar("MONGO_URI"), database=dg.EnvVar("MONGO_DATABASE")),
    }


def resources_for(environment: str) -> dict[str, Any]:
    if environment not in ENVIRONMENTS:
        raise ValueError(f"PANEL_ENV must be one of {', '.join(ENVIRONMENTS)}, not {environment!r}")
    return local_resources() if environment == "local" else production_resources()


def current_environment() -> str:
    return os.environ.get("PANEL_ENV", "local")
