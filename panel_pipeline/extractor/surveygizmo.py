"""A SurveyGizmo (Alchemer) REST v5 client on `requests`, for the Extractor.

What it does that the public clients do not (research note §12):

* Credentials travel as query parameters, so no URL ever reaches a log line, an exception message,
  a traceback or a repr: requests' own exceptions are caught and replaced (`from None`) by ours,
  which name the path only.
* Every call has a timeout, goes through the shared token bucket (default 240 calls/minute) and
  is retried (extractor/retries.py) with jittered exponential backoff on 429, 5xx, timeouts,
  connection errors, HTML/CDN pages, unparseable bodies and "please wait" answers; 401/403/404 fail
  at once. `result_ok: false` is checked on every answer, including HTTP 200.
* Listing pages with `resultsperpage=500` until a short or empty page, coercing string totals,
  de-duplicating ids, and rescanning (with a different page size, so the 60 s cache cannot serve a
  stale copy) when the totals moved during the scan or fewer ids came back than were counted.
* Filter bounds are written as wall times in the account's zone (extractor/wall_time.py), widened
  around the repeated autumn hour, and records are then kept only if their parsed `date_submitted`
  is in the window.

The Clock (shared/clock.py: pacing and backoff sleep through it) and the random source are
injectable so tests run fast. No Dagster.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import random
import re
import threading
from collections.abc import Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit
from zoneinfo import ZoneInfo

import requests

from panel_pipeline.extractor.responses import parse_timestamp
from panel_pipeline.extractor.retries import RetryPolicy, TransientFailure, call_with_retries
from panel_pipeline.extractor.wall_time import lower_bound_wall_time, upper_bound_wall_time
from panel_pipeline.shared.clock import SYSTEM_CLOCK, Clock
from panel_pipeline.shared.rate_limit import TokenBucket

logger = logging.getLogger(__name__)

API_HOSTS = {"US": "https://api.alchemer.com", "EU": "https://api.alchemer.eu", "CA": "https://api.alchemer-ca.com"}
LEGACY_API_HOSTS = {
    "US": "https://restapi.surveygizmo.com",
    "EU": "https://restapi.surveygizmo.eu",
    "CA": "https://restapica.surveygizmo.com",
}
ACCOUNT_TIME_ZONES = {"US": "America/New_York", "EU": "UTC", "CA": "UTC"}
MAX_PAGE_SIZE = 500
FILTER_OPERATORS = frozenset({"=", "<>", "!=", ">", "<", ">=", "<=", "IS NULL", "IS NOT NULL", "in"})
VALUELESS_OPERATORS = frozenset({"IS NULL", "IS NOT NULL"})
PLEASE_WAIT = "please wait"
SG_WARNING_HEADER = "X-SG-Warning"
ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]+$")
DEFAULT_RETRY = RetryPolicy()


class SurveyGizmoError(Exception):
    """A call failed; the message names the method and path, never the query string."""

    def __init__(self, message: str, path: str, status: int | None = None, code: int | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.status = status
        self.code = code


class SurveyGizmoAuthError(SurveyGizmoError):
    """Rejected credentials (wrong key, rotated key, or the account lives in another region)."""


class SurveyGizmoNotFound(SurveyGizmoError):
    """The survey or response does not exist (or this key cannot see it)."""


class SurveyGizmoUnavailable(SurveyGizmoError):
    """Still failing after every retry: rate limits, outages, timeouts or unreadable answers."""


@dataclass(frozen=True)
class Filter:
    """One `filter[field|operator|value][N]` triple; `value` is omitted for IS (NOT) NULL."""

    field: str
    operator: str
    value: str | Sequence[str] | None = None

    def __post_init__(self) -> None:
        if self.operator not in FILTER_OPERATORS:
            raise ValueError(f"unknown filter operator {self.operator!r}")
        if (self.value is None) != (self.operator in VALUELESS_OPERATORS):
            raise ValueError(f"operator {self.operator!r} {'takes no' if self.value is not None else 'needs a'} value")

    def wire_value(self) -> str | None:
        if self.value is None or isinstance(self.value, str):
            return self.value
        return ",".join(self.value)


def filter_params(filters: Sequence[Filter]) -> dict[str, str]:
    """Query parameters for `filters`; requests percent-encodes brackets and operators."""
    params: dict[str, str] = {}
    for index, item in enumerate(filters):
        params[f"filter[field][{index}]"] = item.field
        params[f"filter[operator][{index}]"] = item.operator
        value = item.wire_value()
        if value is not None:
            params[f"filter[value][{index}]"] = value
    return params


class _CredentialRedactor(logging.Filter):
    """Redacts registered credentials from records of a third-party logger.

    urllib3 logs every request line, query string included, at DEBUG; a run that turns DEBUG on
    must still not write the key pair anywhere.
    """

    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if any(secret in message for secret in self.secrets):
            for secret in self.secrets:
                message = message.replace(secret, "***")
            record.msg, record.args = message, None
        return True


_URLLIB3_REDACTOR = _CredentialRedactor()
logging.getLogger("urllib3.connectionpool").addFilter(_URLLIB3_REDACTOR)


@dataclass(frozen=True)
class _ListingOutcome:
    """How a listing ended: whether a pass's pages and its count agreed, and the last count."""

    settled: bool
    reported_total: int | None


