"""A fault-injecting HTTP proxy in front of aws-ses-v2-local, for what the emulator cannot do.

boto3 talks real SES v2 REST JSON to this proxy over HTTP; the proxy forwards to aws-ses-v2-local
(which renders and stores the mail) and adds, on SendBulkEmail (`POST /v2/email/outbound-bulk-emails`):
* queued faults for the next calls: a throttling answer (HTTP 429 `TooManyRequestsException`),
  a daily-quota answer (`LimitExceededException`), per-entry statuses such as
  `ACCOUNT_THROTTLED` / `ACCOUNT_DAILY_QUOTA_EXCEEDED` (those entries are not forwarded), and a
  lost answer: the call is forwarded and accepted, then the connection is closed unanswered;
* SES's 50-entry limit (the emulator accepts any number);
* standing refusals (`refuse_address`): a call with an entry to such an address is refused whole
  with HTTP 400 `BadRequestException`, nothing sent, as SES refuses an illegal address;
* a record of every SendBulkEmail request as received, tags included (the emulator drops tags),
  and the SES events each produced (ses_events.py: `Send` for each accepted entry, with its
  tags, then its `Delivery`, or a `Bounce`, a `Complaint` for SES's mailbox simulator addresses, and
  the bounces, complaints, opens and clicks of `feedback`'s shares);
* optionally, those events published as they happen (`publish`, e.g. `SnsEventPublisher` to the
  SNS topic of the local SES event path), as a configuration set's SNS event destination does.
The account-level suppression list is answered here, in memory (the emulator has none), as SES v2
does (`SuppressionList`): PutSuppressedDestination, ListSuppressedDestinations (StartDate, EndDate,
Reason, PageSize up to 1,000, NextToken), GetSuppressedDestination, DeleteSuppressedDestination;
`suppress` puts an address there as SES does after a hard bounce or a complaint.
GetConfigurationSetEventDestinations is answered here (the emulator has no configuration sets):
every set publishes SEND, REJECT, BOUNCE, COMPLAINT, DELIVERY, RENDERING_FAILURE and DELIVERY_DELAY
to the SNS topic, as the local stack does, unless a test sets other destinations
(`set_event_destinations`). GetAccount is forwarded, with the `EnforcementStatus` (`PROBATION`,
`SHUTDOWN`; HEALTHY until then) and the `MaxSendRate` a test set (`set_account`), as SES's review or
a quota change would; `set_feedback` changes the shares of feedback from the next call on, and
`set_publishing(False)` stops publishing events.
Everything else (templates, the web UI at `/`) passes through unchanged.
"""

from __future__ import annotations

import base64
import binascii
import copy
import dataclasses
import datetime as dt
import http.client
import json
import re
import socket
import threading
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast
from urllib.parse import parse_qs, unquote, urlsplit

from panel_pipeline.local.ses_events import NO_FEEDBACK, FeedbackShares, RecordedCall, ses_events

ACCOUNT_PATH = "/v2/email/account"
BULK_PATH = "/v2/email/outbound-bulk-emails"
EVENT_DESTINATIONS_PATH = re.compile(r"^/v2/email/configuration-sets/([^/]+)/event-destinations$")
LOCAL_TOPIC_ARN = "arn:aws:sns:eu-west-2:000000000000:panel-ses-events"
LOCAL_EVENT_TYPES = ("SEND", "REJECT", "BOUNCE", "COMPLAINT", "DELIVERY", "RENDERING_FAILURE", "DELIVERY_DELAY")
SES_MAX_ENTRIES = 50
SUPPRESSION_PATH = "/v2/email/suppression/addresses"
SUPPRESSED_ADDRESS_PATH = re.compile(r"^/v2/email/suppression/addresses/([^/]+)$")
SUPPRESSION_REASONS = ("BOUNCE", "COMPLAINT")
SUPPRESSION_MAX_PAGE_SIZE = 1000
_HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}


@dataclass(frozen=True)
class Fault:
    """What to do with one SendBulkEmail call instead of a plain forward."""

    kind: str  # "pass", "error", "drop_response" or "entry_statuses"
    http_status: int = 0
    error_type: str = ""
    message: str = ""
    entry_statuses: dict[int, str] = field(default_factory=dict)


