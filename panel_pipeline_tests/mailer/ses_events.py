"""SES events as SES's configuration-set event destination publishes them (shapes from the SES
developer guide, "Examples of event data that Amazon SES publishes to Amazon SNS")."""

from __future__ import annotations

import json
import uuid
from typing import Any

SENT_AT = "2026-11-23T09:00:00.123Z"
LATER = "2026-11-23T09:05:00.000Z"


def mail(message_id: str, address: str, tags: dict[str, str] | None) -> dict[str, Any]:
    document: dict[str, Any] = {
        "timestamp": SENT_AT,
        "source": "UK Panel <panel@example.org>",
        "sendingAccountId": "123456789012",
        "messageId": message_id,
        "destination": [address],
        "commonHeaders": {"from": ["UK Panel <panel@example.org>"], "to": [address], "subject": "A new survey"},
    }
    if tags is not None:
        document["tags"] = {
            "ses:configuration-set": ["panel-events"],
            **{name: [value] for name, value in tags.items()},
        }
    return document


BATCH = "6566a0000000000000000001"  # batch ids are ObjectIds, as the ledger makes them


def tags(mailing: Any, recipient: Any, batch: str = BATCH) -> dict[str, str]:
    return {"mailing": str(mailing), "batch": batch, "recipient": str(recipient)}


def bounce(
    address: str,
    tags: dict[str, str] | None,
    bounce_type: str = "Permanent",
    message_id: str | None = None,
    key: str = "eventType",
) -> dict[str, Any]:
    sub_type = "General" if bounce_type == "Permanent" else "MailboxFull"
    return {
        key: "Bounce",
        "bounce": {
            "bounceType": bounce_type,
            "bounceSubType": sub_type,
            "bouncedRecipients": [
                {
                    "emailAddress": address,
                    "action": "failed",
                    "status": "5.1.1",
                    "diagnosticCode": f"smtp; 550 5.1.1 <{address}>: Recipient address rejected",
                }
            ],
            "timestamp": LATER,
            "feedbackId": str(uuid.uuid4()),
            "reportingMTA": "dsn; mx.example.net",
        },
        "mail": mail(message_id or new_message_id(), address, tags),
    }


def complaint(
    address: str, tags: dict[str, str] | None, message_id: str | None = None, key: str = "eventType"
) -> dict[str, Any]:
    return {
        key: "Complaint",
        "complaint": {
            "complainedRecipients": [{"emailAddress": address}],
            "timestamp": LATER,
            "feedbackId": str(uuid.uuid4()),
            "userAgent": "Mozilla/5.0",
            "complaintFeedbackType": "abuse",
            "arrivalDate": LATER,
        },
        "mail": mail(message_id or new_message_id(), address, tags),
    }


def event(event_type: str, address: str, tags: dict[str, str] | None, message_id: str | None = None) -> dict[str, Any]:
    """Send, Delivery, Reject, Rendering Failure: the event with its type's own part where it has one."""
    document: dict[str, Any] = {"eventType": event_type, "mail": mail(message_id or new_message_id(), address, tags)}
    if event_type == "Reject":
        document["reject"] = {"reason": "Bad content"}
    if event_type == "Rendering Failure":
        document["failure"] = {
            "templateName": "panel-new_survey",
            "errorMessage": "Attribute 'points' is not present in the rendering data.",
        }
    if event_type == "Delivery":
        document["delivery"] = {
            "timestamp": LATER,
            "recipients": [address],
            "smtpResponse": "250 2.6.0 Message received",
        }
    return document


def sns_envelope(event: dict[str, Any], topic_arn: str = "arn:aws:sns:eu-west-2:123456789012:panel-ses-events") -> str:
    """An SQS body as SNS delivers it with raw message delivery off."""
    return json.dumps(
        {
            "Type": "Notification",
            "MessageId": str(uuid.uuid4()),
            "TopicArn": topic_arn,
            "Message": json.dumps(event),
            "Timestamp": LATER,
            "SignatureVersion": "1",
            "Signature": "EXAMPLE",
            "SigningCertURL": "https://sns.eu-west-2.amazonaws.com/SimpleNotificationService-x.pem",
            "UnsubscribeURL": "https://sns.eu-west-2.amazonaws.com/?Action=Unsubscribe",
        }
    )


def new_message_id() -> str:
    return f"0102{uuid.uuid4().hex}-000000"
