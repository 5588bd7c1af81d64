"""The SES events a call to the local SES endpoint produces, and their publisher to SNS.

For each entry SES accepted, a `Send` event with the tags SES would put in `mail.tags` (what a
configuration-set event destination delivers, for reconciliation), then what became of the message:
for SES's mailbox simulator addresses (labels allowed) a permanent `Bounce` (bounce@simulator.amazonses.com)
or a `Delivery` and a `Complaint` (complaint@simulator.amazonses.com); for any other address a
`Delivery`, unless `FeedbackShares` (the local stack's `PANEL_LOCAL_SES_FEEDBACK`, all 0 by default)
draws a permanent or transient bounce instead, and then perhaps a complaint, an open and a click.
Each draw is a hash of the message id and the outcome, so reading a call's events twice gives the
same events. `SnsEventPublisher` publishes them to a topic of the local SNS as a configuration set's
SNS event destination does.
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import json
import queue
import sys
import threading
import urllib.request
import uuid
from dataclasses import dataclass, field, fields
from typing import Any

from panel_pipeline.local.sns_sqs_server import LOCAL_PUBLISH_PATH

SIMULATOR_DOMAIN = "simulator.amazonses.com"
FEEDBACK_SHARES_VARIABLE = "PANEL_LOCAL_SES_FEEDBACK"


@dataclass(frozen=True)
class FeedbackShares:
    """The share of messages (0 to 1) to addresses outside the simulator that bounce permanently or
    transiently (instead of a delivery), and of those delivered that draw a complaint, an open, a click;
    `delivery` is the share of deliveries whose Delivery event is published (a configuration set may
    publish none: 0)."""

    bounce: float = 0.0
    transient: float = 0.0
    complaint: float = 0.0
    open: float = 0.0
    click: float = 0.0
    delivery: float = 1.0

    @classmethod
    def parse(cls, text: str | None) -> FeedbackShares:
        """`"bounce=0.02,transient=0.03,complaint=0.001,open=0.3,click=0.1"` (any subset; empty: none)."""
        shares: dict[str, float] = {}
        names = {f.name for f in fields(cls)}
        for part in filter(None, (piece.strip() for piece in (text or "").split(","))):
            name, _, value = part.partition("=")
            if name.strip() not in names:
                raise ValueError(f"{FEEDBACK_SHARES_VARIABLE}: {name.strip()!r} is not one of {sorted(names)}")
            try:
                share = float(value)
            except ValueError:
                raise ValueError(f"{FEEDBACK_SHARES_VARIABLE}: {name.strip()} needs a number from 0 to 1") from None
            if not 0.0 <= share <= 1.0:
                raise ValueError(f"{FEEDBACK_SHARES_VARIABLE}: {name.strip()} needs a number from 0 to 1")
            shares[name.strip()] = share
        if shares.get("bounce", 0.0) + shares.get("transient", 0.0) > 1.0:
            raise ValueError(f"{FEEDBACK_SHARES_VARIABLE}: bounce and transient add up to more than 1")
        return cls(**shares)

    def __str__(self) -> str:
        return ",".join(f"{f.name}={getattr(self, f.name):g}" for f in fields(self))


NO_FEEDBACK = FeedbackShares()


@dataclass(frozen=True)
class RecordedCall:
    request: dict[str, Any]
    fault: str | None
    results: list[dict[str, Any]]  # per entry, as SES decided; [] when the whole call was refused
    answered: bool = True  # False: accepted, but the answer was dropped on purpose
    timestamp: str = field(default_factory=lambda: ses_timestamp(dt.datetime.now(dt.UTC)))
    feedback: FeedbackShares = NO_FEEDBACK  # the shares of its messages' feedback (the proxy's when it came)


def ses_timestamp(moment: dt.datetime) -> str:
    """SES's event time format, e.g. 2025-01-06T09:00:00.123Z."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def ses_events(call: RecordedCall, shares: FeedbackShares | None = None) -> list[dict[str, Any]]:
    """Send events for the entries SES accepted, then what became of each message (at `shares`, by
    default the call's own)."""
    shares = call.feedback if shares is None else shares
    request = call.request
    default_tags = {tag["Name"]: [tag["Value"]] for tag in request.get("DefaultEmailTags", [])}
    sends: list[dict[str, Any]] = []
    feedback: list[dict[str, Any]] = []
    for entry, result in zip(request.get("BulkEmailEntries", []), call.results, strict=False):
        if result.get("Status") != "SUCCESS":
            continue
        tags = copy.deepcopy(default_tags)
        tags.update({tag["Name"]: [tag["Value"]] for tag in entry.get("ReplacementTags", [])})
        if request.get("ConfigurationSetName"):
            tags["ses:configuration-set"] = [request["ConfigurationSetName"]]
        destination = list(entry.get("Destination", {}).get("ToAddresses", []))
        mail = {"timestamp": call.timestamp, "messageId": result["MessageId"], "destination": destination, "tags": tags}
        sends.append({"eventType": "Send", "mail": mail})
        for address in destination:
            feedback.extend(_outcome(mail, address, shares))
    return sends + feedback


