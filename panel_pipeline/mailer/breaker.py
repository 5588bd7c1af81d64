"""The circuit breakers: bulk mail stops before SES steps in (it reviews an account at a 5% bounce or
0.1% complaint rate and may pause it at 10% / 0.5%).

Invariants:
- **Per mailing.** After each batch a bulk mailing's sending run looks at its last `window_sends`
  sends that SES accepted (their Send events; none before its last resume), once that many are in:
  a permanent-bounce rate above `max_bounce_rate` or a complaint rate above `max_complaint_rate`
  trips it. Tripping writes a `pause` control on the mailing (`control_by: circuit breaker`, the
  reason naming the rate and the window), so the pause goes the one way every control goes
  (mailer/control.py): the holding run stops within this batch, the mailing is `paused` with that
  `paused_reason` and sends nothing more until an operator resumes it, and the resume carries on
  exactly where it stopped. A resumed mailing is judged on its sends since the resume only.
- **Per account.** Bulk mail is held (the mailing postponed, nothing of it sent) while SES's
  `EnforcementStatus` is not HEALTHY or the account's reputation metrics (CloudWatch `AWS/SES`
  `Reputation.BounceRate` / `Reputation.ComplaintRate`) pass the same marks; the account is read
  at most every `account_check_seconds`. Transactional mail is never held here: only SES's own
  pause (sending disabled) stops it.
No Dagster here.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from bson import ObjectId

from panel_pipeline.mailer.control import PAUSE
from panel_pipeline.mailer.dispatch import Hold, KeepAlive
from panel_pipeline.mailer.store import MailingControls, MailingReports, RecentFeedback
from panel_pipeline.shared.clock import SYSTEM_CLOCK, Clock
from panel_pipeline.shared.contract import PAUSED

BREAKER = "circuit breaker"
HEALTHY = "HEALTHY"
MIN_WINDOW_SENDS = 200
REPUTATION_NAMESPACE = "AWS/SES"
BOUNCE_METRIC = "Reputation.BounceRate"
COMPLAINT_METRIC = "Reputation.ComplaintRate"


@dataclass(frozen=True)
class BreakerPolicy:
    window_sends: int = 1000
    max_bounce_rate: float = 0.04
    max_complaint_rate: float = 0.0008
    account_check_seconds: float = 60.0

    def __post_init__(self) -> None:
        if self.window_sends < MIN_WINDOW_SENDS:
            raise ValueError(f"window_sends: at least {MIN_WINDOW_SENDS} sends; got {self.window_sends}")


def mailing_trip_reason(feedback: RecentFeedback, policy: BreakerPolicy) -> str | None:
    """Why the mailing must pause, naming the rate and the window; None while it may go on."""
    if feedback.sends < policy.window_sends:
        return None
    window = f"over its last {feedback.sends} sends"
    if feedback.bounce_rate > policy.max_bounce_rate:
        return (
            f"bounce rate {feedback.bounce_rate:.2%} ({feedback.permanent_bounces} permanent bounces) {window} "
            f"passed {policy.max_bounce_rate:.2%}"
        )
    if feedback.complaint_rate > policy.max_complaint_rate:
        return (
            f"complaint rate {feedback.complaint_rate:.2%} ({feedback.complaints} complaints) {window} "
            f"passed {policy.max_complaint_rate:.2%}"
        )
    return None


@dataclass(frozen=True)
class AccountStanding:
    """What SES says of the account: its enforcement status, and its reputation rates where published."""

    enforcement_status: str
    bounce_rate: float | None = None
    complaint_rate: float | None = None


def account_hold_reason(standing: AccountStanding, policy: BreakerPolicy) -> str | None:
    """Why bulk mail must wait for the account; None while it may go."""
    if standing.enforcement_status != HEALTHY:
        return f"bulk mail held: the SES account's enforcement status is {standing.enforcement_status}"
    if standing.bounce_rate is not None and standing.bounce_rate > policy.max_bounce_rate:
        return (
            f"bulk mail held: the SES account's bounce rate {standing.bounce_rate:.2%} "
            f"passed {policy.max_bounce_rate:.2%}"
        )
    if standing.complaint_rate is not None and standing.complaint_rate > policy.max_complaint_rate:
        return (
            f"bulk mail held: the SES account's complaint rate {standing.complaint_rate:.2%} "
            f"passed {policy.max_complaint_rate:.2%}"
        )
    return None


class AccountMonitor:
    """Reads the account's standing (GetAccount, and the reputation metrics if a CloudWatch client is
    given) at most every `account_check_seconds`; one instance may be shared by sender threads."""

    def __init__(
        self,
        get_account: Callable[[], Mapping[str, Any]],
        cloudwatch: Any | None,
        policy: BreakerPolicy,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._get_account = get_account
        self._cloudwatch = cloudwatch
        self._policy = policy
        self._clock = clock
        self._lock = threading.Lock()
        self._read_at: dt.datetime | None = None
        self._reason: str | None = None

    def hold_reason(self) -> str | None:
        with self._lock:
            now = self._clock.now()
            fresh = dt.timedelta(seconds=self._policy.account_check_seconds)
            if self._read_at is None or now - self._read_at >= fresh:
                self._reason = account_hold_reason(self.standing(), self._policy)
                self._read_at = now
            return self._reason

    def standing(self) -> AccountStanding:
        status = str(self._get_account().get("EnforcementStatus", HEALTHY))
        if self._cloudwatch is None:
            return AccountStanding(status)
        bounce, complaint = (self._latest(self._cloudwatch, metric) for metric in (BOUNCE_METRIC, COMPLAINT_METRIC))
        return AccountStanding(status, bounce, complaint)

    def _latest(self, cloudwatch: Any, metric: str) -> float | None:
        """The metric's newest value of the last day (SES publishes reputation metrics about hourly)."""
        end = self._clock.now()
        answer = cloudwatch.get_metric_statistics(
            Namespace=REPUTATION_NAMESPACE,
            MetricName=metric,
            StartTime=end - dt.timedelta(days=1),
            EndTime=end,
            Period=3600,
            Statistics=["Average"],
        )
        points = sorted(answer.get("Datapoints", []), key=lambda point: point["Timestamp"])
        return float(points[-1]["Average"]) if points else None


