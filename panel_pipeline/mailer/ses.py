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
* Sending is paced by a thread-safe token bucket at the account's MaxSendRate (GetAccount, or an
  override), in batches of min(50, rate); template calls are paced to SES's 1 call per second.
* Bulk mail carries per-recipient `List-Unsubscribe` and one-click `List-Unsubscribe-Post`
  headers (RFC 8058) via `ReplacementHeaders`; transactional mail does not.
* Message tags carry the mailing, batch and recipient ids, so SES events can be joined back to
  the ledger. Logs carry ids and counts only, never an address, a link or a token.
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import (
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
)

from panel_pipeline.mailer.templates import EmailTemplate
from panel_pipeline.privacy import redact

log = logging.getLogger(__name__)

SES_MAX_ENTRIES_PER_CALL = 50
TEMPLATE_CALLS_PER_SECOND = 1.0
UNSUBSCRIBE_POST_VALUE = "List-Unsubscribe=One-Click"
_TAG_VALUE = re.compile(r"^[A-Za-z0-9_\-]{1,256}$")


class Outcome(str, Enum):
    SENT = "sent"
    RETRY = "retry"
    PAUSE = "pause"
    FAILED = "failed"
    UNKNOWN = "unknown"


# BulkEmailStatus values of the botocore sesv2 model, by what the mailer should do next.
_ENTRY_OUTCOMES: dict[str, Outcome] = {
    "SUCCESS": Outcome.SENT,
    "ACCOUNT_THROTTLED": Outcome.RETRY,
    "TRANSIENT_FAILURE": Outcome.RETRY,
    "ACCOUNT_DAILY_QUOTA_EXCEEDED": Outcome.PAUSE,
    "ACCOUNT_SENDING_PAUSED": Outcome.PAUSE,
    "CONFIGURATION_SET_SENDING_PAUSED": Outcome.PAUSE,
    "ACCOUNT_SUSPENDED": Outcome.PAUSE,
    "CONFIGURATION_SET_NOT_FOUND": Outcome.PAUSE,
    "TEMPLATE_NOT_FOUND": Outcome.PAUSE,
    "MAIL_FROM_DOMAIN_NOT_VERIFIED": Outcome.PAUSE,
    "INVALID_SENDING_POOL_NAME": Outcome.PAUSE,
    "MESSAGE_REJECTED": Outcome.FAILED,
    "INVALID_PARAMETER": Outcome.FAILED,
    "FAILED": Outcome.FAILED,
}

# Whole-call error codes (SendBulkEmail errors in the sesv2 model). A definite error answer
# means SES sent nothing in that call, so nothing here is UNKNOWN.
_CALL_OUTCOMES: dict[str, Outcome] = {
    "TooManyRequestsException": Outcome.RETRY,
    "Throttling": Outcome.RETRY,
    "ThrottlingException": Outcome.RETRY,
    "LimitExceededException": Outcome.PAUSE,
    "SendingPausedException": Outcome.PAUSE,
    "AccountSuspendedException": Outcome.PAUSE,
    "MailFromDomainNotVerifiedException": Outcome.PAUSE,
    "NotFoundException": Outcome.PAUSE,
    "BadRequestException": Outcome.PAUSE,
    "MessageRejected": Outcome.PAUSE,
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
    outcome: Outcome
    ses_status: str | None = None
    message_id: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class BatchResult:
    entries: list[EntryResult]
    retry_attempts: int = 0

    def keys(self, outcome: Outcome) -> list[str]:
        return [entry.recipient_key for entry in self.entries if entry.outcome is outcome]

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for entry in self.entries:
            counts[entry.outcome.value] = counts.get(entry.outcome.value, 0) + 1
        return counts


class TokenBucket:
    """Thread-safe pacing: `acquire(n)` blocks until n tokens (recipients) are available."""

    def __init__(
        self,
        rate_per_second: float,
        capacity: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate_per_second <= 0 or capacity <= 0:
            raise ValueError("rate and capacity must be positive")
        self.rate = rate_per_second
        self.capacity = capacity
        self._clock = clock
        self._sleep = sleep
        self._tokens = capacity
        self._updated = clock()
        self._lock = threading.Lock()

    def acquire(self, tokens: float = 1.0) -> None:
        if tokens > self.capacity:
            raise ValueError(f"cannot take {tokens} tokens from a bucket of {self.capacity}")
        while True:
            with self._lock:
                wait = self._take_or_wait(tokens)
            if wait <= 0:
                return
            self._sleep(wait)

    def _take_or_wait(self, tokens: float) -> float:
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._updated) * self.rate)
        self._updated = now
        if self._tokens >= tokens:
            self._tokens -= tokens
            return 0.0
        return (tokens - self._tokens) / self.rate


