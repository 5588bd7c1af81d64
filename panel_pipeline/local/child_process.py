"""A local server run as a child process by the object that started it (the tests' and benchmarks' stacks)."""

from __future__ import annotations

import subprocess
import tempfile
import threading
from pathlib import Path
from typing import IO, Self

STOP_TIMEOUT_SECONDS = 5.0


class ChildProcessServer:
    """Start/stop a server subprocess; `start` is a no-op while this object runs one, `stop`
    terminates it (killing it after a few seconds). Subclasses say how to spawn it and when it is up.
    Safe to share between threads and fixtures."""

    port: int
    host: str
    log_path: Path | None
    log_name = "server"  # the default log file's name: <log_name>-<port>.log in the temp folder

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def log_file_path(self) -> Path:
        return self.log_path or Path(tempfile.gettempdir()) / f"{self.log_name}-{self.port}.log"

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> str:
        """Start the server (no-op if this object already runs it); returns `url` once it answers."""
        with self._lock:
            if self.is_running():
                return self.url
            with open(self.log_file_path, "ab") as log_file:
                self._process = self._spawn(log_file)
            self._wait_ready(self._process)
            return self.url

    def stop(self) -> bool:
        """Stop the server this object started; True when one was running."""
        with self._lock:
            process, self._process = self._process, None
            if process is None or process.poll() is not None:
                return False
            process.terminate()
            try:
                process.wait(timeout=STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            return True

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def _spawn(self, log_file: IO[bytes]) -> subprocess.Popen[bytes]:
        raise NotImplementedError

    def _wait_ready(self, process: subprocess.Popen[bytes]) -> None:
        raise NotImplementedError
