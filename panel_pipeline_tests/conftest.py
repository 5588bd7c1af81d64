"""Shared fixtures: one real mongod (single-node replica set) per test session, a fresh database per test."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pymongo
import pytest
import requests
from dagster._core.instance.ref import InstanceRef
from pymongo.database import Database

from panel_pipeline.local.mongod import LocalMongod, free_port
from panel_pipeline.local.profile_survey import PROFILE_SURVEY
from panel_pipeline.local.ses_server import LocalSesServer
from panel_pipeline.local.surveygizmo_server import LocalSurveyGizmo

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def mongod(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMongod]:
    server = LocalMongod(data_dir=Path(tmp_path_factory.mktemp("mongod")), port=free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def mongo_uri(mongod: LocalMongod) -> str:
    return mongod.uri


@pytest.fixture(scope="session")
def mongo_client(mongo_uri: str) -> Iterator[pymongo.MongoClient]:
    client: pymongo.MongoClient = pymongo.MongoClient(mongo_uri, tz_aware=True)
    yield client
    client.close()


@pytest.fixture
def mongo_db(mongo_client: pymongo.MongoClient) -> Iterator[Database]:
    """A database of its own for each test, dropped afterwards."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    yield mongo_client[name]
    mongo_client.drop_database(name)


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


@pytest.fixture(scope="session")
def local_surveygizmo() -> Iterator[LocalSurveyGizmo]:
    """The SurveyGizmo-compatible server with the demo profile survey and no responses yet."""
    server = LocalSurveyGizmo()
    server.add_survey(PROFILE_SURVEY)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def local_ses() -> Iterator[LocalSesServer]:
    with LocalSesServer(port=free_port(), max_send_rate=200.0) as server:
        yield server


@pytest.fixture(scope="session")
def dagster_dev(
    tmp_path_factory: pytest.TempPathFactory, mongo_uri: str, local_surveygizmo: LocalSurveyGizmo, local_ses: LocalSesServer
) -> Iterator[DagsterDev]:
    """The whole pipeline under a real daemon, as `make run` starts it, on the session's local stack
    (Mongo database `panel`)."""
    environment = {
        "PANEL_ENV": "local",
        "MONGO_URI": mongo_uri,
        "SURVEYGIZMO_BASE_URL": local_surveygizmo.base_url,
        "SES_ENDPOINT_URL": local_ses.url,
    }
    server = DagsterDev(Path(tmp_path_factory.mktemp("dagster_home")), environment)
    server.start()
    yield server
    server.stop()
