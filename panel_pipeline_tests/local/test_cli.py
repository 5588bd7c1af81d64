"""`python -m panel_pipeline.local`, which `make run` and `make stop` call, on a state folder of its own
(so nothing here touches a stack that is running)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.stack

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("mongo", "surveygizmo", "sns_sqs", "cloudwatch", "ses", "respondents")


def run_local(state_dir: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "panel_pipeline.local", *arguments],
        cwd=ROOT,
        env={**os.environ, "PANEL_PIPELINE_STATE_DIR": str(state_dir)},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_stack_status_names_every_service_and_fails_while_one_is_down(tmp_path: Path) -> None:
    completed = run_local(tmp_path, "stack", "status")
    assert completed.returncode == 1, completed.stderr
    states = dict(line.split() for line in completed.stdout.splitlines())
    assert states == dict.fromkeys(SERVICES, "stopped")


def test_stack_down_with_nothing_running_says_so(tmp_path: Path) -> None:
    completed = run_local(tmp_path, "stack", "down")
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "stopped: nothing was running"
