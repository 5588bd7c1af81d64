"""`python -m panel_pipeline.local`, which `make run` and `make stop` call, on a state folder of its own
(so nothing here touches a stack that is running)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from panel_pipeline.local.mongod import pid_alive
from panel_pipeline_tests.waiting import wait_for

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


# Like dagster dev: stops on SIGINT, with a child (a run) in its process group that does not handle it.
STAND_IN = """
import signal, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
print(child.pid, flush=True)
signal.signal(signal.SIGINT, lambda *_: sys.exit(0))
time.sleep(120)
"""


def test_stack_down_stops_the_dagster_dev_that_make_run_started_with_its_process_group(tmp_path: Path) -> None:
    """`dev` records its pid before it becomes `dagster dev`; `stack down` stops it and what it
    started (here a stand-in in a process group of its own, as `make run` in a terminal is) as Ctrl-C
    would, so no run is left behind."""
    stand_in = subprocess.Popen(
        [sys.executable, "-c", STAND_IN], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    assert stand_in.stdout is not None
    child = int(stand_in.stdout.readline())
    reaper = threading.Thread(target=stand_in.wait)  # so the stopped process does not linger as a zombie
    reaper.start()
    (tmp_path / "dagster_dev.pid").write_text(str(stand_in.pid))
    try:
        completed = run_local(tmp_path, "stack", "down")
        assert completed.returncode == 0, completed.stderr
        assert completed.stdout.strip() == "stopped: dagster dev"
        reaper.join(timeout=5)
        assert stand_in.returncode == 0, "stopped by SIGINT, in time"
        wait_for(lambda: not pid_alive(child), timeout=5, what="the stand-in's child to be stopped with its group")
        assert not (tmp_path / "dagster_dev.pid").exists()
    finally:
        if pid_alive(stand_in.pid):
            os.killpg(stand_in.pid, signal.SIGKILL)
        reaper.join()
