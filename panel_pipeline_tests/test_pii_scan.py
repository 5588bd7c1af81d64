"""The scanner the bad-day test trusts finds what it looks for (a scan that finds nothing proves
nothing unless it can find something)."""

from pathlib import Path

import dagster as dg

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
