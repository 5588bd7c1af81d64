"""SES's account-level suppression list kept in step with members' statuses, both ways (no Dagster).

Invariants:
* **Push.** Every member `bounced` here is on SES's list with reason BOUNCE, every member
  `unsubscribed` with COMPLAINT (SES knows no other reasons), put there once per change of status:
  `users.ses_suppressed_at` (store.SuppressionStore) marks a member whose address is on the list,
  written after PutSuppressedDestination: after a crash in between, the next pull reads the address
  back from SES's list and marks the member, or (the list lagging) it is put again, a no-op for SES.
  Which members are due is a query, not a time cursor: a member the backend bounced or unsubscribed
  without `status_changed_at` is pushed too.
* **Pull.** SES's list is read from where the last complete pull ended (StartDate, less
  `PULL_OVERLAP`: SES's list is eventually consistent) to the pull's start (EndDate), page by page;
  the cursor moves only after the last page, so a pull cut short is read again. An active member
  with a listed address becomes `bounced` (BOUNCE) or `unsubscribed` (COMPLAINT) with
  `status_reason` "SES suppression list: ..." and `status_changed_at`, unless their status changed
  at or after the entry's LastUpdateTime: a later decision of the backend's is never undone.
  Addresses of no member are counted and ignored.
* **Reactivation.** A member active again while their address is on the list (the backend
  reactivated them) is taken off it (DeleteSuppressedDestination; "not on the list" is as good):
  otherwise SES would accept and silently drop every e-mail to them, and report each as a permanent
  bounce that bounces them here again. If the address is really dead, the next e-mail bounces and
  puts it back. An old address of a member who changed theirs stays on the list.
* **Pacing.** Every SES call waits for a token of one bucket at `calls_per_second` (SES allows about
  one call per second for these by default) and a run makes at most `max_calls`; what is left waits
  for the next run (the marks and the cursor say where this one stopped). Order: pull, push, delete.
* Only counts are logged and reported, never an address; SES errors are redacted (`SesAdminError`).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError

from panel_pipeline.mailer.ses import SesAdminError, aws_error_code
from panel_pipeline.mailer.store import MemberAddress, SuppressionStore, normalize_email
from panel_pipeline.shared.clock import SYSTEM_CLOCK, Clock
from panel_pipeline.shared.contract import BOUNCED, UNSUBSCRIBED
from panel_pipeline.shared.privacy import describe_error
from panel_pipeline.shared.rate_limit import TokenBucket

log = logging.getLogger(__name__)

BOUNCE = "BOUNCE"
COMPLAINT = "COMPLAINT"
REASON_FOR_STATUS = {BOUNCED: BOUNCE, UNSUBSCRIBED: COMPLAINT}
STATUS_FOR_REASON = {reason: status for status, reason in REASON_FOR_STATUS.items()}
PAGE_SIZE = 1000  # SES's largest ListSuppressedDestinations page
PULL_OVERLAP = dt.timedelta(minutes=10)
MEMBERS_PER_QUERY = 100
NOT_FOUND = {"NotFoundException", "404"}


@dataclass(frozen=True)
class ListedAddress:
    """One entry of SES's suppression list; `email` (normalized) never goes into a log or metadata."""

    email: str = field(repr=False)
    reason: str
    last_update_time: dt.datetime


class CallsUsedUp(Exception):
    """This run made its `max_calls` SES calls: the rest is left for the next run."""


class SesSuppressionList:
    """SES v2's account suppression list through a boto3 `sesv2` client, every call paced."""

    def __init__(self, client: Any, calls_per_second: float, max_calls: int, clock: Clock = SYSTEM_CLOCK) -> None:
        self._client = client
        self._pacer = TokenBucket(calls_per_second, 1.0, clock)
        self.max_calls = max_calls
        self.calls = 0

    def put(self, email: str, reason: str) -> bool:
        """Put the address on the list (again is harmless); False if SES refused it as a bad request."""
        try:
            self._call(self._client.put_suppressed_destination, EmailAddress=email, Reason=reason)
        except ClientError as exc:
            if aws_error_code(exc) == "BadRequestException":
                return False
            raise SesAdminError(describe_error(exc)) from None
        return True

    def delete(self, email: str) -> None:
        """Take the address off the list; one that is not there is as good."""
        try:
            self._call(self._client.delete_suppressed_destination, EmailAddress=email)
        except ClientError as exc:
            if aws_error_code(exc) not in NOT_FOUND:
                raise SesAdminError(describe_error(exc)) from None

    def pages(self, start: dt.datetime | None, end: dt.datetime) -> Iterator[list[ListedAddress]]:
        """The entries with LastUpdateTime from `start` (None: all) to `end`, a page per call."""
        request: dict[str, Any] = {"EndDate": end, "PageSize": PAGE_SIZE}
        if start is not None:
            request["StartDate"] = start
        while True:
            try:
                page = self._call(self._client.list_suppressed_destinations, **request)
            except ClientError as exc:
                raise SesAdminError(describe_error(exc)) from None
            yield [_listed(entry) for entry in page.get("SuppressedDestinationSummaries", [])]
            if not page.get("NextToken"):
                return
            request["NextToken"] = page["NextToken"]

    def _call(self, call: Callable[..., Any], **kwargs: Any) -> Any:
        if self.calls >= self.max_calls:
            raise CallsUsedUp
        self._pacer.acquire()
        self.calls += 1
        return call(**kwargs)


