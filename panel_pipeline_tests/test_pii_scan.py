"""The scanner the bad-day test trusts finds what it looks for (a scan that finds nothing proves
nothing unless it can find something), also when SQLite checkpoints a -wal while the scan walks."""

from pathlib import Path

import dagster as dg
import pytest

from panel_pipeline_tests.pii_scan import Needles, scan_dagster_home, scan_texts

NEEDLES = Needles(
    emails=frozenset({"member7@panel.example"}),
    tokens=frozenset({"0123456789abcdef0123"}),
    secrets=frozenset({"s3cret-value"}),
)


def test_it_finds_an_address_in_a_log_a_token_in_metadata_and_a_secret_in_a_file(tmp_path: Path) -> None:
    @dg.asset
    def leaky(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        context.log.info("mailing Member7@Panel.example")
        return dg.MaterializeResult(metadata={"link": "https://x.example/r?token=0123456789abcdef0123"})

    (tmp_path / "compute.log").write_text("config: s3cret-value\n")
    with dg.instance_for_test() as instance:
        assert dg.materialize([leaky], instance=instance).success
        report = scan_dagster_home(tmp_path, instance, NEEDLES)
    kinds = " ".join(report.hits)
    assert "member e-mail" in kinds and "token" in kinds and "secret" in kinds
    assert report.files_read == 1 and report.runs_read == 1 and report.events_read > 0


def test_it_finds_nothing_in_clean_text() -> None:
    assert scan_texts([("error", "mailing 65f0c0ffee0123456789abcd: <email> refused")], NEEDLES) == []


def test_a_wal_checkpointed_mid_scan_starts_the_scan_again_and_its_content_is_read_in_the_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    database, wal, shm = (tmp_path / name for name in ("runs.db", "runs.db-wal", "runs.db-shm"))
    database.write_bytes(b"pages\n")
    wal.write_bytes(b"config: s3cret-value\n")
    shm.write_bytes(b"index\n")
    read_bytes = Path.read_bytes

    def read_then_checkpoint(path: Path) -> bytes:
        """What a running daemon's SQLite may do once the scan has listed the files and read the database:
        move the -wal into the database file and drop the -wal and -shm."""
        data = read_bytes(path)
        if path == database and wal.exists():
            with database.open("ab") as pages:
                pages.write(read_bytes(wal))
            wal.unlink()
            shm.unlink()
        return data

    monkeypatch.setattr(Path, "read_bytes", read_then_checkpoint)
    with dg.instance_for_test() as instance:
        report = scan_dagster_home(tmp_path, instance, NEEDLES)
    assert report.files_read == 1
    assert report.hits == ["file runs.db: a secret"]
