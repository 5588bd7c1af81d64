"""`python -m panel_pipeline.local`: start, check and stop the local stack, and run the whole pipeline on it.

`make run` runs `dev`, `make stop` runs `stack down`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click
import pymongo

from panel_pipeline.local import stack
from panel_pipeline.local.demo import seed_users


@click.group()
def main() -> None:
    """Local tooling for panel-pipeline."""


@main.group(name="stack")
def stack_group() -> None:
    """The local mongod, SES endpoint, SurveyGizmo-compatible server and SNS/SQS."""


@stack_group.command()
def up() -> None:
    """Start every local service that is not running (idempotent)."""
    try:
        endpoints = stack.up()
    except (stack.StackError, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from exc
    for name, endpoint in endpoints.items():
        click.echo(f"{name:12} {endpoint}")


@stack_group.command()
def status() -> None:
    """Say which local services run; exit 1 when any is down."""
    states = stack.status()
    for name, running in states.items():
        click.echo(f"{name:12} {'running' if running else 'stopped'}")
    if not all(states.values()):
        sys.exit(1)


@stack_group.command()
def down() -> None:
    """Stop the local services this project started."""
    stopped = stack.down()
    click.echo(f"stopped: {', '.join(stopped) if stopped else 'nothing was running'}")


@main.command()
@click.option("--port", default=3000, show_default=True, help="Port of the Dagster UI.")
def dev(port: int) -> None:
    """Start the local stack, then Dagster (UI, daemon, code location) on it."""
    try:
        endpoints = stack.up()
    except (stack.StackError, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from exc
    client: pymongo.MongoClient[dict[str, Any]]
    with pymongo.MongoClient(endpoints["mongo"]) as client:
        created = seed_users(client.panel)
    click.echo(f"demo members created: {created}; sent mail: {endpoints['ses']}; Dagster UI: http://localhost:{port}")
    dagster_home = stack.STATE_DIR / "dagster_home"
    dagster_home.mkdir(parents=True, exist_ok=True)
    link = dagster_home / "dagster.yaml"
    if not link.exists():
        link.symlink_to(stack.PROJECT_ROOT / "dagster.yaml")
    # The local servers accept only the local credentials, so those win over a shell's; an address
    # already set (another mongod, say) is kept.
    os.environ.update({"DAGSTER_HOME": str(dagster_home), "PANEL_ENV": "local", **stack.LOCAL_CREDENTIALS})
    for name, value in stack.local_environment().items():
        os.environ.setdefault(name, value)
    os.chdir(stack.PROJECT_ROOT)
    dagster = Path(sys.executable).with_name("dagster")
    os.execv(str(dagster), [str(dagster), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)])