def no_fault() -> Fault:
    """Forward this call untouched: queue it before a fault meant for a later call."""
    return Fault("pass")


def throttling() -> Fault:
    return Fault("error", 429, "TooManyRequestsException", "Maximum sending rate exceeded.")


def daily_quota_exceeded() -> Fault:
    return Fault("error", 400, "LimitExceededException", "Daily message quota exceeded.")


def lost_answer() -> Fault:
    return Fault("drop_response")


def entry_statuses(statuses: dict[int, str]) -> Fault:
    """Answer these entries (by index in the call) with these BulkEmailStatus values; forward the rest."""
    return Fault("entry_statuses", entry_statuses=dict(statuses))


Answer = tuple[int, dict[str, str], bytes]


@dataclass(frozen=True)
class SuppressedDestination:
    email_address: str
    reason: str
    last_update_time: dt.datetime

    def summary(self) -> dict[str, Any]:
        return {
            "EmailAddress": self.email_address,
            "Reason": self.reason,
            "LastUpdateTime": self.last_update_time.timestamp(),  # rest-json timestamps are epoch seconds
        }


class SuppressionList:
    """SES v2's account-level suppression list, in memory: one entry per address (compared
    lower-cased), putting an address again replaces its reason and time. A list call returns the
    entries with StartDate <= LastUpdateTime < EndDate, oldest first, `PageSize` (default and at
    most 1,000) at a time; its NextToken names the last entry returned, so entries added meanwhile
    neither shift nor repeat a page."""

    def __init__(self, now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)) -> None:
        self._now = now
        self._entries: dict[str, SuppressedDestination] = {}
        self._lock = threading.Lock()

    def put(self, address: str, reason: str, at: dt.datetime | None = None) -> None:
        if reason not in SUPPRESSION_REASONS:
            raise ValueError(f"Reason must be one of {', '.join(SUPPRESSION_REASONS)}")
        with self._lock:
            self._entries[address.strip().lower()] = SuppressedDestination(address.strip(), reason, at or self._now())

    def get(self, address: str) -> SuppressedDestination | None:
        with self._lock:
            return self._entries.get(address.strip().lower())

    def delete(self, address: str) -> bool:
        with self._lock:
            return self._entries.pop(address.strip().lower(), None) is not None

    def entries(self) -> list[SuppressedDestination]:
        with self._lock:
            return sorted(self._entries.values(), key=_list_order)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def answer(self, method: str, raw_path: str, body: bytes) -> Answer:
        """The SES v2 answer to a suppression-list request (`raw_path` with its query string)."""
        path, _, query = raw_path.partition("?")
        address = SUPPRESSED_ADDRESS_PATH.match(path)
        try:
            if address is not None and method in ("GET", "DELETE"):
                return self._one(method, unquote(address.group(1)))
            if path == SUPPRESSION_PATH and method == "PUT":
                request = json.loads(body or b"{}")
                self.put(str(request.get("EmailAddress") or ""), str(request.get("Reason")))
                return _json(200, {})
            if path == SUPPRESSION_PATH and method == "GET":
                return _json(200, self._page(parse_qs(query)))
        except _InvalidToken:
            return _error(400, "InvalidNextTokenException", "The NextToken is invalid")
        except (ValueError, TypeError) as wrong:
            return _error(400, "BadRequestException", str(wrong))
        return _error(404, "NotFoundException", f"no suppression-list operation {method} {path}")

    def _one(self, method: str, address: str) -> Answer:
        entry = self.get(address)
        if entry is None:
            return _error(404, "NotFoundException", "Email address is not on the suppression list")
        if method == "DELETE":
            self.delete(address)
            return _json(200, {})
        return _json(200, {"SuppressedDestination": {**entry.summary(), "Attributes": {}}})

    def _page(self, query: dict[str, list[str]]) -> dict[str, Any]:
        reasons = set(query.get("Reason") or SUPPRESSION_REASONS)
        start, end = (_query_time(query, name) for name in ("StartDate", "EndDate"))
        size = int((query.get("PageSize") or [str(SUPPRESSION_MAX_PAGE_SIZE)])[0])
        if not 1 <= size <= SUPPRESSION_MAX_PAGE_SIZE:
            raise ValueError(f"PageSize must be from 1 to {SUPPRESSION_MAX_PAGE_SIZE}")
        after = _token_key(query["NextToken"][0]) if query.get("NextToken") else None
        matching = [
            entry
            for entry in self.entries()
            if entry.reason in reasons
            and (start is None or entry.last_update_time >= start)
            and (end is None or entry.last_update_time < end)
            and (after is None or _list_order(entry) > after)
        ]
        page: dict[str, Any] = {"SuppressedDestinationSummaries": [entry.summary() for entry in matching[:size]]}
        if len(matching) > size:
            page["NextToken"] = _next_token(matching[size - 1])
        return page


