"""A local SNS and SQS endpoint that stays fast at any queue depth: the part of both APIs the SES
event path uses, over real HTTP, for real boto3 clients.

Why not moto: moto 5's SQS walks every message of a queue, several times, on each call (a receive
took 2.5 s at 2,000 waiting messages, a PublishBatch 0.9 s at 1,500), and a bulk mailing's events
are thousands. Here every call is O(messages it touches).

Protocols, as boto3 speaks them: SQS is JSON 1.0 (`X-Amz-Target: AmazonSQS.<Action>`), SNS is the
query protocol (a form with `Action=`, answered in XML). Any other action is refused with
`InvalidAction`, so a new call in the pipeline fails loudly here instead of half-working.
One path is the local stack's own: `POST /local/publish` with `{"TopicArn", "Messages": [...]}`
publishes each message as a Publish would, for the local SES endpoint's events (SES publishes
inside AWS; through boto3, ten a call, they cost the machine half a millisecond of CPU each).

Invariants (standard queues, at-least-once):
- a message is either ready (in `ready`) or in flight (in `in_flight` under its current receipt
  handle, with a `visible_at` deadline in `deadlines`); deleting it removes it from both;
- every receive gives a message a fresh receipt handle; a delete with an older handle succeeds and
  deletes nothing (as SQS: "the message might not be deleted"), so the last receiver owns it;
- an in-flight message past its visibility timeout is ready again at the next call on its queue;
- a Publish delivers to every subscribed queue before it answers: published means receivable;
- credentials and queue policies are accepted and stored, never enforced (a local stack).
"""

from __future__ import annotations

import hashlib
import heapq
import json
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs
from xml.sax.saxutils import escape

ACCOUNT = "123456789012"
REGION = "eu-west-2"
DEFAULT_VISIBILITY_TIMEOUT = 30
MAX_WAIT_SECONDS = 20
SNS_XMLNS = "http://sns.amazonaws.com/doc/2010-03-31/"
LOCAL_PUBLISH_PATH = "/local/publish"