def _listed(entry: dict[str, Any]) -> ListedAddress:
    when = entry["LastUpdateTime"]
    return ListedAddress(normalize_email(str(entry["EmailAddress"])), str(entry["Reason"]), when.astimezone(dt.UTC))


@dataclass
class SyncReport:
    """What one sync did; counts only."""

    pushed: Counter[str] = field(default_factory=Counter)  # reason -> addresses put on SES's list
    push_refused: int = 0  # SES refused the address as a bad request (marked: not tried again)
    pulled: int = 0  # entries read from SES's list
    # marked, already, changed_later, not_member (and unknown_reason, should SES add a reason)
    pulled_outcomes: Counter[str] = field(default_factory=Counter)
    marked: Counter[str] = field(default_factory=Counter)  # new status -> members
    deleted: int = 0  # reactivated members' addresses taken off SES's list
    pull_window: tuple[dt.datetime | None, dt.datetime] | None = None
    pull_complete: bool = False
    calls: int = 0
    calls_used_up: bool = False

    @property
    def skipped(self) -> int:
        """Listed entries that changed no member: not active here already, changed later, no member."""
        return self.pulled - self.pulled_outcomes["marked"]


def sync_suppression(ses_list: SesSuppressionList, store: SuppressionStore, clock: Clock = SYSTEM_CLOCK) -> SyncReport:
    """Pull SES's list, push our suppressed members, take reactivated members off (module docstring);
    stops early, keeping what it did, once `ses_list` has made its `max_calls` calls."""
    report = SyncReport()
    try:
        pull(ses_list, store, clock.now(), report)
        push(ses_list, store, report)
        delete_reactivated(ses_list, store, report)
    except CallsUsedUp:
        report.calls_used_up = True
        log.info("suppression sync used its %d SES calls; the rest is left for the next run", ses_list.max_calls)
    report.calls = ses_list.calls
    return report


def pull(ses_list: SesSuppressionList, store: SuppressionStore, now: dt.datetime, report: SyncReport) -> None:
    last_end = store.pulled_through()
    start = last_end - PULL_OVERLAP if last_end is not None else None
    end = now.replace(microsecond=now.microsecond // 1000 * 1000)  # as Mongo stores it: whole milliseconds
    report.pull_window = (start, end)
    for page in ses_list.pages(start, end):
        report.pulled += len(page)
        members = store.members_with(entry.email for entry in page)
        for entry in page:
            status = STATUS_FOR_REASON.get(entry.reason)
            if entry.email not in members or status is None:
                report.pulled_outcomes["not_member" if status else "unknown_reason"] += 1
                continue
            reason = f"SES suppression list: {entry.reason}"
            outcome = store.apply_ses_suppression(entry.email, status, reason, entry.last_update_time)
            report.pulled_outcomes[outcome] += 1
            if outcome == "marked":
                report.marked[status] += 1
    store.save_pulled_through(end)
    report.pull_complete = True


def push(ses_list: SesSuppressionList, store: SuppressionStore, report: SyncReport) -> None:
    while due := store.to_push(MEMBERS_PER_QUERY):
        for member in due:
            if _push_one(ses_list, member):
                report.pushed[REASON_FOR_STATUS[member.status]] += 1
            else:
                report.push_refused += 1
            store.mark_on_list(member.user_id)


def _push_one(ses_list: SesSuppressionList, member: MemberAddress) -> bool:
    if not member.email:
        return False  # nothing SES could suppress
    return ses_list.put(member.email, REASON_FOR_STATUS[member.status])


def delete_reactivated(ses_list: SesSuppressionList, store: SuppressionStore, report: SyncReport) -> None:
    while due := store.reactivated(MEMBERS_PER_QUERY):
        for member in due:
            if member.email:
                ses_list.delete(member.email)
            store.mark_off_list(member.user_id)
            report.deleted += 1