class _InvalidToken(Exception):
    pass


def _list_order(entry: SuppressedDestination) -> tuple[float, str]:
    return entry.last_update_time.timestamp(), entry.email_address.lower()


def _next_token(entry: SuppressedDestination) -> str:
    return base64.urlsafe_b64encode(json.dumps(_list_order(entry)).encode()).decode()


def _token_key(token: str) -> tuple[float, str]:
    try:
        at, address = json.loads(base64.urlsafe_b64decode(token.encode()))
        return float(at), str(address)
    except (binascii.Error, ValueError, TypeError) as wrong:
        raise _InvalidToken from wrong


def _query_time(query: dict[str, list[str]], name: str) -> dt.datetime | None:
    """A querystring timestamp as botocore writes it (ISO 8601, `Z`), or epoch seconds."""
    if not query.get(name):
        return None
    value = query[name][0]
    try:
        return dt.datetime.fromtimestamp(float(value), dt.UTC)
    except ValueError:
        parsed = dt.datetime.fromisoformat(value)
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


EventSink = Callable[[list[dict[str, Any]]], None]


class SesFaultProxy:
    """Start/stop a proxy on `host:port` (0 picks a free port) forwarding to `upstream_url`;
    `publish` receives the SES events of every call SES accepted, as it is answered; `feedback` says
    what share of the messages bounce, complain, are opened and clicked."""

    def __init__(
        self,
        upstream_url: str,
        host: str = "127.0.0.1",
        port: int = 0,
        publish: EventSink | None = None,
        feedback: FeedbackShares = NO_FEEDBACK,
    ) -> None:
        self.upstream = urlsplit(upstream_url)
        self._publish = publish
        self._feedback = feedback
        self._faults: deque[Fault] = deque()
        self._refused: dict[str, str] = {}
        self._requests: Counter[str] = Counter()
        self._event_destinations: dict[str, list[dict[str, Any]]] = {}
        self._calls: list[RecordedCall] = []
        self._account_overrides: dict[str, Any] = {}
        self._publishing = True
        self.suppression_list = SuppressionList()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer((host, port), self._handler_class())
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = cast(tuple[str, int], self._server.server_address[:2])  # AF_INET: (host, port)
        return f"http://{host}:{port}"

    def start(self) -> str:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._server.serve_forever, name="ses-fault-proxy", daemon=True)
                self._thread.start()
        return self.url

    def stop(self) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._server.shutdown()
            thread.join()
        self._server.server_close()

    def inject(self, *faults: Fault) -> None:
        """Apply these faults, in order, to the next SendBulkEmail calls."""
        with self._lock:
            self._faults.extend(faults)

    def refuse_address(self, address: str, message: str = "Illegal address") -> None:
        """From now on (until `reset`), refuse whole every SendBulkEmail call with an entry to `address`."""
        with self._lock:
            self._refused[address.strip().lower()] = message

    def set_event_destinations(self, configuration_set: str, destinations: list[dict[str, Any]]) -> None:
        """Answer GetConfigurationSetEventDestinations for this set with these (until `reset`)."""
        with self._lock:
            self._event_destinations[configuration_set] = copy.deepcopy(destinations)

    def set_account(self, enforcement_status: str | None = None, max_send_rate: float | None = None) -> None:
        """Answer GetAccount with this `EnforcementStatus` and `SendQuota.MaxSendRate` (None: as the
        emulator says) until `reset`."""
        with self._lock:
            self._account_overrides = {"EnforcementStatus": enforcement_status, "MaxSendRate": max_send_rate}

    def set_feedback(self, feedback: FeedbackShares) -> None:
        """The shares of the messages of the next calls that bounce, complain, are opened and clicked."""
        with self._lock:
            self._feedback = feedback

    def set_publishing(self, publishing: bool) -> None:
        """Publish the SES events of the next calls (True), or none, as a configuration set whose event
        destination is disabled (False)."""
        with self._lock:
            self._publishing = publishing

    def reset(self) -> None:
        with self._lock:
            self._account_overrides = {}
            self._publishing = True
            self._faults.clear()
            self._calls.clear()
            self._refused.clear()
            self._requests.clear()
            self._event_destinations.clear()
        self.suppression_list.clear()

    def suppress(self, address: str, reason: str = "BOUNCE", at: dt.datetime | None = None) -> None:
        """Put `address` on the account's suppression list as SES does after a hard bounce
        (`BOUNCE`) or a complaint (`COMPLAINT`), at `at` (default now); until `reset`."""
        self.suppression_list.put(address, reason, at)

    def requests(self) -> Counter[str]:
        """How many requests of each kind came in, e.g. `GET /v2/email/templates/panel-welcome-1a2b`."""
        with self._lock:
            return Counter(self._requests)

    def calls(self) -> list[RecordedCall]:
        with self._lock:
            return list(self._calls)

    def events(self) -> list[dict[str, Any]]:
        """Every SES event of the calls so far: each call's Send events, then its messages' outcomes."""
        return [event for call in self.calls() for event in ses_events(call)]

    def send_events(self) -> list[dict[str, Any]]:
        """SES `Send` events for every entry SES accepted, including calls whose answer was lost."""
        return [event for event in self.events() if event["eventType"] == "Send"]

    # --- request handling ---------------------------------------------------------------------

    def _next_fault(self) -> Fault | None:
        with self._lock:
            return self._faults.popleft() if self._faults else None

    def _record(self, call: RecordedCall) -> None:
        with self._lock:
            call = dataclasses.replace(call, feedback=self._feedback)
            self._calls.append(call)
            publishing = self._publishing
        if self._publish is not None and publishing and call.results:
            self._publish(ses_events(call))

    def _forward(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        connection = http.client.HTTPConnection(self.upstream.netloc, timeout=60)
        try:
            connection.request(method, path, body=body or None, headers=headers)
            response = connection.getresponse()
            answer_headers = {k: v for k, v in response.getheaders() if k.lower() not in _HOP_HEADERS}
            return response.status, answer_headers, response.read()
        finally:
            connection.close()

    def _account(self, headers: dict[str, str]) -> Answer:
        status, answer_headers, payload = self._forward("GET", ACCOUNT_PATH, headers, b"")
        with self._lock:
            enforcement, rate = (self._account_overrides.get(name) for name in ("EnforcementStatus", "MaxSendRate"))
        if status != 200 or (enforcement is None and rate is None):
            return status, answer_headers, payload
        account = json.loads(payload)
        if enforcement is not None:
            account["EnforcementStatus"] = enforcement
        if rate is not None:
            account["SendQuota"] = {**account.get("SendQuota", {}), "MaxSendRate": rate}
        return status, answer_headers, json.dumps(account).encode()

    def _bulk(self, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str], bytes] | None:
        """The answer to a SendBulkEmail call, or None to drop the connection unanswered."""
        request = json.loads(body or b"{}")
        entries = request.get("BulkEmailEntries", [])
        if len(entries) > SES_MAX_ENTRIES:
            return _error(400, "BadRequestException", f"at most {SES_MAX_ENTRIES} BulkEmailEntries per call")
        refusal = self._refusal(entries)
        if refusal is not None:
            self._record(RecordedCall(request, "BadRequestException", []))
            return _error(400, "BadRequestException", refusal)
        fault = self._next_fault()
        if fault is not None and fault.kind == "pass":
            fault = None
        if fault is not None and fault.kind == "error":
            self._record(RecordedCall(request, fault.error_type, []))
            return _error(fault.http_status, fault.error_type, fault.message)
        statuses = fault.entry_statuses if fault is not None else {}
        forwarded = [entry for index, entry in enumerate(entries) if index not in statuses]
        results: list[dict[str, Any]] = []
        answer: tuple[int, dict[str, str], bytes] = (200, {"Content-Type": "application/json"}, b"")
        if forwarded:
            upstream_request = {**request, "BulkEmailEntries": forwarded}
            answer = self._forward("POST", BULK_PATH, headers, json.dumps(upstream_request).encode())
            if answer[0] != 200:
                self._record(RecordedCall(request, None, []))
                return answer
            results = json.loads(answer[2])["BulkEmailEntryResults"]
        merged = _merge_statuses(len(entries), statuses, results)
        if fault is not None and fault.kind == "drop_response":
            self._record(RecordedCall(request, fault.kind, merged, answered=False))
            return None
        self._record(RecordedCall(request, fault.kind if fault else None, merged))
        return 200, {"Content-Type": "application/json"}, json.dumps({"BulkEmailEntryResults": merged}).encode()

    def _refusal(self, entries: list[dict[str, Any]]) -> str | None:
        with self._lock:
            refused = dict(self._refused)
        addresses = (str(a).strip().lower() for e in entries for a in e.get("Destination", {}).get("ToAddresses", []))
        return next((refused[a] for a in addresses if a in refused), None)

    def _event_destinations_answer(self, configuration_set: str) -> tuple[int, dict[str, str], bytes]:
        with self._lock:
            destinations = self._event_destinations.get(configuration_set)
        if destinations is None:
            topic_arn = getattr(self._publish, "topic_arn", None) or LOCAL_TOPIC_ARN
            destinations = [
                {
                    "Name": "panel-ses-events",
                    "Enabled": True,
                    "MatchingEventTypes": list(LOCAL_EVENT_TYPES),
                    "SnsDestination": {"TopicArn": topic_arn},
                }
            ]
        return 200, {"Content-Type": "application/json"}, json.dumps({"EventDestinations": destinations}).encode()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
                return  # request lines carry no secrets, but tests read stderr: keep it quiet

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_HEADERS}
                path = self.path.split("?")[0]
                # Counted by operation, never by address: a suppression-list path names one.
                kind = SUPPRESSED_ADDRESS_PATH.sub(SUPPRESSION_PATH + "/{EmailAddress}", path)
                with proxy._lock:
                    proxy._requests[f"{self.command} {kind}"] += 1
                destinations = EVENT_DESTINATIONS_PATH.match(path) if self.command == "GET" else None
                if self.command == "POST" and path == BULK_PATH:
                    answer = proxy._bulk(headers, body)
                elif path == SUPPRESSION_PATH or path.startswith(SUPPRESSION_PATH + "/"):
                    answer = proxy.suppression_list.answer(self.command, self.path, body)
                elif destinations is not None:
                    answer = proxy._event_destinations_answer(unquote(destinations.group(1)))
                elif self.command == "GET" and path == ACCOUNT_PATH:
                    answer = proxy._account(headers)
                else:
                    answer = proxy._forward(self.command, self.path, headers, body)
                if answer is None:
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                status, answer_headers, payload = answer
                self.send_response(status)
                for name, value in answer_headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_DELETE = _serve

        return Handler


def _error(status: int, error_type: str, message: str) -> Answer:
    headers = {"Content-Type": "application/json", "x-amzn-ErrorType": error_type}
    return status, headers, json.dumps({"message": message}).encode()


def _json(status: int, document: Mapping[str, Any]) -> Answer:
    return status, {"Content-Type": "application/json"}, json.dumps(document).encode()


def _merge_statuses(
    count: int, injected: dict[int, str], forwarded_results: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    upstream = iter(forwarded_results)
    merged = []
    for index in range(count):
        if index in injected:
            merged.append({"Status": injected[index], "Error": f"injected {injected[index]}"})
        else:
            merged.append(next(upstream))
    return merged