@dataclass
class SesSettings:
    region_name: str
    from_address: str
    configuration_set: str | None = None
    endpoint_url: str | None = None
    max_send_rate: float | None = None  # recipients/s; None reads MaxSendRate from GetAccount
    rate_fraction: float = 1.0  # pace below the quota, e.g. 0.9, to leave room for other senders
    reply_to: Sequence[str] = field(default_factory=tuple)
    template_calls_per_second: float = TEMPLATE_CALLS_PER_SECOND  # SES's limit; raise only for local servers
    connect_timeout_seconds: float = 10.0
    read_timeout_seconds: float = 60.0


class SesGateway:
    """SES v2 stored templates and SendBulkEmail; one instance may be shared by threads."""

    def __init__(
        self,
        settings: SesSettings,
        session: boto3.session.Session | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.settings = settings
        session = session or boto3.session.Session()
        self._send_client = self._client(session, total_max_attempts=1)
        self._admin_client = self._client(session, total_max_attempts=3)
        self._template_pacer = TokenBucket(settings.template_calls_per_second, 1.0, clock, sleep)
        self._clock = clock
        self._sleep = sleep
        self._bucket: TokenBucket | None = None
        self._bucket_lock = threading.Lock()

    def _client(self, session: boto3.session.Session, total_max_attempts: int) -> Any:
        config = Config(
            retries={"total_max_attempts": total_max_attempts, "mode": "standard"},
            connect_timeout=self.settings.connect_timeout_seconds,
            read_timeout=self.settings.read_timeout_seconds,
        )
        return session.client(
            "sesv2",
            region_name=self.settings.region_name,
            endpoint_url=self.settings.endpoint_url,
            config=config,
        )

    # --- account and pacing -------------------------------------------------------------------

    def send_quota(self) -> SendQuota:
        quota = self._admin_client.get_account()["SendQuota"]
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
                account_rate = self.settings.max_send_rate or self.send_quota().max_send_rate
                rate = account_rate * self.settings.rate_fraction
                capacity = max(1, min(SES_MAX_ENTRIES_PER_CALL, math.floor(rate)))
                self._bucket = TokenBucket(rate, capacity, self._clock, self._sleep)
                log.info("SES pacing at %.2f recipients/s, batches of %d", rate, capacity)
            return self._bucket

    # --- templates ----------------------------------------------------------------------------

    def ensure_template(self, template: EmailTemplate) -> str:
        """Make sure SES stores this template version; returns its versioned SES name.

        The name carries the content hash, so an existing template of that name already has this
        content; it is only updated when someone changed it by hand.
        """
        name = template.ses_name
        content = {"Subject": template.subject, "Html": template.html, "Text": template.text}
        stored = self._stored_template(name)
        if stored is None:
            self._template_call(self._admin_client.create_email_template, TemplateName=name, TemplateContent=content)
            log.info("created SES template %s", name)
        elif stored != content:
            self._template_call(self._admin_client.update_email_template, TemplateName=name, TemplateContent=content)
            log.warning("SES template %s differed from its build and was overwritten", name)
        return name

    def _stored_template(self, name: str) -> dict[str, str] | None:
        try:
            response = self._template_call(self._admin_client.get_email_template, TemplateName=name)
        except ClientError as exc:
            if _error_code(exc) in {"NotFoundException", "404"}:
                return None
            raise
        stored = response["TemplateContent"]
        return {key: stored.get(key, "") for key in ("Subject", "Html", "Text")}

    def _template_call(self, call: Callable[..., Any], **kwargs: Any) -> Any:
        self._template_pacer.acquire()
        return call(**kwargs)

    # --- sending ------------------------------------------------------------------------------

    def wait_for_send_capacity(self, recipients: int) -> None:
        """Block until the account's send rate allows this many recipients; call before `send_batch`.

        Kept apart from the call so the caller can pace first and write its attempt down last,
        keeping the window in which a crash leaves recipients `unknown` as short as the call itself.
        """
        self._send_bucket().acquire(recipients)

    def send_batch(self, send: BulkSend) -> BatchResult:
        """One SendBulkEmail call for up to `batch_size` recipients, each classified; no pacing
        (`wait_for_send_capacity` does that)."""
        self._check_batch(send)
        try:
            response = self._send_client.send_bulk_email(**self._request(send))
        except ClientError as exc:
            return self._call_error(send, exc)
        except (EndpointConnectionError, ConnectTimeoutError) as exc:
            # The connection was never made: SES cannot have seen the request.
            return self._whole_batch(send, Outcome.RETRY, type(exc).__name__, redact(str(exc)))
        except Exception as exc:  # noqa: BLE001 - any other failure may have happened after SES accepted
            log.error(
                "mailing %s batch %s: no answer from SES (%s); %d recipients are unknown",
                send.mailing_id, send.batch_id, type(exc).__name__, len(send.recipients),
            )
            return self._whole_batch(send, Outcome.UNKNOWN, type(exc).__name__, redact(str(exc)))
        return self._entry_results(send, response)

    def _check_batch(self, send: BulkSend) -> None:
        if not send.recipients:
            raise ValueError("a batch needs at least one recipient")
        if len(send.recipients) > self.batch_size:
            raise ValueError(f"{len(send.recipients)} recipients exceed the batch size {self.batch_size}")
        for value in (send.mailing_id, send.batch_id, *(r.recipient_key for r in send.recipients)):
            if not _TAG_VALUE.match(value):
                raise ValueError("mailing, batch and recipient ids must be SES tag values ([A-Za-z0-9_-])")
        if send.bulk and any(not r.unsubscribe_url for r in send.recipients):
            raise ValueError("bulk mail needs an unsubscribe URL for every recipient")

    def _request(self, send: BulkSend) -> dict[str, Any]:
        request: dict[str, Any] = {
            "FromEmailAddress": self.settings.from_address,
            "DefaultContent": {"Template": {"TemplateName": send.template_name, "TemplateData": "{}"}},
            "BulkEmailEntries": [self._entry(recipient, send.bulk) for recipient in send.recipients],
            "DefaultEmailTags": [
                {"Name": "mailing", "Value": send.mailing_id},
                {"Name": "batch", "Value": send.batch_id},
            ],
        }
        if self.settings.configuration_set:
            request["ConfigurationSetName"] = self.settings.configuration_set
        if self.settings.reply_to:
            request["ReplyToAddresses"] = list(self.settings.reply_to)
        return request

    @staticmethod
    def _entry(recipient: BulkRecipient, bulk: bool) -> dict[str, Any]:
        # The complete data goes with every entry: SES merges it over the (empty) default data.
        entry: dict[str, Any] = {
            "Destination": {"ToAddresses": [recipient.email]},
            "ReplacementEmailContent": {
                "ReplacementTemplate": {
                    "ReplacementTemplateData": json.dumps(recipient.template_data, ensure_ascii=False),
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

    def _entry_results(self, send: BulkSend, response: Mapping[str, Any]) -> BatchResult:
        answers = response.get("BulkEmailEntryResults", [])
        if len(answers) != len(send.recipients):
            log.error(
                "mailing %s batch %s: SES answered %d entries for %d recipients",
                send.mailing_id, send.batch_id, len(answers), len(send.recipients),
            )
            return self._whole_batch(send, Outcome.UNKNOWN, None, "entry count mismatch in the SES answer")
        entries = [self._entry_result(r.recipient_key, answer) for r, answer in zip(send.recipients, answers)]
        retry_attempts = int(response.get("ResponseMetadata", {}).get("RetryAttempts", 0))
        result = BatchResult(entries, retry_attempts)
        log.info("mailing %s batch %s: %s", send.mailing_id, send.batch_id, result.counts())
        if retry_attempts:
            log.error("mailing %s batch %s: botocore retried a send call", send.mailing_id, send.batch_id)
        return result

    @staticmethod
    def _entry_result(recipient_key: str, answer: Mapping[str, Any]) -> EntryResult:
        status = answer.get("Status", "")
        outcome = _ENTRY_OUTCOMES.get(status, Outcome.FAILED)
        error = redact(answer["Error"]) if answer.get("Error") else None
        if outcome is not Outcome.SENT and error is None:
            error = status or "no status in the SES answer"
        message_id = answer.get("MessageId") if outcome is Outcome.SENT else None
        return EntryResult(recipient_key, outcome, status or None, message_id, error)

    def _call_error(self, send: BulkSend, exc: ClientError) -> BatchResult:
        code = _error_code(exc)
        http_status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
        outcome = _CALL_OUTCOMES.get(code)
        if outcome is None:
            # A 5xx (or an error we do not know) may come after SES queued the mail.
            outcome = Outcome.UNKNOWN if http_status >= 500 or http_status == 0 else Outcome.PAUSE
        message = redact(exc.response.get("Error", {}).get("Message", "") or code)
        log.warning(
            "mailing %s batch %s: SES refused the call (%s, HTTP %s): %s -> %s",
            send.mailing_id, send.batch_id, code, http_status, message, outcome.value,
        )
        return self._whole_batch(send, outcome, code, message)

    @staticmethod
    def _whole_batch(send: BulkSend, outcome: Outcome, status: str | None, error: str) -> BatchResult:
        return BatchResult([EntryResult(r.recipient_key, outcome, status, None, error) for r in send.recipients])


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))
