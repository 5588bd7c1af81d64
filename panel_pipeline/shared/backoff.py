"""Exponential backoff: the one formula every retry here waits by. No Dagster, no Mongo.

Before retry n (0 for the first) the wait is base x 2**n, capped. The callers choose the jitter:
none for the queue (an operator reads `retry_at`), equal jitter for the SurveyGizmo client, full
jitter for SES batches (many workers retrying at once).
"""

from __future__ import annotations

import math

MAX_DOUBLINGS = 62  # 2**62 x any base is past every cap, and stays a float


def backoff_seconds(retry: int, base: float, cap: float = math.inf) -> float:
    """base x 2**retry seconds, at most `cap`."""
    return min(cap, base * 2.0 ** min(max(retry, 0), MAX_DOUBLINGS))
