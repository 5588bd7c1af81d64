"""`dagster dev` on the project's workspace in a DAGSTER_HOME of its own, as `make run` runs it,
for the tests and benchmarks that need a real daemon."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import requests

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
        return dg.DagsterInstance.from_config(str(self.home))

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)

    def activity(self, runs: int = 10, ticks: int = 3) -> str:
        """The latest runs and each sensor's latest ticks: what a test that timed out prints."""
        data = self.graphql(
            """query Activity($runs: Int!, $ticks: Int!) {
                 runsOrError(limit: $runs) { ... on Runs { results { runId jobName status startTime } } }
                 sensorsOrError(
            repositorySelector: {repositoryLocationName: "panel_pipeline", repositoryName: "__repository__"}
        ) {
                   ... on Sensors { results { name sensorState { status ticks(limit: $ticks) {
                     timestamp status skipReason runIds error { message } } } } } } }""",
            {"runs": runs, "ticks": ticks},
        )
        lines = ["latest runs:"]
        lines += [
            f"  {r['runId'][:8]} {r['jobName']} {r['status']} started={r['startTime']}"
            for r in data["runsOrError"]["results"]
        ]
        for sensor in data["sensorsOrError"]["results"]:
            state = sensor["sensorState"]
            lines.append(f"sensor {sensor['name']} ({state['status']}):")
            for tick in state["ticks"]:
                detail = (
                    tick["skipReason"] or (tick["error"] or {}).get("message", "").splitlines()[:1] or tick["runIds"]
                )
                lines.append(f"  {tick['timestamp']:.0f} {tick['status']} {detail}")
        log = re.sub(r"\x1b\[[0-9;]*m", "", (self.home / "dagster-dev.log").read_text(errors="replace"))
        log_tail = log.splitlines()[-40:]
        return "\n".join([*lines, "dagster dev's log, last lines:", *log_tail])

    def run_summary(self) -> str:
        """Per job: how many runs, their seconds queued and running, summed; where a daemon test's time went."""
        totals: dict[str, list[float]] = {}
        with self.instance() as instance:
            for record in instance.get_run_records():
                start, end = record.start_time, record.end_time
                if start is None or end is None:
                    continue
                queued = max(start - record.create_timestamp.timestamp(), 0.0)
                row = totals.setdefault(record.dagster_run.job_name, [0, 0.0, 0.0])
                row[0] += 1
                row[1] += queued
                row[2] += end - start
        ranked = sorted(totals.items(), key=lambda item: -item[1][2])
        return "; ".join(f"{job} {n:.0f} runs, {q:.0f} s queued, {r:.0f} s running" for job, (n, q, r) in ranked)