@dataclass(frozen=True)
class ResponseIdListing:
    """The response ids SurveyGizmo listed, the count it reported, and whether the two agreed."""

    ids: frozenset[str]
    reported_total: int | None
    settled: bool


@dataclass
class _ScanState:
    """One pass over a listing: the totals each page reported and the ids it returned."""

    totals: set[int]
    ids: set[str]


class SurveyGizmoClient:
    """GET-only client for one account. Thread-safe; one request in flight at a time."""

    def __init__(
        self,
        api_token: str,
        api_token_secret: str,
        *,
        region: str = "US",
        legacy_host: bool = False,
        base_url: str | None = None,
        account_time_zone: str | None = None,
        timeout: tuple[float, float] = (10.0, 45.0),
        calls_per_minute: float = 240.0,
        retry: RetryPolicy = DEFAULT_RETRY,
        clock: Clock = SYSTEM_CLOCK,
        rng: random.Random | None = None,
        session: requests.Session | None = None,
    ) -> None:
        if region not in API_HOSTS:
            raise ValueError(f"region must be one of {', '.join(API_HOSTS)}, not {region!r}")
        if not api_token or not api_token_secret:
            raise ValueError("api_token and api_token_secret are required")
        self._credentials = {"api_token": api_token, "api_token_secret": api_token_secret}
        _URLLIB3_REDACTOR.secrets.update(self._credentials.values())
        self.region = region
        self.base_url = (base_url or (LEGACY_API_HOSTS if legacy_host else API_HOSTS)[region]).rstrip("/")
        self.account_zone = ZoneInfo(account_time_zone or ACCOUNT_TIME_ZONES[region])
        self.timeout = timeout
        self.retry = retry
        self._clock = clock
        self._rng = rng or random.Random()
        self._limiter = TokenBucket(calls_per_minute / 60.0, capacity=1.0, clock=clock)
        self._session = session or requests.Session()
        self._in_flight = threading.Lock()
        self._counter_lock = threading.Lock()
        self._calls_made = 0
        self._retry_wait = 0.0

    def __repr__(self) -> str:
        return f"SurveyGizmoClient(base_url={self.base_url!r}, region={self.region!r}, zone={self.account_zone.key!r})"

    @property
    def calls_made(self) -> int:
        """HTTP requests sent so far, retries included."""
        return self._calls_made

    @property
    def retry_wait_seconds(self) -> float:
        """Time spent backing off before retries so far (the rate limiter's waits not included)."""
        return self._retry_wait

    def get_account(self) -> dict[str, Any]:
        """The account record; a cheap way to check credentials and region."""
        return _unwrap(self._get("/v5/account", {}))

    def get_survey(self, survey_id: str | int) -> dict[str, Any]:
        """The survey definition tree (pages -> questions -> options)."""
        return _unwrap(self._get(f"/v5/survey/{_segment(survey_id)}", {}))

    def get_response(self, survey_id: str | int, response_id: str | int) -> dict[str, Any]:
        """One raw response record (wrapped or unwrapped answers are both accepted)."""
        return _unwrap(self._get(f"/v5/survey/{_segment(survey_id)}/surveyresponse/{_segment(response_id)}", {}))

    def list_responses(
        self,
        survey_id: str | int,
        submitted_from: dt.datetime,
        submitted_to: dt.datetime,
        *,
        status: str | None = None,
        include_test_data: bool = True,
        filters: Sequence[Filter] = (),
        page_size: int = MAX_PAGE_SIZE,
        max_passes: int = 3,
    ) -> Iterator[dict[str, Any]]:
        """Raw response records submitted in [submitted_from, submitted_to), each id once.

        Bounds must be timezone-aware. Records whose `date_submitted` cannot be parsed are
        yielded too, so the caller can quarantine them.
        """
        for bound in (submitted_from, submitted_to):
            if bound.tzinfo is None:
                raise ValueError("submitted_from and submitted_to must be timezone-aware")
        window = [
            Filter("date_submitted", ">=", lower_bound_wall_time(submitted_from, self.account_zone)),
            Filter("date_submitted", "<", upper_bound_wall_time(submitted_to, self.account_zone)),
        ]
        if status is not None:
            window.append(Filter("status", "=", status))
        if not include_test_data:
            window.append(Filter("is_test_data", "=", "0"))
        path = f"/v5/survey/{_segment(survey_id)}/surveyresponse"
        for record in self.iterate_list(path, [*window, *filters], page_size=page_size, max_passes=max_passes):
            if self._submitted_within(record, submitted_from, submitted_to):
                yield record

    def list_response_ids(
        self,
        survey_id: str | int,
        submitted_before: dt.datetime,
        *,
        page_size: int = MAX_PAGE_SIZE,
        max_passes: int = 3,
    ) -> ResponseIdListing:
        """The ids of every response (any status; v5 lists leave deleted ones out) submitted before
        `submitted_before`: full pages of 500, as v5 cannot return ids alone, so ceil(N/500) + 1
        calls per pass. `settled` says whether a pass's pages and the count agreed."""
        if submitted_before.tzinfo is None:
            raise ValueError("submitted_before must be timezone-aware")
        path = f"/v5/survey/{_segment(survey_id)}/surveyresponse"
        closed = [Filter("date_submitted", "<", upper_bound_wall_time(submitted_before, self.account_zone))]
        listing = self._listing(path, closed, page_size, max_passes)
        ids: set[str] = set()
        while True:
            try:
                row_id = _row_id(next(listing))
            except StopIteration as end:
                outcome: _ListingOutcome = end.value
                return ResponseIdListing(frozenset(ids), outcome.reported_total, outcome.settled)
            if row_id is not None:
                ids.add(row_id)

    def iterate_list(
        self, path: str, filters: Sequence[Filter] = (), *, page_size: int = MAX_PAGE_SIZE, max_passes: int = 3
    ) -> Iterator[dict[str, Any]]:
        """Every record of a paginated listing once, rescanning while the listing moves under us."""
        yield from self._listing(path, filters, page_size, max_passes)

    def _listing(
        self, path: str, filters: Sequence[Filter], page_size: int, max_passes: int
    ) -> Generator[dict[str, Any], None, _ListingOutcome]:
        if not max_passes < page_size <= MAX_PAGE_SIZE:
            raise ValueError(f"page_size must be more than max_passes and at most {MAX_PAGE_SIZE}")
        seen: set[str] = set()
        params = filter_params(filters)
        for scan in range(max_passes):
            # A different page size per pass and per probe: the API caches identical GETs for 60 s.
            state = yield from self._scan(path, params, page_size - scan, seen)
            probe = self._total_count(path, params, probe_size=1 + scan)
            if probe is not None:
                state.totals.add(probe)
            if len(state.totals) <= 1 and len(state.ids) >= max(state.totals, default=0):
                return _ListingOutcome(settled=True, reported_total=probe)
            logger.info(
                "SurveyGizmo GET %s changed during the scan (totals %s); rescanning", path, sorted(state.totals)
            )
        logger.warning(
            "SurveyGizmo GET %s still changing after %d passes; the next run's overlap will catch up", path, max_passes
        )
        return _ListingOutcome(settled=False, reported_total=probe)

    def _scan(
        self, path: str, params: Mapping[str, str], page_size: int, seen: set[str]
    ) -> Generator[dict[str, Any], None, _ScanState]:
        state = _ScanState(totals=set(), ids=set())
        highest_total_pages: int | None = None
        page = 1
        while True:
            body = self._get(path, {**params, "page": str(page), "resultsperpage": str(page_size)})
            rows = _rows(body, path)
            total = _optional_int(body.get("total_count"))
            if total is not None:
                state.totals.add(total)
            reported_pages = _optional_int(body.get("total_pages"))
            if reported_pages is not None:
                highest_total_pages = max(highest_total_pages or 0, reported_pages)
            for row in rows:
                row_id = _row_id(row)
                if row_id is not None:
                    state.ids.add(row_id)
                    if row_id in seen:
                        continue
                    seen.add(row_id)
                yield row
            if _is_last_page(rows, page, page_size, highest_total_pages, total, len(state.ids)):
                return state
            page += 1

    def _total_count(self, path: str, params: Mapping[str, str], probe_size: int) -> int | None:
        body = self._get(path, {**params, "page": "1", "resultsperpage": str(probe_size)})
        return _optional_int(body.get("total_count"))

    def _submitted_within(self, record: Any, start: dt.datetime, end: dt.datetime) -> bool:
        text = record.get("date_submitted") if isinstance(record, Mapping) else None
        try:
            submitted = parse_timestamp(text, self.account_zone) if isinstance(text, str) else None
        except ValueError:
            submitted = None
        return submitted is None or start <= submitted < end

    def _get(self, path: str, params: Mapping[str, str]) -> dict[str, Any]:
        """One GET with retries; returns the decoded JSON body of a successful answer."""

        def attempt(previous: TransientFailure | None) -> dict[str, Any]:
            return self._attempt(path, params, after_timeout=previous is not None and previous.server_gave_up)

        def on_retry(failure: TransientFailure, attempt_number: int, delay: float) -> None:
            logger.warning(
                "SurveyGizmo GET %s: %s; retry %d/%d in %.1f s",
                path,
                failure.reason,
                attempt_number,
                self.retry.max_attempts - 1,
                delay,
            )
            with self._counter_lock:
                self._retry_wait += delay

        try:
            return call_with_retries(attempt, self.retry, self._clock, self._rng, on_retry)
        except TransientFailure as failure:
            raise SurveyGizmoUnavailable(
                f"GET {path} on {self._host} failed after {self.retry.max_attempts} attempts: {failure.reason}", path
            ) from None

    def _attempt(self, path: str, params: Mapping[str, str], after_timeout: bool) -> dict[str, Any]:
        self._limiter.acquire()
        with self._counter_lock:
            self._calls_made += 1
        try:
            with self._in_flight:
                response = self._session.get(
                    self.base_url + path, params={**params, **self._credentials}, timeout=self.timeout
                )
        except requests.Timeout:
            raise TransientFailure("timed out", server_gave_up=True) from None
        except requests.RequestException as error:
            # str(error) can contain the full URL with the credentials: keep only its class name.
            raise TransientFailure(f"connection failed ({type(error).__name__})") from None
        if response.headers.get(SG_WARNING_HEADER):
            logger.warning(
                "SurveyGizmo GET %s: near the rate limit (%s)", path, self._redact(response.headers[SG_WARNING_HEADER])
            )
        return self._check(response, path, after_timeout)

    def _check(self, response: requests.Response, path: str, after_timeout: bool) -> dict[str, Any]:
        status = response.status_code
        body = _json_body(response)
        message = self._redact(str(body.get("message", ""))) if body else ""
        code = _optional_int(body.get("code")) if body else None
        retry_after = _retry_after(response)
        if status == 429 or code == 429 or PLEASE_WAIT in message.lower():
            raise TransientFailure(
                f"throttled (HTTP {status}) {message}".strip(), throttled=True, retry_after=retry_after
            )
        if status >= 500 or (code is not None and code >= 500):
            detail = message if body else f"({_content_type(response)} page)"
            raise TransientFailure(
                f"HTTP {status if status >= 500 else code} {detail}".strip(),
                retry_after=retry_after,
                server_gave_up=status == 500,
            )
        if status == 400 and after_timeout:
            raise TransientFailure("HTTP 400 in the minute after a timeout", throttled=True)
        if status in (401, 403) or code in (401, 403):
            raise SurveyGizmoAuthError(
                f"GET {path}: credentials rejected by {self._host} ({message or f'HTTP {status}'}); "
                f"check the key pair and that the account is in region {self.region}",
                path,
                status,
                code,
            )
        if status == 404 or code == 404:
            raise SurveyGizmoNotFound(f"GET {path}: not found ({message or 'HTTP 404'})", path, status, code)
        if body is None:
            raise TransientFailure(f"HTTP {status} answer is not JSON ({_content_type(response)})")
        if status >= 400 or body.get("result_ok") is not True:
            raise SurveyGizmoError(
                f"GET {path}: HTTP {status}, result_ok false: {message or 'no message'}", path, status, code
            )
        return body

    @property
    def _host(self) -> str:
        return urlsplit(self.base_url).netloc

    def _redact(self, text: str) -> str:
        for secret in self._credentials.values():
            text = text.replace(secret, "***")
        return text


