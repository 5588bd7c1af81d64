"""The one backoff formula (pure)."""

from panel_pipeline.shared.backoff import backoff_seconds


def test_the_wait_doubles_from_the_base_up_to_the_cap() -> None:
    assert [backoff_seconds(retry, 2.0, 30.0) for retry in range(6)] == [2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert backoff_seconds(-1, 10.0) == 10.0  # before any failure counts as the first retry
    assert backoff_seconds(10_000, 1.0, 600.0) == 600.0  # no overflow however many attempts
