"""`python -m panel_pipeline.local`: start, check and stop the local stack, run the whole pipeline on it,
and run the respondent simulator (which the stack starts as one of its services).

`make run` runs `dev`, `make stop` runs `stack down`.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import click
import pymongo

from panel_pipeline.local import stack
from panel_pipeline.local.demo import seed_users
from panel_pipeline.local.respondents import (
    DEFAULT_RATE,
    RespondentSettings,
    RespondentSimulator,
    SurveyGizmoRespondent,
    default_cell_rates,
    load_rates,
    serve_status,
)
from panel_pipeline.local.surveygizmo.server import DEMO_TOKEN, DEMO_TOKEN_SECRET
from panel_pipeline.sampler.resources import FieldworkTiming


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
    """Stop `dagster dev` (what `make run` started) and the local services this project started."""
    stopped = stack.down()
    click.echo(f"stopped: {', '.join(stopped) if stopped else 'nothing was running'}")


@main.command()
@click.option(
    "--time-scale",
    default=3600.0,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Fieldwork seconds per real second (the pipeline's PANEL_FIELDWORK_TIME_SCALE).",
)
@click.option("--seed", default=0, show_default=True, help="Decides every member's outcome and delay.")
@click.option("--reminder-lift", default=0.3, show_default=True, help="Each reminder multiplies p by 1 + this.")
@click.option(
    "--rates",
    "rates_file",
    type=click.Path(exists=True, dir_okay=False),
    help='Per-cell probabilities, JSON: {"18-24|male": 0.04, ..., "default": 0.15}.',
)
@click.option("--poll-seconds", default=1.0, show_default=True, help="Real seconds between passes.")
@click.option("--port", default=stack.RESPONDENTS_PORT, show_default=True, help="Port of the status page (JSON).")
@click.option("--mongo-uri", default=None, help="Default: the local stack's mongod.")
@click.option("--database", default="panel", show_default=True)
@click.option("--surveygizmo-url", default=f"http://127.0.0.1:{stack.SURVEYGIZMO_PORT}", show_default=True)
def respondents(
    time_scale: float,
    seed: int,
    reminder_lift: float,
    rates_file: str | None,
    poll_seconds: float,
    port: int,
    mongo_uri: str | None,
    database: str,
    surveygizmo_url: str,
) -> None:
    """Invited members complete their survey: a SurveyGizmo response, then a `transactions` document."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    rates = {**default_cell_rates(), **(load_rates(rates_file) if rates_file else {})}
    try:
        settings = RespondentSettings(
            seed=seed,
            rates={cell: rate for cell, rate in rates.items() if cell != "default"},
            default_rate=rates.get("default", DEFAULT_RATE),
            reminder_lift=reminder_lift,
        )
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    client: pymongo.MongoClient[dict[str, Any]]
    with pymongo.MongoClient(mongo_uri or stack.local_mongod().uri, tz_aware=True) as client:
        surveygizmo = SurveyGizmoRespondent(surveygizmo_url, DEMO_TOKEN, DEMO_TOKEN_SECRET)
        simulator = RespondentSimulator(client[database], surveygizmo, settings, FieldworkTiming(time_scale=time_scale))
        status_page = serve_status(simulator, "127.0.0.1", port)
        click.echo(f"respondents: time scale {time_scale:g}, seed {seed}; status on http://127.0.0.1:{port}/")
        try:
            simulator.run_forever(threading.Event(), poll_seconds)
        except KeyboardInterrupt:
            pass
        finally:
            status_page.shutdown()
            surveygizmo.close()


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
    stack.record_dagster_dev(os.getpid())  # exec keeps the pid: `stack down` stops dagster dev too
    # A shell without job control starts a background `make run &` with SIGINT ignored, which dagster
    # dev and its children would inherit: restored, `stack down` stops them as Ctrl-C does.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    os.execv(str(dagster), [str(dagster), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)])
