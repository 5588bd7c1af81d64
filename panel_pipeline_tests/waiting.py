"""Small helpers shared by the tests that drive a real daemon."""

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(
    predicate: Callable[[], T], timeout: float = 180.0, what: str = "condition", explain: Callable[[], str] | None = None
) -> T:
    """Poll until `predicate` returns something truthy, and return it; on timeout, fail with what
    `explain` says of the state of things (e.g. the daemon's latest runs and sensor ticks)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}" + (f"\n{explain()}" if explain else ""))
