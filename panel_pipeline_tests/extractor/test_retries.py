"""The retry loop on its own: attempts, waits through the clock, Retry-After, the previous failure."""

from __future__ import annotations

import datetime as dt
import random

import pytest

from panel_pipeline.extractor.retries import RetryPolicy, TransientFailure, call_with_retries
from panel_pipeline_tests.extractor.conftest import RecordingClock

START = dt.datetime(2024, 6, 3, tzinfo=dt.UTC)


def failing(failures: list[TransientFailure], seen: list[TransientFailure | None]):
    def attempt(previous: TransientFailure | None) -> str:
        seen.append(previous)
        if failures:
            raise failures.pop(0)
        return "ok"

    return attempt


def test_retries_until_success_sleeping_the_jittered_backoff_on_the_clock() -> None:
    clock = RecordingClock(START)
    notices: list[tuple[TransientFailure, int, float]] = []
    seen: list[TransientFailure | None] = []
    timeout = TransientFailure("timed out", server_gave_up=True)
    failures = [timeout, TransientFailure("throttled", throttled=True), TransientFailure("HTTP 503")]
    policy = RetryPolicy(max_attempts=4)

    result = call_with_retries(
        failing(failures, seen), policy, clock, random.Random(1), lambda *notice: notices.append(notice)
    )

    assert result == "ok"
    assert seen[:2] == [None, timeout]  # each attempt is told the failure before it
    assert [attempt for _, attempt, _ in notices] == [1, 2, 3]
    assert clock.sleeps == [delay for _, _, delay in notices]
    for retry, (delay, base) in enumerate(zip(clock.sleeps, (2.0, 15.0, 2.0), strict=True)):
        ceiling = min(policy.max_delay, base * 2**retry)
        assert ceiling / 2 <= delay <= ceiling


def test_retry_after_replaces_the_backoff() -> None:
    clock = RecordingClock(START)
    call_with_retries(
        failing([TransientFailure("throttled", throttled=True, retry_after=7.0)], []),
        RetryPolicy(),
        clock,
        random.Random(),
        lambda *_: None,
    )
    assert clock.sleeps == [7.0]


def test_the_last_failure_propagates_after_the_attempts_without_a_last_wait() -> None:
    clock = RecordingClock(START)
    failures = [TransientFailure(f"HTTP 50{n}") for n in range(5)]
    with pytest.raises(TransientFailure, match="HTTP 502"):
        call_with_retries(failing(failures, []), RetryPolicy(max_attempts=3), clock, random.Random(), lambda *_: None)
    assert len(clock.sleeps) == 2


def test_other_errors_end_the_call_at_once() -> None:
    calls = []

    def attempt(previous: TransientFailure | None) -> None:
        calls.append(previous)
        raise KeyError("not transient")

    with pytest.raises(KeyError):
        call_with_retries(attempt, RetryPolicy(), RecordingClock(START), random.Random(), lambda *_: None)
    assert calls == [None]


def test_a_policy_needs_an_attempt() -> None:
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=0)