class MailingBreaker:
    """The per-mailing breaker of one sending run: `trip()` after each batch."""

    def __init__(
        self,
        reports: MailingReports,
        controls: MailingControls,
        mailing: Mapping[str, Any],
        policy: BreakerPolicy,
    ) -> None:
        self._reports = reports
        self._controls = controls
        self._mailing_id: ObjectId = mailing["_id"]
        self._since: dt.datetime | None = mailing.get("resumed_at")
        self._policy = policy

    def trip(self) -> bool:
        """True when the mailing's recent feedback tripped the breaker and its pause is requested."""
        feedback = self._reports.recent_feedback(self._mailing_id, self._policy.window_sends, self._since)
        reason = mailing_trip_reason(feedback, self._policy)
        if reason is None:
            return False
        unpaused = {"processed": False, "status": {"$ne": PAUSED}, "control": {"$exists": False}}
        self._controls.request(self._mailing_id, PAUSE, BREAKER, reason, only_if=unpaused)
        return True


def guarded(hold: KeepAlive, account: AccountMonitor | None, breaker: MailingBreaker | None) -> KeepAlive:
    """The sending run's keep-alive with the breakers: the lease and any control first, then the
    account (bulk mail postponed while it is unwell), then the mailing's own rates (paused)."""

    def keep_alive() -> Hold:
        held = hold()
        if not held.held or held.stop_for is not None:
            return held
        if account is not None and (reason := account.hold_reason()) is not None:
            return Hold(held=True, postpone_for=reason)
        if breaker is not None and breaker.trip():
            return Hold(held=True, stop_for=PAUSE)
        return held

    return keep_alive
