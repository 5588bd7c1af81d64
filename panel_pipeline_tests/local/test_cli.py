"""`python -m panel_pipeline.local`, which `make run` and `make stop` call, on a state folder of its own
(so nothing here touches a stack that is running)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
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


def test_stack_down_stops_the_dagster_dev_that_make_run_started(tmp_path: Path) -> None:
    """`dev` records its pid before it becomes `dagster dev`; here a stand-in that, like dagster dev,
    shuts down on SIGTERM."""
    stand_in = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import signal, sys, time; signal.signal(signal.SIGTERM, lambda *_: sys.exit(0)); time.sleep(120)",
        ]
    )
    reaper = threading.Thread(target=stand_in.wait)  # so the stopped process does not linger as a zombie
    reaper.start()
    (tmp_path / "dagster_dev.pid").write_text(str(stand_in.pid))
    try:
        completed = run_local(tmp_path, "stack", "down")
        assert completed.returncode == 0, completed.stderr
        assert completed.stdout.strip() == "stopped: dagster dev"
        reaper.join(timeout=5)
        assert stand_in.returncode == 0, "stopped by SIGTERM, in time"
        assert not (tmp_path / "dagster_dev.pid").exists()
    finally:
        stand_in.kill()
        reaper.join()
