"""A gateway over Amazon SES v2 for templated bulk sending, on plain boto3 (no Dagster).

What it guarantees and why:
* Send calls are made exactly once per `send_batch`: botocore's own retries are off for them
  (`total_max_attempts=1`), because SES has no idempotency key and a bulk call whose answer was
  lost would otherwise be re-sent by botocore, mailing every recipient in it twice. Retries are
  the caller's decision, made with the ledger that knows what was attempted.
* Every answer is classified per recipient: `SENT`, `RETRY` (throttled or transient: back off and
  try again), `PAUSE` (daily quota, sending paused, a configuration problem: stop the mailing until
  later or until a person acts), `FAILED` (this recipient only, with the reason), or `UNKNOWN` (the
  request may have reached SES but no answer came: never re-send blindly, reconcile from events).
* Sending is paced by the shared token bucket (shared/rate_limit.py) at the account's MaxSendRate
  (GetAccount, or an override), in batches of min(50, rate); template calls are paced to SES's 1
  call per second.
* Bulk mail carries per-recipient `List-Unsubscribe` and one-click `List-Unsubscribe-Post`
  headers (RFC 8058) via `ReplacementHeaders`; transactional mail does not.
* Message tags carry the mailing, batch and recipient ids, so SES events can be joined back to
  the ledger. Logs carry ids and counts only, never an address, a link or a token.
* Every entry is built and checked against the SES model (types, lengths, patterns) BEFORE the
  call: an entry that cannot be built (data that is not JSON, a header SES would refuse) fails
  alone with the reason, and nothing was sent for it. A call SES refuses as a bad request
  (`BadRequestException`; nothing was sent) is split in halves until the refused entries stand
  alone and fail with SES's reason, the rest being sent; when every entry of a batch is refused
  even alone, the request itself is wrong and the batch is paused instead.
* `check_send_events_published`: reconciling `unknown` recipients needs SES Send events, so a
  configuration set without an enabled SNS event destination for SEND is refused up front.
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import (
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ParamValidationError,
)
from botocore.model import ListShape, Shape, StructureShape
from botocore.validate import ParamValidator

from panel_pipeline.shared.clock import SYSTEM_CLOCK, Clock
from panel_pipeline.shared.privacy import describe_error, redact
from panel_pipeline.shared.rate_limit import TokenBucket
from panel_pipeline.shared.template_data import KEY, NUMBER, NotJson, as_json
from panel_pipeline.shared.templates import EmailTemplate

log = logging.getLogger(__name__)

SES_MAX_ENTRIES_PER_CALL = 50
TEMPLATE_CALLS_PER_SECOND = 1.0
CONNECT_TIMEOUT_SECONDS = 10.0
READ_TIMEOUT_SECONDS = 60.0
UNSUBSCRIBE_POST_VALUE = "List-Unsubscribe=One-Click"
_TAG_VALUE = re.compile(r"^[A-Za-z0-9_\-]{1,256}$")
BAD_REQUEST = "BadRequestException"
NOT_BUILT = "NOT_BUILT"  # ses_status of an entry that failed before any SES call
SEND_EVENT_TYPE = "SEND"


class SendEventsNotPublished(Exception):
    """The configuration set publishes no Send events to SNS: unknown recipients could never be settled."""


class SendStatus(StrEnum):
    """What became of one recipient of a send call, by what the mailer should do next."""

    SENT = "sent"
    RETRY = "retry"
    PAUSE = "pause"
    FAILED = "failed"
    UNKNOWN = "unknown"


# BulkEmailStatus values of the botocore sesv2 model, by what the mailer should do next.
_ENTRY_OUTCOMES: dict[str, SendStatus] = {
    "SUCCESS": SendStatus.SENT,
    "ACCOUNT_THROTTLED": SendStatus.RETRY,
    "TRANSIENT_FAILURE": SendStatus.RETRY,
    "ACCOUNT_DAILY_QUOTA_EXCEEDED": SendStatus.PAUSE,
    "ACCOUNT_SENDING_PAUSED": SendStatus.PAUSE,
    "CONFIGURATION_SET_SENDING_PAUSED": SendStatus.PAUSE,
    "ACCOUNT_SUSPENDED": SendStatus.PAUSE,
    "CONFIGURATION_SET_NOT_FOUND": SendStatus.PAUSE,
    "TEMPLATE_NOT_FOUND": SendStatus.PAUSE,
    "MAIL_FROM_DOMAIN_NOT_VERIFIED": SendStatus.PAUSE,
    "INVALID_SENDING_POOL_NAME": SendStatus.PAUSE,
    "MESSAGE_REJECTED": SendStatus.FAILED,
    "INVALID_PARAMETER": SendStatus.FAILED,
    "FAILED": SendStatus.FAILED,
}

# Whole-call error codes (SendBulkEmail errors in the sesv2 model). A definite error answer
# means SES sent nothing in that call, so nothing here is UNKNOWN. BadRequestException is not
# here: such a call is split to find the entries SES refuses (`_split_refused`).
_CALL_OUTCOMES: dict[str, SendStatus] = {
    "TooManyRequestsException": SendStatus.RETRY,
    "Throttling": SendStatus.RETRY,
    "ThrottlingException": SendStatus.RETRY,
    "LimitExceededException": SendStatus.PAUSE,
    "SendingPausedException": SendStatus.PAUSE,
    "AccountSuspendedException": SendStatus.PAUSE,
    "MailFromDomainNotVerifiedException": SendStatus.PAUSE,
    "NotFoundException": SendStatus.PAUSE,
    "MessageRejected": SendStatus.PAUSE,
}


@dataclass(frozen=True)
class SendQuota:
    max_send_rate: float
    max_24_hour_send: float
    sent_last_24_hours: float

    @property
    def remaining_24_hours(self) -> float:
        """Recipients SES will still take today; infinite when the account has no daily limit."""
        if self.max_24_hour_send < 0:
            return math.inf
        return max(self.max_24_hour_send - self.sent_last_24_hours, 0.0)


@dataclass(frozen=True)
class BulkRecipient:
    """One entry of a bulk call. `recipient_key` is a ledger id (never the address): it becomes a tag."""

    recipient_key: str
    email: str
    template_data: Mapping[str, Any]
    unsubscribe_url: str | None = None


@dataclass(frozen=True)
class BulkSend:
    mailing_id: str
    batch_id: str
    template_name: str
    recipients: Sequence[BulkRecipient]
    bulk: bool = True


@dataclass(frozen=True)
class EntryResult:
    recipient_key: str
    outcome: SendStatus
    ses_status: str | None = None
    message_id: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class BatchResult:
    entries: list[EntryResult]
    retry_attempts: int = 0

    def keys(self, outcome: SendStatus) -> list[str]:
        return [entry.recipient_key for entry in self.entries if entry.outcome is outcome]

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for entry in self.entries:
            counts[entry.outcome.value] = counts.get(entry.outcome.value, 0) + 1
        return counts


def sesv2_client(session: boto3.session.Session, endpoint_url: str | None, total_max_attempts: int) -> Any:
    """An SES v2 client; botocore's standard retries (throttling backs off) up to `total_max_attempts`."""
    config = Config(
        retries={"total_max_attempts": total_max_attempts, "mode": "standard"},
        connect_timeout=CONNECT_TIMEOUT_SECONDS,
        read_timeout=READ_TIMEOUT_SECONDS,
    )
    return session.client("sesv2", endpoint_url=endpoint_url, config=config)


