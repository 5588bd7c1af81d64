"""`dagster dev` on the project's workspace in a DAGSTER_HOME of its own, as `make run` runs it,
for the tests and benchmarks that need a real daemon."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import requests
from dagster._core.instance.ref import InstanceRef

from panel_pipeline.local.mongod import free_port
from panel_pipeline.local.stack import PROJECT_ROOT as ROOT


class DagsterDev:
    """`dagster dev` on the project's workspace in a temporary DAGSTER_HOME, as the README runs it."""

    def __init__(self, home: Path, env: dict[str, str]) -> None:
        self.home = home
        self.port = free_port()
        self.env = env
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        shutil.copy(ROOT / "dagster.yaml", self.home / "dagster.yaml")
        dagster = Path(sys.executable).with_name("dagster")
        self.process = subprocess.Popen(
            [str(dagster), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(self.port)],
            cwd=ROOT,
            env={**os.environ, **self.env, "DAGSTER_HOME": str(self.home)},
            stdout=(self.home / "dagster-dev.log").open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 120
        while not self.location_loaded():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dagster dev did not come up; see {self.home / 'dagster-dev.log'}")
            time.sleep(0.5)

    def graphql(self, query: str, variables: dict | None = None) -> dict:
        response = requests.post(f"{self.url}/graphql", json={"query": query, "variables": variables or {}}, timeout=30)
        response.raise_for_status()
        return response.json()["data"]

    def location_loaded(self) -> bool:
        try:
            data = self.graphql("{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus } } } }")
        except (requests.RequestException, KeyError, TypeError):
            return False
        entries = data["workspaceOrError"].get("locationEntries", [])
        return any(e["name"] == "panel_pipeline" and e["loadStatus"] == "LOADED" for e in entries)

    def instance(self) -> dg.DagsterInstance:
        return dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(self.home)))

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
