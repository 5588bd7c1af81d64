"""The SES events a call to the local SES endpoint produces, and their publisher to SNS.

For each entry SES accepted, a `Send` event with the tags SES would put in `mail.tags` (what a
configuration-set event destination delivers, for reconciliation); for SES's mailbox simulator
addresses (bounce@simulator.amazonses.com, complaint@simulator.amazonses.com, labels allowed) a
permanent `Bounce` or a `Complaint` as well. `SnsEventPublisher` publishes them to an SNS topic as a
configuration set's SNS event destination does.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import queue
import sys
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any

SIMULATOR_DOMAIN = "simulator.amazonses.com"
SNS_MAX_BATCH = 10


@dataclass(frozen=True)
class RecordedCall:
    request: dict[str, Any]
    fault: str | None
    results: list[dict[str, Any]]  # per entry, as SES decided; [] when the whole call was refused
    answered: bool = True  # False: accepted, but the answer was dropped on purpose
    timestamp: str = field(default_factory=lambda: ses_timestamp(dt.datetime.now(dt.UTC)))


def ses_timestamp(moment: dt.datetime) -> str:
    """SES's event time format, e.g. 2025-01-06T09:00:00.123Z."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def ses_events(call: RecordedCall) -> list[dict[str, Any]]:
    """Send events for the entries SES accepted, then the mailbox simulator's bounces and complaints."""
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
        feedback.extend(_simulated_feedback(mail, address) for address in destination if _simulator_box(address))
    return sends + feedback


def _simulator_box(address: str) -> str | None:
    """`bounce` or `complaint` for SES's mailbox simulator addresses (labels allowed: bounce+x@...)."""
    local, _, domain = address.strip().lower().rpartition("@")
    box = local.split("+")[0]
    return box if domain == SIMULATOR_DOMAIN and box in ("bounce", "complaint") else None


def _simulated_feedback(mail: dict[str, Any], address: str) -> dict[str, Any]:
    feedback_id = str(uuid.uuid5(uuid.NAMESPACE_OID, mail["messageId"]))  # the same each time events() is read
    if _simulator_box(address) == "bounce":
        recipient = {
            "emailAddress": address,
            "action": "failed",
            "status": "5.1.1",
            "diagnosticCode": "smtp; 550 5.1.1 user unknown",
        }
        bounce = {
            "bounceType": "Permanent",
            "bounceSubType": "General",
            "bouncedRecipients": [recipient],
            "timestamp": mail["timestamp"],
            "feedbackId": feedback_id,
        }
        return {"eventType": "Bounce", "bounce": bounce, "mail": mail}
    complaint = {
        "complainedRecipients": [{"emailAddress": address}],
        "complaintFeedbackType": "abuse",
        "timestamp": mail["timestamp"],
        "feedbackId": feedback_id,
    }
    return {"eventType": "Complaint", "complaint": complaint, "mail": mail}


class SnsEventPublisher:
    """Publishes SES events to an SNS topic from a thread of its own (SES, too, publishes after
    answering), ten per PublishBatch call. A failed publish is reported on stderr and dropped."""

    def __init__(self, sns_client: Any, topic_arn: str) -> None:
        self.sns = sns_client
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
            for start in range(0, len(events), SNS_MAX_BATCH):
                chunk = events[start : start + SNS_MAX_BATCH]
                entries = [{"Id": str(index), "Message": json.dumps(event)} for index, event in enumerate(chunk)]
                try:
                    self.sns.publish_batch(TopicArn=self.topic_arn, PublishBatchRequestEntries=entries)
                except Exception as exc:  # the local stand-in must not stop the proxy
                    print(
                        f"ses-event-publisher: {len(entries)} events not published ({type(exc).__name__})",
                        file=sys.stderr,
                    )
