"""The production instance configuration, loaded against a real PostgreSQL server.

Debian's postgresql package is installed by the test set-up (`make test`); this starts a throwaway
cluster of its own on a free port as the `postgres` user. The ECS run launcher needs AWS, so the
test swaps it for the default launcher and keeps everything else of deploy/dagster.prod.yaml.
"""

import glob
import shutil
import subprocess
import tempfile
from pathlib import Path

import dagster as dg
import pytest
import yaml

from panel_pipeline.local.mongod import free_port

pytestmark = pytest.mark.stack

ROOT = Path(__file__).resolve().parents[1]


def postgres_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        pytest.fail("PostgreSQL server binaries are missing: run `make test`, which installs Debian's postgresql")
    return found[-1]


def as_postgres(*command: str) -> None:
    completed = subprocess.run(["runuser", "-u", "postgres", "--", *command], capture_output=True, text=True)
    assert completed.returncode == 0, completed.stdout + completed.stderr


@pytest.fixture(scope="module")
def postgres():
    # Not under pytest's tmp_path: that folder is private to root and postgres must not run as root.
    base = Path(tempfile.mkdtemp(prefix="panel-pipeline-pg-"))
    data = base / "data"
    shutil.chown(base, "postgres")
    port = free_port()
    as_postgres(postgres_bin("initdb"), "-D", str(data), "-A", "trust", "-U", "postgres")
    as_postgres(
        postgres_bin("pg_ctl"),
        "-D",
        str(data),
        "-l",
        str(base / "log"),
        "-w",
        "-o",
        f"-p {port} -k {base} -c listen_addresses=127.0.0.1",
        "start",
    )
    as_postgres(postgres_bin("createdb"), "-h", "127.0.0.1", "-p", str(port), "dagster")
    yield port
    as_postgres(postgres_bin("pg_ctl"), "-D", str(data), "-m", "fast", "stop")
    shutil.rmtree(base, ignore_errors=True)


def test_production_instance_works_on_postgres(postgres, tmp_path, monkeypatch):
    config = yaml.safe_load((ROOT / "deploy" / "dagster.prod.yaml").read_text())
    assert config["run_launcher"]["class"] == "EcsRunLauncher"
    del config["run_launcher"]
    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump(config))
    for name, value in {
        "DAGSTER_PG_HOST": "127.0.0.1",
        "DAGSTER_PG_PORT": str(postgres),
        "DAGSTER_PG_USERNAME": "postgres",
        "DAGSTER_PG_PASSWORD": "unused",
        "DAGSTER_PG_DB": "dagster",
    }.items():
        monkeypatch.setenv(name, value)

    @dg.asset
    def probe() -> int:
        return 1

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    with dg.DagsterInstance.get() as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        assert instance.get_concurrency_config().run_queue_config.max_concurrent_runs == 20
        result = dg.materialize([probe], instance=instance)
        assert result.success
        assert instance.get_latest_materialization_event(dg.AssetKey("probe")) is not None