class ApiError(Exception):
    """An error answered to the client: `code` as AWS names it, and the HTTP status."""

    def __init__(self, code: str, message: str, status: int = 400, query_code: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.status = code, message, status
        self.query_code = query_code or code  # SQS's legacy code, which boto3 reports as the error code


def _md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()  # noqa: S324 (SQS's body checksum, not security)


@dataclass
class Message:
    message_id: str
    body: str
    sent_at: float
    receive_count: int = 0


@dataclass
class Queue:
    name: str
    arn: str
    attributes: dict[str, str] = field(default_factory=dict)
    ready: deque[Message] = field(default_factory=deque)
    in_flight: dict[str, tuple[Message, float]] = field(default_factory=dict)  # receipt handle -> (message, visible_at)
    deadlines: list[tuple[float, str]] = field(default_factory=list)  # a heap of (visible_at, receipt handle)

    @property
    def visibility_timeout(self) -> float:
        return float(self.attributes.get("VisibilityTimeout", DEFAULT_VISIBILITY_TIMEOUT))

    def release_due(self, now: float) -> None:
        """Make in-flight messages past their visibility timeout ready again."""
        while self.deadlines and self.deadlines[0][0] <= now:
            _, handle = heapq.heappop(self.deadlines)
            entry = self.in_flight.pop(handle, None)
            if entry is not None:
                self.ready.append(entry[0])

    def take(self, count: int, visibility_timeout: float, now: float) -> list[tuple[Message, str]]:
        taken: list[tuple[Message, str]] = []
        while self.ready and len(taken) < count:
            message = self.ready.popleft()
            message.receive_count += 1
            handle = f"{message.message_id}#{uuid.uuid4().hex}"
            self.in_flight[handle] = (message, now + visibility_timeout)
            heapq.heappush(self.deadlines, (now + visibility_timeout, handle))
            taken.append((message, handle))
        return taken

    def delete(self, handle: str) -> None:
        if "#" not in handle:
            raise ApiError("ReceiptHandleIsInvalid", f"the receipt handle {handle!r} is not valid")
        self.in_flight.pop(handle, None)  # its deadline entry is dropped when it comes due

    def purge(self) -> None:
        self.ready.clear()
        self.in_flight.clear()
        self.deadlines.clear()


@dataclass
class Subscription:
    arn: str
    topic_arn: str
    queue_arn: str
    raw: bool


class SnsSqsState:
    """Topics, subscriptions and queues, behind one lock; receivers wait on its condition."""

    def __init__(self, region: str = REGION) -> None:
        self.region = region
        self.changed = threading.Condition()
        self.topics: dict[str, list[Subscription]] = {}  # topic arn -> its subscriptions
        self.queues: dict[str, Queue] = {}  # name -> queue

    def queue_named(self, name: str) -> Queue:
        queue = self.queues.get(name)
        if queue is None:
            raise ApiError(
                "QueueDoesNotExist",
                f"the queue {name!r} does not exist",
                query_code="AWS.SimpleQueueService.NonExistentQueue",
            )
        return queue

    def queue_at(self, queue_url: str) -> Queue:
        return self.queue_named(queue_url.rstrip("/").rsplit("/", 1)[-1])

    def enqueue(self, queue: Queue, body: str) -> Message:
        message = Message(str(uuid.uuid4()), body, time.time())
        queue.ready.append(message)
        self.changed.notify_all()
        return message

    def topic(self, topic_arn: str) -> list[Subscription]:
        if topic_arn not in self.topics:
            raise ApiError("NotFound", "Topic does not exist", status=404)
        return self.topics[topic_arn]

    def publish(self, topic_arn: str, message: str, subject: str | None) -> str:
        subscriptions = self.topic(topic_arn)
        message_id = str(uuid.uuid4())
        for subscription in subscriptions:
            queue = self.queues.get(subscription.queue_arn.rsplit(":", 1)[-1])
            if queue is not None:
                body = message if subscription.raw else _envelope(message_id, topic_arn, message, subject, self.region)
                self.enqueue(queue, body)
        return message_id


def _envelope(message_id: str, topic_arn: str, message: str, subject: str | None, region: str) -> str:
    """The SQS body SNS delivers with raw message delivery off (signature fields are placeholders)."""
    host = f"https://sns.{region}.amazonaws.com"
    envelope = {
        "Type": "Notification",
        "MessageId": message_id,
        "TopicArn": topic_arn,
        **({"Subject": subject} if subject else {}),
        "Message": message,
        "Timestamp": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "SignatureVersion": "1",
        "Signature": "local-unsigned",
        "SigningCertURL": f"{host}/SimpleNotificationService-local.pem",
        "UnsubscribeURL": f"{host}/?Action=Unsubscribe",
    }
    return json.dumps(envelope)


class SqsApi:
    """SQS's JSON actions on the shared state; each returns the answer's JSON object."""

    def __init__(self, state: SnsSqsState) -> None:
        self.state = state

    def call(self, action: str, request: dict[str, Any], host: str) -> dict[str, Any]:
        handler = getattr(self, f"_{action}", None)
        if handler is None:
            raise ApiError("InvalidAction", f"the local SQS does not serve {action}")
        if action == "ReceiveMessage":
            return self._ReceiveMessage(request)  # waits outside the lock's hold (on its condition)
        with self.state.changed:
            return handler(request, host) if action in ("CreateQueue", "GetQueueUrl") else handler(request)

    def _CreateQueue(self, request: dict[str, Any], host: str) -> dict[str, Any]:
        name = request["QueueName"]
        if name not in self.state.queues:
            arn = f"arn:aws:sqs:{self.state.region}:{ACCOUNT}:{name}"
            self.state.queues[name] = Queue(name, arn, dict(request.get("Attributes", {})))
        return {"QueueUrl": f"http://{host}/{ACCOUNT}/{name}"}

    def _GetQueueUrl(self, request: dict[str, Any], host: str) -> dict[str, Any]:
        self.state.queue_named(request["QueueName"])
        return {"QueueUrl": f"http://{host}/{ACCOUNT}/{request['QueueName']}"}

    def _GetQueueAttributes(self, request: dict[str, Any]) -> dict[str, Any]:
        queue = self.state.queue_at(request["QueueUrl"])
        queue.release_due(time.time())
        attributes = {
            "QueueArn": queue.arn,
            "VisibilityTimeout": str(int(queue.visibility_timeout)),
            "ApproximateNumberOfMessages": str(len(queue.ready)),
            "ApproximateNumberOfMessagesNotVisible": str(len(queue.in_flight)),
            "ApproximateNumberOfMessagesDelayed": "0",
            **queue.attributes,
        }
        names = request.get("AttributeNames", ["All"])
        return {"Attributes": attributes if "All" in names else {n: attributes[n] for n in names if n in attributes}}

    def _SetQueueAttributes(self, request: dict[str, Any]) -> dict[str, Any]:
        self.state.queue_at(request["QueueUrl"]).attributes.update(request["Attributes"])
        return {}

    def _SendMessage(self, request: dict[str, Any]) -> dict[str, Any]:
        if int(request.get("DelaySeconds", 0)):
            raise ApiError("InvalidParameterValue", "the local SQS does not delay messages (DelaySeconds)")
        body = request["MessageBody"]
        message = self.state.enqueue(self.state.queue_at(request["QueueUrl"]), body)
        return {"MessageId": message.message_id, "MD5OfMessageBody": _md5(body)}

    def _ReceiveMessage(self, request: dict[str, Any]) -> dict[str, Any]:
        count = int(request.get("MaxNumberOfMessages", 1))
        if not 1 <= count <= 10:
            raise ApiError("InvalidParameterValue", "MaxNumberOfMessages must be between 1 and 10")
        wait = min(float(request.get("WaitTimeSeconds", 0)), MAX_WAIT_SECONDS)
        deadline = time.time() + wait
        with self.state.changed:
            queue = self.state.queue_at(request["QueueUrl"])
            timeout = float(request.get("VisibilityTimeout", queue.visibility_timeout))
            while True:
                now = time.time()
                queue.release_due(now)
                if queue.ready or now >= deadline:
                    break
                next_due = queue.deadlines[0][0] if queue.deadlines else deadline
                self.state.changed.wait(max(0.0, min(deadline, next_due) - now))
            taken = queue.take(count, timeout, time.time())
        return {"Messages": [_received(message, handle) for message, handle in taken]} if taken else {}

    def _DeleteMessage(self, request: dict[str, Any]) -> dict[str, Any]:
        self.state.queue_at(request["QueueUrl"]).delete(request["ReceiptHandle"])
        return {}

    def _DeleteMessageBatch(self, request: dict[str, Any]) -> dict[str, Any]:
        queue = self.state.queue_at(request["QueueUrl"])
        successful, failed = [], []
        for entry in request["Entries"]:
            try:
                queue.delete(entry["ReceiptHandle"])
                successful.append({"Id": entry["Id"]})
            except ApiError as error:
                failed.append({"Id": entry["Id"], "SenderFault": True, "Code": error.code, "Message": error.message})
        return {"Successful": successful, "Failed": failed}

    def _PurgeQueue(self, request: dict[str, Any]) -> dict[str, Any]:
        self.state.queue_at(request["QueueUrl"]).purge()
        return {}


def _received(message: Message, handle: str) -> dict[str, Any]:
    return {
        "MessageId": message.message_id,
        "ReceiptHandle": handle,
        "MD5OfBody": _md5(message.body),
        "Body": message.body,
        "Attributes": {
            "ApproximateReceiveCount": str(message.receive_count),
            "SentTimestamp": str(int(message.sent_at * 1000)),
        },
    }


class SnsApi:
    """SNS's query actions on the shared state; each returns its result element's inner XML."""

    def __init__(self, state: SnsSqsState) -> None:
        self.state = state

    def call(self, action: str, form: dict[str, str]) -> str:
        handler = getattr(self, f"_{action}", None)
        if handler is None:
            raise ApiError("InvalidAction", f"the local SNS does not serve {action}")
        with self.state.changed:
            return handler(form)

    def publish_all(self, topic_arn: str, messages: list[str]) -> list[str]:
        """`LOCAL_PUBLISH_PATH`: each message published as by Publish; their message ids."""
        with self.state.changed:
            return [self.state.publish(topic_arn, message, None) for message in messages]

    def _CreateTopic(self, form: dict[str, str]) -> str:
        topic_arn = f"arn:aws:sns:{self.state.region}:{ACCOUNT}:{form['Name']}"
        self.state.topics.setdefault(topic_arn, [])
        return f"<TopicArn>{escape(topic_arn)}</TopicArn>"

    def _Subscribe(self, form: dict[str, str]) -> str:
        if form.get("Protocol") != "sqs":
            raise ApiError("InvalidParameter", "the local SNS delivers to SQS queues only (Protocol=sqs)")
        topic_arn, queue_arn = form["TopicArn"], form["Endpoint"]
        subscriptions = self.state.topic(topic_arn)
        raw = _entries(form, "Attributes").get("RawMessageDelivery", "false") == "true"
        existing = next((s for s in subscriptions if s.queue_arn == queue_arn), None)
        if existing is None:
            existing = Subscription(f"{topic_arn}:{uuid.uuid4()}", topic_arn, queue_arn, raw)
            subscriptions.append(existing)
        return f"<SubscriptionArn>{escape(existing.arn)}</SubscriptionArn>"

    def _ListSubscriptionsByTopic(self, form: dict[str, str]) -> str:
        members = "".join(
            f"<member><TopicArn>{escape(s.topic_arn)}</TopicArn><Protocol>sqs</Protocol>"
            f"<SubscriptionArn>{escape(s.arn)}</SubscriptionArn><Owner>{ACCOUNT}</Owner>"
            f"<Endpoint>{escape(s.queue_arn)}</Endpoint></member>"
            for s in self.state.topic(form["TopicArn"])
        )
        return f"<Subscriptions>{members}</Subscriptions>"

    def _GetSubscriptionAttributes(self, form: dict[str, str]) -> str:
        arn = form["SubscriptionArn"]
        subscription = next((s for subs in self.state.topics.values() for s in subs if s.arn == arn), None)
        if subscription is None:
            raise ApiError("NotFound", "Subscription does not exist", status=404)
        attributes = {
            "SubscriptionArn": subscription.arn,
            "TopicArn": subscription.topic_arn,
            "Protocol": "sqs",
            "Endpoint": subscription.queue_arn,
            "RawMessageDelivery": str(subscription.raw).lower(),
        }
        entries = "".join(
            f"<entry><key>{key}</key><value>{escape(value)}</value></entry>" for key, value in attributes.items()
        )
        return f"<Attributes>{entries}</Attributes>"

    def _Publish(self, form: dict[str, str]) -> str:
        message_id = self.state.publish(form["TopicArn"], form["Message"], form.get("Subject"))
        return f"<MessageId>{message_id}</MessageId>"

    def _PublishBatch(self, form: dict[str, str]) -> str:
        topic_arn = form["TopicArn"]
        members = []
        for entry in _members(form, "PublishBatchRequestEntries"):
            message_id = self.state.publish(topic_arn, entry["Message"], entry.get("Subject"))
            members.append(f"<member><Id>{escape(entry['Id'])}</Id><MessageId>{message_id}</MessageId></member>")
        return f"<Successful>{''.join(members)}</Successful><Failed/>"


def _members(form: dict[str, str], name: str) -> list[dict[str, str]]:
    """The list `name.member.N.field` of a query-protocol form, in order."""
    prefix = f"{name}.member."
    members: dict[int, dict[str, str]] = {}
    for key, value in form.items():
        if key.startswith(prefix):
            index, _, field_name = key[len(prefix) :].partition(".")
            members.setdefault(int(index), {})[field_name] = value
    return [members[index] for index in sorted(members)]


def _entries(form: dict[str, str], name: str) -> dict[str, str]:
    """The map `name.entry.N.key` / `name.entry.N.value` of a query-protocol form."""
    pairs = {}
    for entry in _members({k.replace(".entry.", ".member.", 1): v for k, v in form.items()}, name):
        pairs[entry["key"]] = entry.get("value", "")
    return pairs


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: boto3 reuses its connections
    disable_nagle_algorithm = True  # headers and body go out in two writes: without it each call waits 40 ms
    server: _Server

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
        target = self.headers.get("X-Amz-Target", "")
        if self.path == LOCAL_PUBLISH_PATH:
            self._answer_local_publish(body)
        elif target.startswith("AmazonSQS."):
            self._answer_sqs(target.removeprefix("AmazonSQS."), body)
        else:
            self._answer_sns(body)

    def _answer_sqs(self, action: str, body: str) -> None:
        try:
            answer = self.server.sqs.call(action, json.loads(body or "{}"), self.headers.get("Host", ""))
            self._send(200, json.dumps(answer), "application/x-amz-json-1.0")
        except ApiError as error:
            payload = json.dumps({"__type": f"com.amazonaws.sqs#{error.code}", "message": error.message})
            headers = {"x-amzn-query-error": f"{error.query_code};Sender"}
            self._send(error.status, payload, "application/x-amz-json-1.0", headers)

    def _answer_local_publish(self, body: str) -> None:
        try:
            request = json.loads(body)
            message_ids = self.server.sns.publish_all(request["TopicArn"], list(request["Messages"]))
            self._send(200, json.dumps({"MessageIds": message_ids}), "application/json")
        except ApiError as error:
            self._send(error.status, json.dumps({"code": error.code, "message": error.message}), "application/json")
        except (KeyError, TypeError, ValueError) as error:
            self._send(400, json.dumps({"code": "InvalidParameter", "message": str(error)}), "application/json")

    def _answer_sns(self, body: str) -> None:
        form = {key: values[0] for key, values in parse_qs(body, keep_blank_values=True).items()}
        action, request_id = form.get("Action", ""), str(uuid.uuid4())
        try:
            result = self.server.sns.call(action, form)
            xml = (
                f'<{action}Response xmlns="{SNS_XMLNS}"><{action}Result>{result}</{action}Result>'
                f"<ResponseMetadata><RequestId>{request_id}</RequestId></ResponseMetadata></{action}Response>"
            )
            self._send(200, xml, "text/xml")
        except ApiError as error:
            xml = (
                f'<ErrorResponse xmlns="{SNS_XMLNS}"><Error><Type>Sender</Type><Code>{error.code}</Code>'
                f"<Message>{escape(error.message)}</Message></Error><RequestId>{request_id}</RequestId></ErrorResponse>"
            )
            self._send(error.status, xml, "text/xml")

    def _send(self, status: int, text: str, content_type: str, headers: dict[str, str] | None = None) -> None:
        payload = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
        """Quiet: a bulk mailing makes thousands of calls; errors reach the client, not the log."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], state: SnsSqsState) -> None:
        super().__init__(address, _Handler)
        self.sqs, self.sns = SqsApi(state), SnsApi(state)


def serve(host: str, port: int, region: str = REGION) -> _Server:
    """The server, bound and not yet serving (call `serve_forever`)."""
    return _Server((host, port), SnsSqsState(region))


def main() -> None:
    """Serve SNS and SQS on --host:--port in the foreground until SIGTERM or Ctrl-C."""
    import argparse
    import signal

    parser = argparse.ArgumentParser(description="The local SNS and SQS endpoint.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8007)
    parser.add_argument("--region", default=REGION)
    args = parser.parse_args()
    server = serve(args.host, args.port, args.region)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    print(f"local SNS and SQS on http://{args.host}:{args.port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
