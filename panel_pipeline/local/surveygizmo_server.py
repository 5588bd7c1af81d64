"""A local SurveyGizmo (Alchemer) REST v5 server for tests, benchmarks and the local run.

It answers the GETs the Extractor makes with the real envelopes and record shapes (research note
§6–8): `/v5/account`, `/v5/survey/{id}`, `/v5/survey/{id}/surveyresponse[/{rid}]`, with or without
a trailing slash or `.json`. It checks `api_token`/`api_token_secret`, implements the filter
engine (`date_submitted`, `status`, `is_test_data`, `contact_id`; `= <> != > < >= <= IS NULL IS NOT
NULL in`; dates read in the account's zone), 1-based paging with `resultsperpage` clamped to 1..500,
and totals as integers or (toggle) strings. Responses live in an in-memory store tests can add to,
edit and delete from while a scan is running (`after_requests` runs a mutation between two
requests). Faults are injected at runtime: `inject(throttled(3))`, `inject(cdn_error())`,
`outage = Outage(days=...)`, `inject(slow(2.0))`, `inject(please_wait())`,
`inject(result_not_ok(...))`, `inject(truncated())`, `inject(dropped_rows(2))`, and at random:
`random_faults = RandomFaults(rate=0.05)` (429s and 5xx on that share of requests). The request
log keeps paths and parameters without the credentials, and the HTTP log line never includes the
query string.

Run it with demo data: `python -m panel_pipeline.local.surveygizmo_server --port 8089 --demo`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import math
import random
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit
from zoneinfo import ZoneInfo

from panel_pipeline.extractor.responses import parse_timestamp
from panel_pipeline.local.demo import demo_user_id
from panel_pipeline.local.profile_survey import (
    PROFILE_SURVEY,
    PROFILE_SURVEY_ID,
    response_record,
)

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

UTC = dt.timezone.utc
CREDENTIAL_PARAMS = ("api_token", "api_token_secret")
MAX_PAGE_SIZE = 500
DEFAULT_PAGE_SIZE = 50
FILTER_KEY = re.compile(r"^filter\[(field|operator|value)\]\[(\d+)\]$")
ROUTE = re.compile(r"^/v5/(?P<object>account|survey)(?:/(?P<sid>[^/]+)(?:/(?P<sub>surveyresponse)(?:/(?P<rid>[^/]+))?)?)?$")
FILTER_FIELDS = frozenset({"date_submitted", "status", "is_test_data", "contact_id"})
FILTER_OPERATORS = frozenset({"=", "<>", "!=", ">", "<", ">=", "<=", "IS NULL", "IS NOT NULL", "in"})
AUTH_FAILED = "Login failed / Invalid auth token"
RATE_LIMITED = "You have exceeded your requests per minute, see /help/api-request-limits for more details"
PLEASE_WAIT = "Please wait for other requests to complete."
CDN_PAGE = "<!DOCTYPE html><html><head><title>{status} | alchemer.com</title></head><body><h1>Error {status}</h1><p>Origin is unreachable.</p></body></html>"

# Credentials of the local server and the local run; not secrets.
DEMO_TOKEN = "demo-token"
DEMO_TOKEN_SECRET = "demo-secret"


@dataclass
class Fault:
    """An answer given instead of (or, for `delay`/`truncate`, on top of) the normal one."""

    status: int | None = None
    body: Any = None
    content_type: str = "application/json"
    delay: float = 0.0
    truncate: bool = False
    times: int = 1
    path_contains: str = ""
    retry_after: str | None = None
    drop_rows: int = 0


def throttled(times: int = 1, retry_after: str | None = None) -> Fault:
    return Fault(429, {"result_ok": False, "code": 429, "message": RATE_LIMITED}, times=times, retry_after=retry_after)


def please_wait(times: int = 1, status: int = 400) -> Fault:
    return Fault(status, {"result_ok": False, "code": status, "message": PLEASE_WAIT}, times=times)


def server_error(status: int = 500, times: int = 1) -> Fault:
    return Fault(status, {"result_ok": False, "code": status, "message": "Internal server error"}, times=times)


def cdn_error(status: int = 522, times: int = 1) -> Fault:
    return Fault(status, CDN_PAGE.format(status=status), "text/html", times=times)


def maintenance_page(times: int = 1) -> Fault:
    return Fault(200, "<html><body>Down for scheduled maintenance</body></html>", "text/html", times=times)


def result_not_ok(code: int | None = 500, message: str = "Unexpected error", http_status: int = 200, times: int = 1) -> Fault:
    body: dict[str, Any] = {"result_ok": False, "message": message}
    if code is not None:
        body["code"] = code
    return Fault(http_status, body, times=times)


def slow(seconds: float, times: int = 1) -> Fault:
    return Fault(delay=seconds, times=times)


def truncated(times: int = 1) -> Fault:
    return Fault(truncate=True, times=times)


def dropped_rows(rows: int = 1, times: int = 1) -> Fault:
    """A list page missing its last `rows` rows while its totals still count them: a lossy answer."""
    return Fault(drop_rows=rows, times=times, path_contains="surveyresponse")


class RandomFaults:
    """Each request fails with probability `rate`: a 429 throttle or a 5xx server error, drawn from
    `statuses` by a seeded generator, so a run's faults are reproducible."""

    def __init__(self, rate: float, statuses: tuple[int, ...] = (429, 500, 502, 503), seed: int = 0) -> None:
        self.rate = rate
        self.statuses = statuses
        self.answered = 0
        self._rng = random.Random(seed)

    def draw(self) -> Fault | None:
        if self._rng.random() >= self.rate:
            return None
        self.answered += 1
        status = self._rng.choice(self.statuses)
        return throttled() if status == 429 else server_error(status)


