"""How the SurveyGizmo client retries a call: the policy, with tenacity running it.

An attempt that raises `TransientFailure` is tried again, up to `max_attempts` attempts in all;
any other exception ends the call at once. Before retry n (0 for the first) the wait is the
server's `Retry-After` when it sent one, else min(max_delay, base * 2**n) with equal jitter (half
of it fixed, half random), where base is `throttle_delay` after a throttle and `base_delay`
otherwise. Each attempt is told the previous failure, so it can read the answer that follows a
server-side timeout differently. Waits go through the Clock, so tests run instantly. No Dagster.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import tenacity

from panel_pipeline.shared.backoff import backoff_seconds
from panel_pipeline.shared.clock import Clock

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff: min(max_delay, base * 2**retry) with equal jitter; throttles start from `throttle_delay`."""

    max_attempts: int = 6
    base_delay: float = 2.0
    throttle_delay: float = 15.0
    max_delay: float = 120.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")

    def delay(self, retry: int, throttled: bool, rng: random.Random) -> float:
        base = self.throttle_delay if throttled else self.base_delay
        ceiling = backoff_seconds(retry, base, self.max_delay)
        return ceiling / 2 + rng.uniform(0, ceiling / 2)


class TransientFailure(Exception):
    """A failure worth retrying; `reason` is safe to log."""

    def __init__(
        self, reason: str, throttled: bool = False, retry_after: float | None = None, server_gave_up: bool = False
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.throttled = throttled
        self.retry_after = retry_after
        # The API kills requests at 30 s with a 500 and then answers 400 for a minute.
        self.server_gave_up = server_gave_up


# What the caller hears before each retry: the failure, its attempt number (from 1), the wait.
RetryNotice = Callable[[TransientFailure, int, float], None]


def call_with_retries(
    attempt: Callable[[TransientFailure | None], T],
    policy: RetryPolicy,
    clock: Clock,
    rng: random.Random,
    on_retry: RetryNotice,
) -> T:
    """`attempt(previous failure, None the first time)` until it returns; the last attempt's
    `TransientFailure` propagates once the policy's attempts are used up."""
    previous: TransientFailure | None = None

    def once() -> T:
        nonlocal previous
        try:
            return attempt(previous)
        except TransientFailure as failure:
            previous = failure
            raise

    def wait(state: tenacity.RetryCallState) -> float:
        failure = _failure(state)
        return failure.retry_after or policy.delay(state.attempt_number - 1, failure.throttled, rng)

    def before_sleep(state: tenacity.RetryCallState) -> None:
        on_retry(_failure(state), state.attempt_number, state.upcoming_sleep)

    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(policy.max_attempts),
        wait=wait,
        retry=tenacity.retry_if_exception_type(TransientFailure),
        sleep=clock.sleep,
        before_sleep=before_sleep,
        reraise=True,
    )
    return retrying(once)


def _failure(state: tenacity.RetryCallState) -> TransientFailure:
    failure = state.outcome.exception() if state.outcome is not None else None
    if not isinstance(failure, TransientFailure):  # tenacity retries only TransientFailure
        raise TypeError(f"expected a TransientFailure, got {failure!r}")
    return failure
