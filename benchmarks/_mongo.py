"""A throwaway real mongod for a benchmark run."""

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pymongo

from panel_pipeline.local.mongod import LocalMongod, free_port


@contextlib.contextmanager
def throwaway_mongod() -> Iterator[tuple[pymongo.MongoClient, str]]:
    """A client and the URI of a mongod that lives for the `with` block."""
    with tempfile.TemporaryDirectory(prefix="panel-bench-") as data_dir:
        server = LocalMongod(data_dir=Path(data_dir), port=free_port())
        server.start()
        try:
            with pymongo.MongoClient(server.uri, tz_aware=True) as client:
                yield client, server.uri
        finally:
            server.stop()