@dataclass
class Outage:
    """List calls fail with `status` while the server clock is in [start, end), or when their
    `date_submitted` window touches one of `days` (account-zone days), e.g. to fail one backfill day."""

    days: frozenset[dt.date] = frozenset()
    start: dt.datetime | None = None
    end: dt.datetime | None = None
    status: int = 503


@dataclass(frozen=True)
class LoggedRequest:
    method: str
    path: str
    params: Mapping[str, str]
    query: str
    at: dt.datetime


@dataclass
class _Answer:
    status: int
    body: Any
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


class _BadRequest(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass
class _StoredResponse:
    record: dict[str, Any]
    submitted_at: dt.datetime | None
    deleted: bool = False


def _now() -> dt.datetime:
    return dt.datetime.now(UTC)


class LocalSurveyGizmo:
    """The server and its in-memory account. Use as a context manager or start()/stop()."""

    def __init__(
        self,
        api_token: str = DEMO_TOKEN,
        api_token_secret: str = DEMO_TOKEN_SECRET,
        *,
        time_zone: str = "America/New_York",
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Callable[[], dt.datetime] = _now,
    ) -> None:
        self._credentials = (api_token, api_token_secret)
        self.zone = ZoneInfo(time_zone)
        self.clock = clock
        self._address = (host, port)
        self._lock = threading.RLock()
        self._surveys: dict[str, dict[str, Any]] = {}
        self._responses: dict[str, dict[str, _StoredResponse]] = {}
        # Listings are computed once per state of the store (`_version` moves on every change), not once per page.
        self._version = 0
        self._listings: dict[tuple[str, tuple[tuple[str, str, Any], ...]], tuple[int, list[dict[str, Any]]]] = {}
        self._faults: list[Fault] = []
        self._hooks: list[tuple[int, Callable[[], None]]] = []
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.requests: list[LoggedRequest] = []
        self.outage: Outage | None = None
        self.random_faults: RandomFaults | None = None
        self.string_totals = False
        self.data_as_object = False
        self.unwrapped_single = False
        self.php_escapes = False
        self.auth_failure_status = 401

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> str:
        self._httpd = _HTTPServer(self._address, _Handler, self)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="surveygizmo-server", daemon=True
        )
        self._thread.start()
        return self.base_url

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> LocalSurveyGizmo:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("the server is not running")
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    # -- store -------------------------------------------------------------------------------

    def add_survey(self, definition: Mapping[str, Any]) -> None:
        with self._lock:
            self._surveys[str(definition["id"])] = dict(definition)
            self._responses.setdefault(str(definition["id"]), {})
            self._version += 1

    def add_response(self, survey_id: str | int, record: Mapping[str, Any], submitted_at: dt.datetime | None = None) -> None:
        """Store (or replace) a record as given, malformed or not. `submitted_at` overrides the
        instant the date filter uses; by default it is parsed from the record's `date_submitted`."""
        with self._lock:
            self._responses.setdefault(str(survey_id), {})[str(record["id"])] = _StoredResponse(
                dict(record), submitted_at or self._parse_submitted(record)
            )
            self._version += 1

    def edit_response(self, survey_id: str | int, response_id: str | int, **changes: Any) -> None:
        with self._lock:
            stored = self._responses[str(survey_id)][str(response_id)]
            stored.record.update(changes)
            stored.record["date_updated"] = self.clock().strftime("%Y-%m-%d %H:%M:%S")
            stored.submitted_at = self._parse_submitted(stored.record)
            self._version += 1

    def delete_response(self, survey_id: str | int, response_id: str | int) -> None:
        """Soft-delete, as SurveyGizmo does: gone from lists, 404 on a single GET."""
        with self._lock:
            self._responses[str(survey_id)][str(response_id)].deleted = True
            self._version += 1

    def restore_response(self, survey_id: str | int, response_id: str | int) -> None:
        """Undo a deletion: the response is listed and served again."""
        with self._lock:
            self._responses[str(survey_id)][str(response_id)].deleted = False
            self._version += 1

    def response_ids(self, survey_id: str | int) -> list[str]:
        with self._lock:
            return [rid for rid, stored in self._sorted(str(survey_id)) if not stored.deleted]

    def _parse_submitted(self, record: Mapping[str, Any]) -> dt.datetime | None:
        try:
            return parse_timestamp(str(record["date_submitted"]), self.zone)
        except (KeyError, ValueError):
            return None

    def _sorted(self, survey_id: str) -> list[tuple[str, _StoredResponse]]:
        return sorted(self._responses.get(survey_id, {}).items(), key=lambda item: _id_sort_key(item[0]))

    def _matching(self, survey_id: str, conditions: list[tuple[str, str, Any]]) -> list[dict[str, Any]]:
        key = (survey_id, tuple(conditions))
        cached = self._listings.get(key)
        if cached is None or cached[0] != self._version:
            records = [
                stored.record for _rid, stored in self._sorted(survey_id)
                if not stored.deleted and all(self._matches(stored, condition) for condition in conditions)
            ]
            cached = self._listings[key] = (self._version, records)
        return cached[1]

    # -- faults and hooks --------------------------------------------------------------------

    def inject(self, fault: Fault) -> None:
        with self._lock:
            self._faults.append(fault)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()
            self.outage = None
            self.random_faults = None

    def after_requests(self, count: int, action: Callable[[], None]) -> None:
        """Run `action` once, after `count` requests have been answered and before the next one."""
        with self._lock:
            self._hooks.append((count, action))

    def _run_due_hooks(self) -> None:
        due = [hook for hook in self._hooks if hook[0] <= len(self.requests)]
        self._hooks = [hook for hook in self._hooks if hook not in due]
        for _count, action in due:
            action()

    def _take_fault(self, path: str) -> Fault | None:
        for fault in self._faults:
            if fault.path_contains in path:
                fault.times -= 1
                if fault.times <= 0:
                    self._faults.remove(fault)
                return fault
        return self.random_faults.draw() if self.random_faults is not None else None

    # -- request handling --------------------------------------------------------------------

    def handle(self, method: str, target: str) -> tuple[_Answer, Fault | None]:
        url = urlsplit(target)
        params = {key: values[-1] for key, values in parse_qs(url.query, keep_blank_values=True).items()}
        with self._lock:
            self._run_due_hooks()
            self.requests.append(LoggedRequest(method, url.path, _without_credentials(params), _redacted_query(url.query), self.clock()))
            fault = self._take_fault(url.path)
        if fault is not None and fault.status is not None:
            return _fault_answer(fault), None
        try:
            return _without_last_rows(self._route(method, _route_path(url.path), params), fault), fault
        except _BadRequest as error:
            return _error(error.status, error.message), fault

    def _route(self, method: str, path: str, params: Mapping[str, str]) -> _Answer:
        if method != "GET" or params.get("_method", "GET").upper() != "GET":
            raise _BadRequest("Only GET is supported here", 405)
        match = ROUTE.match(path)
        if match is None:
            raise _BadRequest(f"Unknown resource {path}", 404)
        with self._lock:
            if self.outage is not None and match["sub"] and match["rid"] is None and self._in_outage(params):
                return _Answer(self.outage.status, CDN_PAGE.format(status=self.outage.status), "text/html")
            if tuple(params.get(name) for name in CREDENTIAL_PARAMS) != self._credentials:
                return _Answer(self.auth_failure_status, {"result_ok": False, "code": 401, "message": AUTH_FAILED})
            return self._dispatch(match, params)

    def _dispatch(self, match: re.Match[str], params: Mapping[str, str]) -> _Answer:
        if match["object"] == "account":
            return _ok({"id": "433737", "organization": "Local panel", "time_zone": self.zone.key})
        survey_id = match["sid"]
        if survey_id is None or survey_id not in self._surveys:
            raise _BadRequest(f"Survey {survey_id} not found", 404)
        if match["sub"] is None:
            return _ok({**self._surveys[survey_id], "statistics": self._statistics(survey_id)})
        if match["rid"] is not None:
            return self._single_response(survey_id, match["rid"])
        return self._list_responses(survey_id, params)

    def _single_response(self, survey_id: str, response_id: str) -> _Answer:
        stored = self._responses[survey_id].get(response_id)
        if stored is None or stored.deleted:
            raise _BadRequest(f"Response {response_id} not found", 404)
        if self.unwrapped_single:
            return _Answer(200, {"result_ok": True, **stored.record})
        return _ok(stored.record)

    def _list_responses(self, survey_id: str, params: Mapping[str, str]) -> _Answer:
        page = _positive_int(params.get("page", "1"), "page")
        page_size = min(MAX_PAGE_SIZE, _positive_int(params.get("resultsperpage", str(DEFAULT_PAGE_SIZE)), "resultsperpage"))
        conditions = [self._resolved(condition) for condition in _parse_filters(params, strict=True)]
        matching = self._matching(survey_id, conditions)
        rows = matching[(page - 1) * page_size : page * page_size]
        total, per_page = len(matching), page_size
        return _Answer(200, {
            "result_ok": True,
            "total_count": str(total) if self.string_totals else total,
            "page": page,
            "total_pages": math.ceil(total / page_size),
            "results_per_page": str(per_page) if self.string_totals else per_page,
            "data": {str(row["id"]): row for row in rows} if self.data_as_object else rows,
        })

    def _statistics(self, survey_id: str) -> dict[str, int] | None:
        counts: dict[str, int] = {}
        for stored in self._responses[survey_id].values():
            if not stored.deleted:
                status = str(stored.record.get("status"))
                counts[status] = counts.get(status, 0) + 1
        return counts or None

    def _resolved(self, condition: tuple[str, str, str | None]) -> tuple[str, str, Any]:
        """A condition with its date value read in the account's zone once, not once per record."""
        field_name, operator, value = condition
        if field_name == "date_submitted" and value is not None:
            return field_name, operator, self._filter_instant(value)
        return condition

    def _matches(self, stored: _StoredResponse, condition: tuple[str, str, Any]) -> bool:
        field_name, operator, expected = condition
        if field_name == "date_submitted":
            return _compare(stored.submitted_at, operator, expected)
        return _compare(_field_text(stored.record.get(field_name), field_name), operator, expected)

    def _filter_instant(self, value: str) -> dt.datetime:
        try:
            local = dt.datetime.fromisoformat(value.strip())
        except ValueError:
            raise _BadRequest(f"Invalid date filter value {value!r}") from None
        return local.replace(tzinfo=self.zone).astimezone(UTC)

    def _in_outage(self, params: Mapping[str, str]) -> bool:
        assert self.outage is not None
        now = self.clock()
        if self.outage.start is not None and self.outage.end is not None and self.outage.start <= now < self.outage.end:
            return True
        low, high = self._date_window(params)
        for day in self.outage.days:
            day_start = dt.datetime.combine(day, dt.time(), self.zone).astimezone(UTC)
            day_end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), self.zone).astimezone(UTC)
            if (low is None or low < day_end) and (high is None or high > day_start):
                return True
        return False

    def _date_window(self, params: Mapping[str, str]) -> tuple[dt.datetime | None, dt.datetime | None]:
        low = high = None
        for field_name, operator, value in _parse_filters(params, strict=False):
            if field_name != "date_submitted" or value is None:
                continue
            if operator in (">", ">="):
                low = max(filter(None, (low, self._filter_instant(value))))
            elif operator in ("<", "<="):
                high = min(filter(None, (high, self._filter_instant(value))))
        return low, high


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], app: LocalSurveyGizmo) -> None:
        super().__init__(address, handler)
        self.app = app

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that timed out and hung up is part of the tests, not an error worth a traceback.
        logger.debug("SurveyGizmo local server: client %s went away", client_address)


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer

    def do_GET(self) -> None:
        self._answer("GET")

    def do_POST(self) -> None:
        self._answer("POST")

    def do_PUT(self) -> None:
        self._answer("PUT")

    def do_DELETE(self) -> None:
        self._answer("DELETE")

    def _answer(self, method: str) -> None:
        answer, fault = self.server.app.handle(method, self.path)
        if fault is not None and fault.delay:
            time.sleep(fault.delay)
        payload = _encode(answer, self.server.app.php_escapes)
        if fault is not None and fault.truncate:
            payload = payload[: len(payload) // 2]
        self.send_response(answer.status)
        self.send_header("Content-Type", f"{answer.content_type}; charset=utf-8")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in answer.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        # The default writes the request line, query string (credentials) included, to stderr.
        logger.debug("SurveyGizmo local server: %s %s", self.command, urlsplit(self.path).path)


def _encode(answer: _Answer, php_escapes: bool) -> bytes:
    if isinstance(answer.body, str):
        return answer.body.encode("utf-8")
    text = json.dumps(answer.body, ensure_ascii=php_escapes)
    return (text.replace("/", "\\/") if php_escapes else text).encode("utf-8")


def _ok(data: Any) -> _Answer:
    return _Answer(200, {"result_ok": True, "data": data})


def _error(status: int, message: str) -> _Answer:
    return _Answer(status, {"result_ok": False, "code": status, "message": message})


def _without_last_rows(answer: _Answer, fault: Fault | None) -> _Answer:
    if fault is None or not fault.drop_rows or not isinstance(answer.body, dict) or not isinstance(answer.body.get("data"), list):
        return answer
    return _Answer(answer.status, {**answer.body, "data": answer.body["data"][: -fault.drop_rows]}, answer.content_type, answer.headers)


def _fault_answer(fault: Fault) -> _Answer:
    headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
    return _Answer(fault.status or 500, fault.body, fault.content_type, headers)


def _route_path(path: str) -> str:
    path = path.rstrip("/")
    return path[: -len(".json")] if path.endswith(".json") else path


def _without_credentials(params: Mapping[str, str]) -> dict[str, str]:
    return {key: value for key, value in params.items() if key not in CREDENTIAL_PARAMS}


def _redacted_query(query: str) -> str:
    return "&".join(pair for pair in query.split("&") if pair.split("=", 1)[0] not in CREDENTIAL_PARAMS)


def _id_sort_key(response_id: str) -> tuple[int, int, str]:
    return (0, int(response_id), "") if response_id.isdigit() else (1, 0, response_id)


def _positive_int(value: str, name: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise _BadRequest(f"{name} must be an integer") from None
    return max(1, number)


def _parse_filters(params: Mapping[str, str], strict: bool) -> list[tuple[str, str, str | None]]:
    parts: dict[int, dict[str, str]] = {}
    for key, value in params.items():
        match = FILTER_KEY.match(key)
        if match:
            parts.setdefault(int(match[2]), {})[match[1]] = value
    if sorted(parts) != list(range(len(parts))):
        raise _BadRequest("filter indexes must run 0, 1, 2, ...")
    conditions = []
    for index in sorted(parts):
        triple = parts[index]
        field_name, operator = triple.get("field", ""), triple.get("operator", "")
        if strict and field_name not in FILTER_FIELDS:
            raise _BadRequest(f"Unsupported filter field {field_name!r}")
        if operator not in FILTER_OPERATORS:
            raise _BadRequest(f"Unsupported filter operator {operator!r}")
        if operator not in ("IS NULL", "IS NOT NULL") and "value" not in triple:
            raise _BadRequest(f"filter {index} needs a value")
        conditions.append((field_name, operator, triple.get("value")))
    return conditions


def _field_text(value: Any, field_name: str) -> str | None:
    if value is None or value == "":
        return None
    if field_name == "is_test_data":
        return "1" if str(value).strip().lower() in ("1", "true") else "0"
    return str(value)


def _order(actual: Any, expected: Any) -> tuple[Any, Any]:
    if isinstance(actual, str) and isinstance(expected, str):
        if actual.isdigit() and expected.isdigit():
            return int(actual), int(expected)
        return actual.casefold(), expected.casefold()
    return actual, expected


def _compare(actual: Any, operator: str, expected: Any) -> bool:
    if operator == "IS NULL":
        return actual is None
    if operator == "IS NOT NULL":
        return actual is not None
    if actual is None:
        return False
    if operator == "in":
        return any(_compare(actual, "=", item.strip()) for item in str(expected).split(","))
    left, right = _order(actual, expected)
    return _COMPARISONS[operator](left, right)


_COMPARISONS: dict[str, Callable[[Any, Any], bool]] = {
    "=": lambda a, b: a == b,
    "<>": lambda a, b: a != b,
    "!=": lambda a, b: a != b,
    ">": lambda a, b: a > b,
    "<": lambda a, b: a < b,
    ">=": lambda a, b: a >= b,
    "<=": lambda a, b: a <= b,
}


def load_demo_data(
    server: LocalSurveyGizmo, profiles: pd.DataFrame, start: dt.datetime, end: dt.datetime, first_id: int = 1001
) -> None:
    """The profile survey plus one Complete response per profile row, spread evenly over [start, end)."""
    server.add_survey(PROFILE_SURVEY)
    step = (end - start) / max(1, len(profiles))
    for index, row in enumerate(_profile_dicts(profiles)):
        record = response_record(
            row, response_id=first_id + index, submitted_at=start + step * index,
            account_zone=server.zone, panel_id=str(demo_user_id(index + 1)),
        )
        server.add_response(PROFILE_SURVEY_ID, record)


def _profile_dicts(profiles: pd.DataFrame) -> Iterable[dict[str, Any]]:
    for row in profiles.astype(object).to_dict(orient="records"):
        yield {key: (int(value) if key == "birth_year" else str(value)) for key, value in row.items() if value is not None}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8089)
    parser.add_argument("--token", default=DEMO_TOKEN)
    parser.add_argument("--secret", default=DEMO_TOKEN_SECRET)
    parser.add_argument("--time-zone", default="America/New_York")
    parser.add_argument("--demo", action="store_true", help="load the profile survey and synthetic responses")
    parser.add_argument("--members", type=int, default=1000)
    parser.add_argument("--days", type=int, default=14, help="spread demo responses over the last N days")
    parser.add_argument("--end", type=dt.datetime.fromisoformat, help="demo responses end at this UTC time (default now)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fault-rate", type=float, default=0.0, help="share of requests answered 429/500/502/503 at random")
    args = parser.parse_args(argv)
    server = LocalSurveyGizmo(args.token, args.secret, time_zone=args.time_zone, host=args.host, port=args.port)
    if args.demo:
        from panel_pipeline.local.synthetic_panel import generate_profiles

        end = (args.end or _now()).replace(microsecond=0, tzinfo=UTC)
        load_demo_data(server, generate_profiles(args.members, seed=args.seed), end - dt.timedelta(days=args.days), end)
    if args.fault_rate:
        server.random_faults = RandomFaults(args.fault_rate, seed=args.seed)
    server.start()
    print(f"SurveyGizmo v5 local API at {server.base_url}/v5 (api_token={args.token}, demo survey {PROFILE_SURVEY_ID})", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
