"""mongosh (tools/package.json, installed by `make install`), to run the queries the docs give
operators exactly as they would."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from bson import json_util

MONGOSH = Path(__file__).resolve().parents[1] / "tools" / "node_modules" / ".bin" / "mongosh"


def run_mongosh(uri: str, database: str, script: str) -> Any:
    """The value of `script`'s last statement, run by mongosh on `database`, as Python (Extended JSON
    parsed back by bson: ObjectIds and dates come back typed)."""
    assert MONGOSH.exists(), f"no mongosh at {MONGOSH}: run `make install`"
    url = urlunsplit(urlsplit(uri)._replace(path=f"/{database}"))
    done = subprocess.run(
        [str(MONGOSH), url, "--quiet", "--json=relaxed", "--eval", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return json_util.loads(done.stdout)