def _outcome(mail: dict[str, Any], address: str, shares: FeedbackShares) -> list[dict[str, Any]]:
    box = _simulator_box(address)
    if box == "bounce":
        return [_bounce(mail, address, "Permanent")]
    if box == "complaint":
        return [_delivery(mail, address), _complaint(mail, address)]
    if box is None:
        bounced = _draw(mail, "bounce")
        if bounced < shares.bounce:
            return [_bounce(mail, address, "Permanent")]
        if bounced < shares.bounce + shares.transient:
            return [_bounce(mail, address, "Transient")]
    events = [_delivery(mail, address)] if _draw(mail, "delivery") < shares.delivery else []
    if _draw(mail, "complaint") < shares.complaint:
        events.append(_complaint(mail, address))
    if _draw(mail, "open") < shares.open:
        events.append(_engagement(mail, "Open"))
    if _draw(mail, "click") < shares.click:
        events.append(_engagement(mail, "Click"))
    return events


def _draw(mail: dict[str, Any], outcome: str) -> float:
    """A number in [0, 1) fixed by the message and the outcome."""
    digest = hashlib.sha256(f"{mail['messageId']}:{outcome}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _simulator_box(address: str) -> str | None:
    """`bounce` or `complaint` for SES's mailbox simulator addresses (labels allowed: bounce+x@...);
    `delivered` for its other boxes (success, ooto, ...), None outside the simulator."""
    local, _, domain = address.strip().lower().rpartition("@")
    if domain != SIMULATOR_DOMAIN:
        return None
    box = local.split("+")[0]
    return box if box in ("bounce", "complaint") else "delivered"


def _feedback_id(mail: dict[str, Any], kind: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_OID, f"{mail['messageId']}:{kind}"))  # the same each time it is read


def _bounce(mail: dict[str, Any], address: str, bounce_type: str) -> dict[str, Any]:
    permanent = bounce_type == "Permanent"
    recipient = {
        "emailAddress": address,
        "action": "failed",
        "status": "5.1.1" if permanent else "4.2.2",
        "diagnosticCode": "smtp; 550 5.1.1 user unknown" if permanent else "smtp; 452 4.2.2 mailbox full",
    }
    bounce = {
        "bounceType": bounce_type,
        "bounceSubType": "General" if permanent else "MailboxFull",
        "bouncedRecipients": [recipient],
        "timestamp": mail["timestamp"],
        "feedbackId": _feedback_id(mail, "bounce"),
    }
    return {"eventType": "Bounce", "bounce": bounce, "mail": mail}


def _delivery(mail: dict[str, Any], address: str) -> dict[str, Any]:
    delivery = {
        "timestamp": mail["timestamp"],
        "processingTimeMillis": 0,
        "recipients": [address],
        "smtpResponse": "250 2.6.0 Message received",
        "reportingMTA": "local-ses.panel.test",
    }
    return {"eventType": "Delivery", "delivery": delivery, "mail": mail}


def _complaint(mail: dict[str, Any], address: str) -> dict[str, Any]:
    complaint = {
        "complainedRecipients": [{"emailAddress": address}],
        "complaintFeedbackType": "abuse",
        "timestamp": mail["timestamp"],
        "feedbackId": _feedback_id(mail, "complaint"),
    }
    return {"eventType": "Complaint", "complaint": complaint, "mail": mail}


def _engagement(mail: dict[str, Any], event_type: str) -> dict[str, Any]:
    detail: dict[str, Any] = {"timestamp": mail["timestamp"], "ipAddress": "192.0.2.1", "userAgent": "local"}
    if event_type == "Click":
        detail |= {"link": "https://survey.example/", "linkTags": {}}
    return {"eventType": event_type, event_type.lower(): detail, "mail": mail}


class SnsEventPublisher:
    """Publishes SES events to a topic of the local SNS (`sns_sqs_server`) from a thread of its own
    (SES, too, publishes after answering), each call's events in one request to the server's
    `LOCAL_PUBLISH_PATH`. SES publishes inside AWS, so nothing of this runs in production; boto3's
    PublishBatch, ten events a call, cost the local stack half a millisecond of CPU an event, on the
    cores the pipeline is measured on. A failed publish is reported on stderr and dropped."""

    def __init__(self, sns_endpoint_url: str, topic_arn: str) -> None:
        self.publish_url = sns_endpoint_url.rstrip("/") + LOCAL_PUBLISH_PATH
        self.topic_arn = topic_arn
        self._pending: queue.Queue[list[dict[str, Any]] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="ses-event-publisher", daemon=True)
        self._thread.start()

    def __call__(self, events: list[dict[str, Any]]) -> None:
        self._pending.put(events)

    def close(self) -> None:
        """Publish what is queued, then stop."""
        self._pending.put(None)
        self._thread.join()

    def _run(self) -> None:
        while (events := self._pending.get()) is not None:
            body = json.dumps({"TopicArn": self.topic_arn, "Messages": [json.dumps(event) for event in events]})
            request = urllib.request.Request(
                self.publish_url, data=body.encode(), headers={"Content-Type": "application/json"}
            )
            try:
                with urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310 (the local server's URL)
                    answer.read()
            except Exception as exc:  # the local stand-in must not stop the proxy
                print(
                    f"ses-event-publisher: {len(events)} events not published ({type(exc).__name__})", file=sys.stderr
                )
