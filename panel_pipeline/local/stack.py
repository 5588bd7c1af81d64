"""The local stack the embedded defaults point at: mongod, the local SES, SurveyGizmo and SNS/SQS servers,
and the respondent simulator (invited members complete their surveys, `respondents.py`).

SES events take production's path: the local SES endpoint publishes them to an SNS topic on the local
SNS/SQS server, whose SQS queue subscription the `ses_feedback` asset drains. moto serves CloudWatch
(the account's reputation metrics the mail breaker reads).

Everything lives under `.panel_pipeline/` in the project folder (data, logs, pid files), so starting
is idempotent and `down` stops exactly what `up` started. `pipeline_environment` is what the pipeline
runs with on a stack (this one, or a test's): its addresses, PANEL_ENV=local and the local credentials,
under the variable names production uses (panel_pipeline/resources.py reads them, never this module).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from panel_pipeline.local.mongod import LocalMongod, live_pid, pid_alive, port_in_use
from panel_pipeline.local.profile_survey import PROFILE_SURVEY_ID
from panel_pipeline.local.ses_events import FEEDBACK_SHARES_VARIABLE, FeedbackShares
from panel_pipeline.local.sns_sqs import (
    LOCAL_AWS_KEY,
    cloudwatch_server_command,
    ensure_feedback_path,
    local_queue_url,
    local_topic_arn,
    sns_sqs_server_command,
)
from panel_pipeline.local.surveygizmo.server import DEMO_TOKEN, DEMO_TOKEN_SECRET

PROJECT_ROOT = Path(__file__).resolve().parents[2]
STATE_DIR = Path(os.environ.get("PANEL_PIPELINE_STATE_DIR", PROJECT_ROOT / ".panel_pipeline"))
DAGSTER_DEV_PID_FILE = STATE_DIR / "dagster_dev.pid"
DAGSTER_DEV_STOP_SECONDS = 150.0  # dagster dev waits up to 60 s for its webserver, then for its daemon
MONGO_PORT = 27017
SES_PORT = 8005
SURVEYGIZMO_PORT = 8006
SNS_SQS_PORT = 8007
RESPONDENTS_PORT = 8008  # the respondent simulator's status page
CLOUDWATCH_PORT = 8009
# Simulated seconds per real second for the stack's simulator: a simulated hour passes in a second.
RESPONDENTS_TIME_SCALE = os.environ.get("PANEL_RESPONDENTS_TIME_SCALE", "3600")
# What share of the local SES endpoint's mail bounces, complains, is opened, clicked (ses_events.FeedbackShares).
SES_FEEDBACK = os.environ.get(FEEDBACK_SHARES_VARIABLE, "")
SNS_SQS_URL = f"http://127.0.0.1:{SNS_SQS_PORT}"
CLOUDWATCH_URL = f"http://127.0.0.1:{CLOUDWATCH_PORT}"
START_TIMEOUT_SECONDS = 30.0
LOCAL_UNSUBSCRIBE_SECRET = "local-unsubscribe-secret"
# What the local servers accept and what the local run signs unsubscribe links with, under the
# names production reads its secrets from (AWS's: where boto3's default chain finds them).
# None of them is a secret.
LOCAL_CREDENTIALS = {
    "SURVEYGIZMO_API_TOKEN": DEMO_TOKEN,
    "SURVEYGIZMO_API_TOKEN_SECRET": DEMO_TOKEN_SECRET,
    "AWS_ACCESS_KEY_ID": LOCAL_AWS_KEY,
    "AWS_SECRET_ACCESS_KEY": LOCAL_AWS_KEY,
    "PANEL_UNSUBSCRIBE_SECRET": LOCAL_UNSUBSCRIBE_SECRET,
}


class StackError(RuntimeError):
    """A local service could not start; the message names it and what to check."""


@dataclass(frozen=True)
class BackgroundService:
    """A long-running local server started as its own process group, with a pid file and a log."""

    name: str
    port: int
    command: Sequence[str]
    env: dict[str, str] = field(default_factory=dict)
    set_up: Callable[[], object] | None = None  # idempotent, run after every start (SNS/SQS keeps no state)

    @property
    def pid_file(self) -> Path:
        return STATE_DIR / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return STATE_DIR / f"{self.name}.log"

    def pid(self) -> int | None:
        return live_pid(self.pid_file)

    def start(self) -> None:
        self._launch()
        if self.set_up is not None:
            self.set_up()

    def _launch(self) -> None:
        if self.pid() is not None:
            return
        if port_in_use(self.port):
            raise StackError(f"{self.name}: port {self.port} is busy with another process")
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("ab") as log:
            process = subprocess.Popen(
                list(self.command),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env={**os.environ, **self.env},
                cwd=PROJECT_ROOT,
            )
        self.pid_file.write_text(str(process.pid))
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not port_in_use(self.port):
            if process.poll() is not None or time.monotonic() > deadline:
                self.pid_file.unlink(missing_ok=True)
                raise StackError(f"{self.name} did not start; see {self.log_file}")
            time.sleep(0.1)

    def stop(self) -> bool:
        pid = self.pid()
        self.pid_file.unlink(missing_ok=True)
        if pid is None:
            return False
        os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if pid_alive(pid):
            os.killpg(pid, signal.SIGKILL)
        return True


def local_mongod() -> LocalMongod:
    return LocalMongod(data_dir=STATE_DIR / "mongo", port=int(os.environ.get("PANEL_PIPELINE_MONGO_PORT", MONGO_PORT)))


def background_services() -> list[BackgroundService]:
    return [
        BackgroundService(
            name="surveygizmo",
            port=SURVEYGIZMO_PORT,
            command=[
                sys.executable,
                "-m",
                "panel_pipeline.local.surveygizmo",
                "--port",
                str(SURVEYGIZMO_PORT),
                "--demo",
            ],
        ),
        BackgroundService(
            name="sns_sqs",
            port=SNS_SQS_PORT,
            command=sns_sqs_server_command("127.0.0.1", SNS_SQS_PORT),
            set_up=lambda: ensure_feedback_path(SNS_SQS_URL),
        ),
        BackgroundService(
            name="cloudwatch",
            port=CLOUDWATCH_PORT,
            command=cloudwatch_server_command("127.0.0.1", CLOUDWATCH_PORT),
        ),
        BackgroundService(
            name="ses",
            port=SES_PORT,
            command=[
                sys.executable,
                "-m",
                "panel_pipeline.local.ses_server",
                "--port",
                str(SES_PORT),
                "--sns-topic-arn",
                local_topic_arn(),
                "--sns-endpoint-url",
                SNS_SQS_URL,
                "--feedback",
                SES_FEEDBACK,
            ],
        ),
        BackgroundService(
            name="respondents",
            port=RESPONDENTS_PORT,
            command=[
                sys.executable,
                "-m",
                "panel_pipeline.local",
                "respondents",
                "--time-scale",
                RESPONDENTS_TIME_SCALE,
                "--port",
                str(RESPONDENTS_PORT),
                "--mongo-uri",
                local_mongod().uri,
                "--surveygizmo-url",
                f"http://127.0.0.1:{SURVEYGIZMO_PORT}",
            ],
        ),
    ]


def check_ses_feedback() -> None:
    """A wrong `PANEL_LOCAL_SES_FEEDBACK` stops `stack up` naming it (not `down`: that must always stop)."""
    try:
        FeedbackShares.parse(SES_FEEDBACK)
    except ValueError as invalid:
        raise StackError(str(invalid)) from None


def local_environment() -> dict[str, str]:
    """Where the local resources find the local stack (PANEL_ENV=local reads these through EnvVar)."""
    return pipeline_environment(
        mongo_uri=local_mongod().uri,
        ses_url=f"http://127.0.0.1:{SES_PORT}",
        surveygizmo_url=f"http://127.0.0.1:{SURVEYGIZMO_PORT}",
        sns_sqs_url=SNS_SQS_URL,
        cloudwatch_url=CLOUDWATCH_URL,
    )


def pipeline_environment(
    mongo_uri: str,
    ses_url: str,
    surveygizmo_url: str,
    sns_sqs_url: str,
    cloudwatch_url: str,
    completes_dir: Path = STATE_DIR / "completes",
) -> dict[str, str]:
    """The variables PANEL_ENV=local resources read, for a stack at these addresses (the tests and
    benchmarks start stacks of their own on free ports), with the local credentials; the samples'
    completes files go to `completes_dir` (a test's stack gives one of its own)."""
    return {
        "PANEL_ENV": "local",
        "MONGO_URI": mongo_uri,
        "SES_ENDPOINT_URL": ses_url,
        "SURVEYGIZMO_BASE_URL": surveygizmo_url,
        "SURVEYGIZMO_PROFILE_SURVEY_IDS": PROFILE_SURVEY_ID,
        "SQS_ENDPOINT_URL": sns_sqs_url,
        # The account's reputation metrics, which a test may put there.
        "CLOUDWATCH_ENDPOINT_URL": cloudwatch_url,
        "SES_EVENTS_QUEUE_URL": local_queue_url(sns_sqs_url),
        # The feed applies only messages from this topic (`ensure_feedback_path` makes it).
        "SES_EVENTS_TOPIC_ARN": local_topic_arn(),
        # Fieldwork time runs at the respondent simulator's pace, so reminders and closing keep up with it.
        "PANEL_FIELDWORK_TIME_SCALE": RESPONDENTS_TIME_SCALE,
        "PANEL_COMPLETES_DIR": str(completes_dir),
        **LOCAL_CREDENTIALS,
    }


def up() -> dict[str, str]:
    """Start everything that is not running; return where each service listens."""
    check_ses_feedback()
    endpoints = {"mongo": local_mongod().start()}
    for service in background_services():
        service.start()
        endpoints[service.name] = f"http://127.0.0.1:{service.port}"
    return endpoints


def status() -> dict[str, bool]:
    return {"mongo": local_mongod().is_running()} | {s.name: s.pid() is not None for s in background_services()}


def record_dagster_dev(pid: int) -> None:
    """Note the process `dev` becomes (`dagster dev`: UI, daemon, code server), so `down` stops it too."""
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    DAGSTER_DEV_PID_FILE.write_text(str(pid))


def stop_dagster_dev() -> bool:
    """Stop `dagster dev` as Ctrl-C in its terminal does: SIGINT to its process group (`make`, dagster
    dev, its webserver, daemon and code server, and the runs the code server launched), so nothing
    is left running against stopped services; to the process alone when it shares our group. SIGKILL
    what is left after DAGSTER_DEV_STOP_SECONDS. False when none runs."""
    pid = live_pid(DAGSTER_DEV_PID_FILE)
    DAGSTER_DEV_PID_FILE.unlink(missing_ok=True)
    if pid is None:
        return False
    group = os.getpgid(pid)
    if group == os.getpgrp():
        target, send = pid, os.kill
    else:
        target, send = group, os.killpg
    send(target, signal.SIGINT)
    deadline = time.monotonic() + DAGSTER_DEV_STOP_SECONDS
    while _signalable(send, target) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _signalable(send, target):
        send(target, signal.SIGKILL)
    return True


def _signalable(send: Callable[[int, int], None], target: int) -> bool:
    try:
        send(target, 0)
    except ProcessLookupError:
        return False
    return True


def down() -> list[str]:
    """Stop `dagster dev` (first: its runs need the services), then every service."""
    stopped = ["dagster dev"] if stop_dagster_dev() else []
    stopped += [s.name for s in background_services() if s.stop()]
    if local_mongod().stop():
        stopped.append("mongo")
    return stopped
