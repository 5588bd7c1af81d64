"""The one rate limiter: a thread-safe token bucket, used to pace SurveyGizmo calls and SES sends.

`acquire(n)` takes its n tokens at once (the balance may go negative) and then sleeps until they
would have existed, so concurrent callers are served in the order they came without holding the
lock while they wait. At most `capacity` tokens are saved up while nobody asks. No Dagster.
"""

from __future__ import annotations

import threading

from panel_pipeline.shared.clock import SYSTEM_CLOCK, Clock


class TokenBucket:
    def __init__(self, rate_per_second: float, capacity: float = 1.0, clock: Clock = SYSTEM_CLOCK) -> None:
        if rate_per_second <= 0 or capacity <= 0:
            raise ValueError("rate_per_second and capacity must be positive")
        self.rate = rate_per_second
        self.capacity = capacity
        self._clock = clock
        self._lock = threading.Lock()
        self._tokens = capacity
        self._updated = clock.monotonic()

    def acquire(self, tokens: float = 1.0) -> float:
        """Take `tokens`, sleeping as long as the rate needs; returns the seconds slept."""
        if tokens > self.capacity:
            raise ValueError(f"cannot take {tokens} tokens from a bucket of {self.capacity}")
        with self._lock:
            now = self._clock.monotonic()
            self._tokens = min(self.capacity, self._tokens + (now - self._updated) * self.rate) - tokens
            self._updated = now
            wait = -self._tokens / self.rate if self._tokens < 0 else 0.0
        if wait > 0:
            self._clock.sleep(wait)
        return wait