def _segment(identifier: str | int) -> str:
    text = str(identifier).strip()
    if not ID_PATTERN.match(text):
        raise ValueError(f"not a SurveyGizmo id: {identifier!r}")
    return quote(text, safe="")


def _json_body(response: requests.Response) -> dict[str, Any] | None:
    """The decoded JSON object, or None for HTML pages, truncated or empty bodies."""
    try:
        body = json.loads(response.content.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    return body if isinstance(body, dict) else None


def _content_type(response: requests.Response) -> str:
    return response.headers.get("Content-Type", "no content type").split(";")[0]


def _retry_after(response: requests.Response) -> float | None:
    try:
        return max(0.0, float(response.headers["Retry-After"]))
    except (KeyError, ValueError):
        return None


def _unwrap(body: Mapping[str, Any]) -> dict[str, Any]:
    """`data` of a single-object answer, or the answer itself minus `result_ok` when unwrapped."""
    data = body.get("data")
    if isinstance(data, dict):
        return data
    return {key: value for key, value in body.items() if key != "result_ok"}


def _rows(body: Mapping[str, Any], path: str) -> list[Any]:
    data = body.get("data", [])
    if isinstance(data, dict):  # PHP associative arrays arrive as id-keyed objects
        return list(data.values())
    if isinstance(data, list):
        return data
    raise SurveyGizmoError(f"GET {path}: `data` is a {type(data).__name__}, not a list", path)


def _row_id(row: Any) -> str | None:
    """The row's id for de-duplication; rows without one are passed on for quarantine."""
    row_id = row.get("id") if isinstance(row, Mapping) else None
    return None if row_id is None else str(row_id)


def _optional_int(value: Any) -> int | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return int(number) if math.isfinite(number) else None


def _is_last_page(
    rows: Sequence[Any], page: int, page_size: int, total_pages: int | None, total_count: int | None, unique_ids: int
) -> bool:
    """Stop on a short or empty page; on a full one only if the totals agree we have everything.

    A full page past the reported end means rows were added; two pages beyond it means the
    server ignores `page`, so stop rather than loop. Listings without totals end on a short page.
    """
    if len(rows) < page_size:
        return True
    if total_pages is None:
        return False
    if page > total_pages + 1:
        logger.warning("SurveyGizmo listing returned full pages past total_pages=%d; stopping", total_pages)
        return True
    return page >= total_pages and total_count is not None and unique_ids >= total_count