class SesGateway:
    """SES v2 stored templates and SendBulkEmail; one instance may be shared by threads."""

    def __init__(
        self,
        session: boto3.session.Session,
        *,
        from_address: str,
        configuration_set: str | None = None,
        endpoint_url: str | None = None,
        max_send_rate: float | None = None,
        template_calls_per_second: float = TEMPLATE_CALLS_PER_SECOND,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        """`session` holds the region and credentials; `max_send_rate` (recipients/s) None reads
        MaxSendRate from GetAccount; `template_calls_per_second` above SES's 1 only for a local endpoint."""
        self.from_address = from_address
        self.configuration_set = configuration_set
        self.endpoint_url = endpoint_url
        self.max_send_rate = max_send_rate
        self._send_client = sesv2_client(session, endpoint_url, total_max_attempts=1)
        self._admin_client = sesv2_client(session, endpoint_url, total_max_attempts=3)
        self._template_pacer = TokenBucket(template_calls_per_second, 1.0, clock)
        self._clock = clock
        self._bucket: TokenBucket | None = None
        self._bucket_lock = threading.Lock()
        self._ensured_templates: set[str] = set()
        self._send_events_checked = False
        self._entry_shape: Shape = (
            self._send_client.meta.service_model.operation_model("SendBulkEmail")
            .input_shape.members["BulkEmailEntries"]
            .member
        )

    # --- account and pacing -------------------------------------------------------------------

    def account(self) -> dict[str, Any]:
        """GetAccount's answer: send quota, `EnforcementStatus`, `SendingEnabled`, ..."""
        return dict(_redacted_errors(self._admin_client.get_account))

    def send_quota(self) -> SendQuota:
        quota = self.account()["SendQuota"]
        return SendQuota(
            max_send_rate=float(quota["MaxSendRate"]),
            max_24_hour_send=float(quota["Max24HourSend"]),
            sent_last_24_hours=float(quota["SentLast24Hours"]),
        )

    @property
    def send_rate(self) -> float:
        """Recipients per second this gateway paces to."""
        return self._send_bucket().rate

    @property
    def batch_size(self) -> int:
        return max(1, min(SES_MAX_ENTRIES_PER_CALL, math.floor(self.send_rate)))

    def _send_bucket(self) -> TokenBucket:
        with self._bucket_lock:
            if self._bucket is None:
                rate = self.max_send_rate or self.send_quota().max_send_rate
                capacity = max(1, min(SES_MAX_ENTRIES_PER_CALL, math.floor(rate)))
                self._bucket = TokenBucket(rate, capacity, self._clock)
                log.info("SES pacing at %.2f recipients/s, batches of %d", rate, capacity)
            return self._bucket

    # --- templates ----------------------------------------------------------------------------

    def ensure_template(self, template: EmailTemplate) -> str:
        """Make sure SES stores this template version; returns its versioned SES name.

        The name carries the content hash, so an existing template of that name already has this
        content; it is only updated when someone changed it by hand.
        """
        name = template.ses_name
        if name in self._ensured_templates:  # one check per gateway: a run sharing it pays one call
            return name
        content = {"Subject": template.subject, "Html": template.html, "Text": template.text}
        stored = self._stored_template(name)
        if stored is None:
            self._template_call(self._admin_client.create_email_template, TemplateName=name, TemplateContent=content)
            log.info("created SES template %s", name)
        elif stored != content:
            self._template_call(self._admin_client.update_email_template, TemplateName=name, TemplateContent=content)
            log.warning("SES template %s differed from its build and was overwritten", name)
        self._ensured_templates.add(name)
        return name

    def check_send_events_published(self) -> None:
        """Raise `SendEventsNotPublished` unless the configuration set has an enabled SNS event
        destination matching SEND (checked once per gateway; nothing to check without a set, nor on
        a local endpoint that does not know the call)."""
        name = self.configuration_set
        if not name or self._send_events_checked:
            return
        try:
            destinations = self._admin_client.get_configuration_set_event_destinations(ConfigurationSetName=name)
        except ClientError as exc:
            if self.endpoint_url and aws_error_code(exc) in {"404", "UnknownOperationException"}:
                # A local emulator without configuration sets (the bare aws-ses-v2-local): nothing to check.
                log.warning(
                    "SES endpoint %s cannot list event destinations; Send events not checked", self.endpoint_url
                )
                self._send_events_checked = True
                return
            raise SesAdminError(describe_error(exc)) from None
        if not any(_publishes_send_events(d) for d in destinations.get("EventDestinations", [])):
            raise SendEventsNotPublished(
                f"SES configuration set {name!r} has no enabled SNS event destination matching SEND events, so "
                "recipients whose SES answer was lost could never be settled; add one (docs/mailer.md, "
                "production set-up step 3) and queue the mailing again"
            )
        self._send_events_checked = True

    def _stored_template(self, name: str) -> dict[str, str] | None:
        try:
            response = self._template_call(self._admin_client.get_email_template, raw_errors=True, TemplateName=name)
        except ClientError as exc:
            if aws_error_code(exc) in {"NotFoundException", "404"}:
                return None
            raise SesAdminError(describe_error(exc)) from None
        stored = response["TemplateContent"]
        return {key: stored.get(key, "") for key in ("Subject", "Html", "Text")}

    def _template_call(self, call: Callable[..., Any], *, raw_errors: bool = False, **kwargs: Any) -> Any:
        """Paced; a failure raises `SesAdminError` (redacted) unless the caller reads the raw error."""
        self._template_pacer.acquire()
        return call(**kwargs) if raw_errors else _redacted_errors(call, **kwargs)

    # --- sending ------------------------------------------------------------------------------

    def wait_for_send_capacity(self, recipients: int) -> None:
        """Block until the account's send rate allows this many recipients; call before `send_batch`.

        Kept apart from the call so the caller can pace first and write its attempt down last,
        keeping the window in which a crash leaves recipients `unknown` as short as the call itself.
        """
        self._send_bucket().acquire(recipients)

    def send_batch(self, send: BulkSend) -> BatchResult:
        """One SendBulkEmail call for up to `batch_size` recipients, each classified; no pacing
        (`wait_for_send_capacity` does that), except for the extra calls of a refused batch's split."""
        self._check_batch(send)
        built, not_built = self._build_entries(send)
        results = {result.recipient_key: result for result in not_built}
        retry_attempts = 0
        if built:
            entry_results, retry_attempts = self._send_entries(send, built)
            if len(built) > 1 and all(r.ses_status == BAD_REQUEST for r in entry_results):
                entry_results = [_paused_as_bad_request(r, len(built)) for r in entry_results]
            results.update((result.recipient_key, result) for result in entry_results)
        return BatchResult([results[r.recipient_key] for r in send.recipients], retry_attempts)

    def _build_entries(self, send: BulkSend) -> tuple[list[tuple[str, dict[str, Any]]], list[EntryResult]]:
        """Each recipient's entry, checked against the SES model; those that fail are results already."""
        built, not_built = [], []
        for recipient in send.recipients:
            try:
                entry = self._entry(recipient, send.bulk)
                problem = self._entry_problem(entry)
            except (TypeError, ValueError):
                problem = f"template data: {_first_non_json(recipient.template_data)}"
            if send.bulk and not recipient.unsubscribe_url:
                problem = "bulk mail needs an unsubscribe link (List-Unsubscribe), and this recipient has none"
            if problem is None:
                built.append((recipient.recipient_key, entry))
            else:
                not_built.append(
                    EntryResult(recipient.recipient_key, SendStatus.FAILED, NOT_BUILT, None, f"not sent: {problem}")
                )
        if not_built:
            log.warning(
                "mailing %s batch %s: %d entries could not be built and fail alone",
                send.mailing_id,
                send.batch_id,
                len(not_built),
            )
        return built, not_built

    def _entry_problem(self, entry: Mapping[str, Any]) -> str | None:
        report = ParamValidator().validate(entry, self._entry_shape)
        if report.has_errors():
            return "SES would refuse the entry: " + redact(report.generate_report())
        problems = _model_problems(entry, self._entry_shape, "entry")
        return "SES would refuse the entry: " + "; ".join(problems) if problems else None

    def _send_entries(
        self, send: BulkSend, built: Sequence[tuple[str, dict[str, Any]]]
    ) -> tuple[list[EntryResult], int]:
        keys = [key for key, _ in built]
        try:
            response = self._send_client.send_bulk_email(**self._request(send, [entry for _, entry in built]))
        except ClientError as exc:
            if aws_error_code(exc) == BAD_REQUEST:
                return self._split_refused(
                    send, built, redact(exc.response.get("Error", {}).get("Message", "") or BAD_REQUEST)
                )
            return self._call_error(send, keys, exc), 0
        except ParamValidationError as exc:  # raised before anything went out
            return self._split_refused(send, built, redact(str(exc)))
        except (EndpointConnectionError, ConnectTimeoutError) as exc:
            # The connection was never made: SES cannot have seen the request.
            return _all(keys, SendStatus.RETRY, type(exc).__name__, redact(str(exc))), 0
        except Exception as exc:  # noqa: BLE001 - any other failure may have happened after SES accepted
            log.error(
                "mailing %s batch %s: no answer from SES (%s); %d recipients are unknown",
                send.mailing_id,
                send.batch_id,
                type(exc).__name__,
                len(keys),
            )
            return _all(keys, SendStatus.UNKNOWN, type(exc).__name__, redact(str(exc))), 0
        return self._entry_results(send, keys, response)

    def _split_refused(
        self, send: BulkSend, built: Sequence[tuple[str, dict[str, Any]]], message: str
    ) -> tuple[list[EntryResult], int]:
        """SES refused the call as a bad request and sent nothing: alone, an entry fails with the
        reason; otherwise each half goes again (paced), so one bad entry cannot hold back the rest."""
        if len(built) == 1:
            log.warning(
                "mailing %s batch %s: SES refused one entry as a bad request: %s",
                send.mailing_id,
                send.batch_id,
                message,
            )
            return [
                EntryResult(built[0][0], SendStatus.FAILED, BAD_REQUEST, None, f"SES refused this recipient: {message}")
            ], 0
        log.warning(
            "mailing %s batch %s: SES refused %d entries as a bad request (%s); splitting them",
            send.mailing_id,
            send.batch_id,
            len(built),
            message,
        )
        middle = len(built) // 2
        results: list[EntryResult] = []
        retry_attempts = 0
        for part in (built[:middle], built[middle:]):
            self.wait_for_send_capacity(len(part))
            part_results, part_retries = self._send_entries(send, part)
            results += part_results
            retry_attempts += part_retries
        return results, retry_attempts

    def _check_batch(self, send: BulkSend) -> None:
        if not send.recipients:
            raise ValueError("a batch needs at least one recipient")
        if len(send.recipients) > self.batch_size:
            raise ValueError(f"{len(send.recipients)} recipients exceed the batch size {self.batch_size}")
        for value in (send.mailing_id, send.batch_id, *(r.recipient_key for r in send.recipients)):
            if not _TAG_VALUE.match(value):
                raise ValueError("mailing, batch and recipient ids must be SES tag values ([A-Za-z0-9_-])")

    def _request(self, send: BulkSend, entries: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        request: dict[str, Any] = {
            "FromEmailAddress": self.from_address,
            "DefaultContent": {"Template": {"TemplateName": send.template_name, "TemplateData": "{}"}},
            "BulkEmailEntries": list(entries),
            "DefaultEmailTags": [
                {"Name": "mailing", "Value": send.mailing_id},
                {"Name": "batch", "Value": send.batch_id},
            ],
        }
        if self.configuration_set:
            request["ConfigurationSetName"] = self.configuration_set
        return request

    @staticmethod
    def _entry(recipient: BulkRecipient, bulk: bool) -> dict[str, Any]:
        # The complete data goes with every entry: SES merges it over the (empty) default data.
        entry: dict[str, Any] = {
            "Destination": {"ToAddresses": [recipient.email]},
            "ReplacementEmailContent": {
                "ReplacementTemplate": {
                    "ReplacementTemplateData": json.dumps(recipient.template_data, ensure_ascii=False, allow_nan=False),
                }
            },
            "ReplacementTags": [{"Name": "recipient", "Value": recipient.recipient_key}],
        }
        if bulk:
            entry["ReplacementHeaders"] = [
                {"Name": "List-Unsubscribe", "Value": f"<{recipient.unsubscribe_url}>"},
                {"Name": "List-Unsubscribe-Post", "Value": UNSUBSCRIBE_POST_VALUE},
            ]
        return entry

    def _entry_results(
        self, send: BulkSend, keys: Sequence[str], response: Mapping[str, Any]
    ) -> tuple[list[EntryResult], int]:
        answers = response.get("BulkEmailEntryResults", [])
        if len(answers) != len(keys):
            log.error(
                "mailing %s batch %s: SES answered %d entries for %d recipients",
                send.mailing_id,
                send.batch_id,
                len(answers),
                len(keys),
            )
            return _all(keys, SendStatus.UNKNOWN, None, "entry count mismatch in the SES answer"), 0
        entries = [self._entry_result(key, answer) for key, answer in zip(keys, answers, strict=True)]
        retry_attempts = int(response.get("ResponseMetadata", {}).get("RetryAttempts", 0))
        log.info("mailing %s batch %s: %s", send.mailing_id, send.batch_id, BatchResult(entries).counts())
        if retry_attempts:
            log.error("mailing %s batch %s: botocore retried a send call", send.mailing_id, send.batch_id)
        return entries, retry_attempts

    @staticmethod
    def _entry_result(recipient_key: str, answer: Mapping[str, Any]) -> EntryResult:
        status = answer.get("Status", "")
        outcome = _ENTRY_OUTCOMES.get(status, SendStatus.FAILED)
        error = redact(answer["Error"]) if answer.get("Error") else None
        if outcome is not SendStatus.SENT and error is None:
            error = status or "no status in the SES answer"
        message_id = answer.get("MessageId") if outcome is SendStatus.SENT else None
        return EntryResult(recipient_key, outcome, status or None, message_id, error)

    def _call_error(self, send: BulkSend, keys: Sequence[str], exc: ClientError) -> list[EntryResult]:
        code = aws_error_code(exc)
        http_status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
        outcome = _CALL_OUTCOMES.get(code)
        if outcome is None:
            # A 5xx (or an error we do not know) may come after SES queued the mail.
            outcome = SendStatus.UNKNOWN if http_status >= 500 or http_status == 0 else SendStatus.PAUSE
        message = redact(exc.response.get("Error", {}).get("Message", "") or code)
        log.warning(
            "mailing %s batch %s: SES refused the call (%s, HTTP %s): %s -> %s",
            send.mailing_id,
            send.batch_id,
            code,
            http_status,
            message,
            outcome.value,
        )
        return _all(keys, outcome, code, message)


def _all(keys: Sequence[str], outcome: SendStatus, status: str | None, error: str) -> list[EntryResult]:
    return [EntryResult(key, outcome, status, None, error) for key in keys]


def _paused_as_bad_request(result: EntryResult, entries: int) -> EntryResult:
    error = (
        f"SES refused each of the {entries} entries, even alone, as a bad request: "
        f"the request itself is wrong ({result.error})"
    )
    return EntryResult(result.recipient_key, SendStatus.PAUSE, BAD_REQUEST, None, error)


class SesAdminError(RuntimeError):
    """An SES account or template call failed; the message is `describe_error`'s (class, code and
    a redacted message), and the raw AWS error is not chained, so no log or stored error repeats it."""


def _redacted_errors(call: Callable[..., Any], **kwargs: Any) -> Any:
    try:
        return call(**kwargs)
    except ClientError as exc:
        raise SesAdminError(describe_error(exc)) from None


def aws_error_code(exc: BaseException) -> str:
    """An AWS error's code (`Error.Code` of a ClientError), else its class name: never its message,
    which may carry an address or an account."""
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code") or type(exc).__name__)
    return type(exc).__name__


def _publishes_send_events(destination: Mapping[str, Any]) -> bool:
    return bool(
        destination.get("Enabled")
        and SEND_EVENT_TYPE in destination.get("MatchingEventTypes", [])
        and destination.get("SnsDestination", {}).get("TopicArn")
    )


def _first_non_json(data: Any) -> str:
    """Where in the data a value is not JSON, e.g. `data.expires_at is a datetime, not a JSON value`."""
    try:
        as_json(data)
    except NotJson as wrong:
        at = ".".join(["data", *map(str, wrong.path)])
        if wrong.reason == KEY:
            return f"{at} has a {type(wrong.value).__name__} key, not a string"
        if wrong.reason == NUMBER:
            return f"{at} is {wrong.value}, not a JSON number"
        return f"{at} is a {type(wrong.value).__name__}, not a JSON value"
    return "not a JSON object"


def _model_problems(value: Any, shape: Shape, path: str) -> list[str]:
    """What SES checks that botocore's validator does not: maximum lengths and patterns."""
    limit = shape.metadata.get("max")
    if isinstance(shape, StructureShape) and isinstance(value, Mapping):
        return [
            p
            for name, member in shape.members.items()
            if name in value
            for p in _model_problems(value[name], member, f"{path}.{name}")
        ]
    if isinstance(shape, ListShape) and isinstance(value, list):
        too_many = (
            [f"{path} has {len(value)} items, at most {limit} allowed"]
            if limit is not None and len(value) > limit
            else []
        )
        return too_many + [
            p for i, item in enumerate(value) for p in _model_problems(item, shape.member, f"{path}.{i}")
        ]
    if shape.type_name == "string" and isinstance(value, str):
        if limit is not None and len(value) > limit:
            return [f"{path} is {len(value)} characters, at most {limit} allowed"]
        pattern = shape.metadata.get("pattern")
        if pattern and not re.fullmatch(pattern, value):
            return [f"{path} has characters SES does not allow there"]
    return []
