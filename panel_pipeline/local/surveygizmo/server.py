"""A local SurveyGizmo (Alchemer) REST v5 server for tests, benchmarks and the local run.

It answers the GETs the Extractor makes with the real envelopes and record shapes (research note
§6–8): `/v5/account`, `/v5/survey/{id}`, `/v5/survey/{id}/surveyresponse[/{rid}]`, with or without
a trailing slash or `.json`; and two creates (PUT, or `_method=PUT`, as v5 spells create): a response
(`PUT /v5/survey/{id}/surveyresponse` with `status` and `data[<question id or shortname>][value]`,
answered with the new record), which the local respondent simulator uses as a respondent's browser
would, and a survey (`PUT /v5/survey` with `title`; locally also `id`, so the local run can make the
survey a sample names, with a stand-in questionnaire). It checks `api_token`/`api_token_secret`,
filters as the real API does (filters.py), pages 1-based with `resultsperpage` clamped to 1..500,
and gives totals as integers or (toggle) strings. Responses live in an in-memory store (store.py)
tests can add to, edit and delete from while a scan is running (`after_requests` runs a mutation
between two requests), and faults are injected at runtime (faults.py). The request log keeps paths
and parameters without the credentials, and the HTTP log line never includes the query string.

Run it with demo data: `python -m panel_pipeline.local.surveygizmo --port 8089 --demo`.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self, cast
from urllib.parse import parse_qs, urlsplit
from zoneinfo import ZoneInfo

from panel_pipeline.local.surveygizmo.faults import CDN_PAGE, Fault, Outage, RandomFaults
from panel_pipeline.local.surveygizmo.filters import FilterError, date_window, parse_filters, resolved
from panel_pipeline.local.surveygizmo.store import ResponseStore
from panel_pipeline.shared.clock import SYSTEM_CLOCK, Clock

logger = logging.getLogger(__name__)

UTC = dt.UTC
CREDENTIAL_PARAMS = ("api_token", "api_token_secret")
MAX_PAGE_SIZE = 500
DEFAULT_PAGE_SIZE = 50
ROUTE = re.compile(
    r"^/v5/(?P<object>account|survey)(?:/(?P<sid>[^/]+)(?:/(?P<sub>surveyresponse)(?:/(?P<rid>[^/]+))?)?)?$"
)
AUTH_FAILED = "Login failed / Invalid auth token"
# A create's answers: `data[<question id or shortname>][value]=<answer text>`.
DATA_VALUE = re.compile(r"^data\[([^\]]+)\]\[value\]$")
RESPONSE_STATUSES = ("Complete", "Partial", "Disqualified")

# Credentials of the local server and the local run; not secrets.
DEMO_TOKEN = "demo-token"
DEMO_TOKEN_SECRET = "demo-secret"


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


class LocalSurveyGizmo(ResponseStore):
    """The server and its in-memory account. Use as a context manager or start()/stop()."""

    def __init__(
        self,
        api_token: str = DEMO_TOKEN,
        api_token_secret: str = DEMO_TOKEN_SECRET,
        *,
        time_zone: str = "America/New_York",
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        super().__init__(ZoneInfo(time_zone), clock)
        self._credentials = (api_token, api_token_secret)
        self._address = (host, port)
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

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("the server is not running")
        host, port = cast(tuple[str, int], self._httpd.server_address[:2])  # AF_INET: (host, port)
        return f"http://{host}:{port}"

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
            self.requests.append(
                LoggedRequest(
                    method, url.path, _without_credentials(params), _redacted_query(url.query), self.clock.now()
                )
            )
            fault = self._take_fault(url.path)
        if fault is not None and fault.status is not None:
            return _fault_answer(fault), None
        try:
            return _without_last_rows(self._route(method, _route_path(url.path), params), fault), fault
        except FilterError as error:
            return _error(400, str(error)), fault
        except _BadRequest as error:
            return _error(error.status, error.message), fault

    def _route(self, method: str, path: str, params: Mapping[str, str]) -> _Answer:
        verb = params.get("_method", method).upper()
        if verb not in ("GET", "PUT"):
            raise _BadRequest("Only GET, and PUT to create a survey or a response, are supported here", 405)
        match = ROUTE.match(path)
        if match is None:
            raise _BadRequest(f"Unknown resource {path}", 404)
        if verb == "PUT":
            return self._create(match, params)
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
        survey = self.survey(survey_id) if survey_id is not None else None
        if survey is None:
            raise _BadRequest(f"Survey {survey_id} not found", 404)
        if match["sub"] is None:
            return _ok({**survey, "statistics": self.statistics(survey_id)})
        if match["rid"] is not None:
            return self._single_response(survey_id, match["rid"])
        return self._list_responses(survey_id, params)

    def _create(self, match: re.Match[str], params: Mapping[str, str]) -> _Answer:
        if tuple(params.get(name) for name in CREDENTIAL_PARAMS) != self._credentials:
            return _Answer(self.auth_failure_status, {"result_ok": False, "code": 401, "message": AUTH_FAILED})
        survey_id = match["sid"]
        if match["object"] == "survey" and survey_id is None:
            title = params.get("title", "").strip()
            if not title:
                raise _BadRequest("title is required to create a survey")
            chosen = params.get("id")
            if chosen is not None and not chosen.isdigit():
                raise _BadRequest("id must be a positive integer")
            return _ok(self.create_survey(title, chosen))
        if match["sub"] != "surveyresponse" or match["rid"] is not None or survey_id is None:
            raise _BadRequest("Only surveys and survey responses can be created here", 405)
        if self.survey(survey_id) is None:
            raise _BadRequest(f"Survey {survey_id} not found", 404)
        status = params.get("status", "Complete")
        if status not in RESPONSE_STATUSES:
            raise _BadRequest(f"status must be one of {', '.join(RESPONSE_STATUSES)}")
        answers = {found[1]: value for key, value in params.items() if (found := DATA_VALUE.match(key))}
        if not answers:
            raise _BadRequest("At least one data parameter is required")
        try:
            return _ok(self.create_response(survey_id, answers, status))
        except KeyError as unknown:
            raise _BadRequest(str(unknown.args[0]), 404) from None

    def _single_response(self, survey_id: str, response_id: str) -> _Answer:
        record = self.response(survey_id, response_id)
        if record is None:
            raise _BadRequest(f"Response {response_id} not found", 404)
        if self.unwrapped_single:
            return _Answer(200, {"result_ok": True, **record})
        return _ok(record)

    def _list_responses(self, survey_id: str, params: Mapping[str, str]) -> _Answer:
        page = _positive_int(params.get("page", "1"), "page")
        page_size = min(
            MAX_PAGE_SIZE, _positive_int(params.get("resultsperpage", str(DEFAULT_PAGE_SIZE)), "resultsperpage")
        )
        conditions = [resolved(condition, self.zone) for condition in parse_filters(params, strict=True)]
        matching = self.listing(survey_id, conditions)
        rows = matching[(page - 1) * page_size : page * page_size]
        total, per_page = len(matching), page_size
        return _Answer(
            200,
            {
                "result_ok": True,
                "total_count": str(total) if self.string_totals else total,
                "page": page,
                "total_pages": math.ceil(total / page_size),
                "results_per_page": str(per_page) if self.string_totals else per_page,
                "data": {str(row["id"]): row for row in rows} if self.data_as_object else rows,
            },
        )

    def _in_outage(self, params: Mapping[str, str]) -> bool:
        assert self.outage is not None
        return self.outage.covers(self.clock.now(), date_window(params, self.zone), self.zone)


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
    if (
        fault is None
        or not fault.drop_rows
        or not isinstance(answer.body, dict)
        or not isinstance(answer.body.get("data"), list)
    ):
        return answer
    return _Answer(
        answer.status,
        {**answer.body, "data": answer.body["data"][: -fault.drop_rows]},
        answer.content_type,
        answer.headers,
    )


def _fault_answer(fault: Fault) -> _Answer:
    headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
    return _Answer(fault.status or 500, fault.body, fault.content_type, headers)


def _route_path(path: str) -> str:
    return path.rstrip("/").removesuffix(".json")


def _without_credentials(params: Mapping[str, str]) -> dict[str, str]:
    return {key: value for key, value in params.items() if key not in CREDENTIAL_PARAMS}


def _redacted_query(query: str) -> str:
    return "&".join(pair for pair in query.split("&") if pair.split("=", 1)[0] not in CREDENTIAL_PARAMS)


def _positive_int(value: str, name: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise _BadRequest(f"{name} must be an integer") from None
    return max(1, number)
