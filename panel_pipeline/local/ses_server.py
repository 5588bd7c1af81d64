"""The local SES v2 endpoint: aws-ses-v2-local (npm, pinned in templates/package.json) in a subprocess.

It speaks the real SES v2 REST JSON that boto3 sends: stored templates (Create/Get/Update), bulk
templated sending with per-recipient `ReplacementHeaders`, and GetAccount (from the account JSON
passed in `AWS_SES_ACCOUNT`). It renders with Handlebars without escaping, like SES, and keeps
every message in memory: `emails()` reads them back (`GET /store`), and a person sees them in a
browser at `url` (its web UI polls the same store). What it lacks (fault answers, tags, the
50-entry limit) is added by `panel_pipeline.local.ses_proxy` in front of it.

Install once: `cd templates && npm ci` (the binary is templates/node_modules/.bin/aws-ses-v2-local).
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from panel_pipeline.local.child_process import ChildProcessServer

START_TIMEOUT_SECONDS = 20.0


class SesServerError(RuntimeError):
    """The local SES server could not be found or started; the message says what to do."""


def default_binary() -> Path:
    return Path(__file__).resolve().parents[2] / "templates" / "node_modules" / ".bin" / "aws-ses-v2-local"


def account_document(max_send_rate: float, max_24_hour_send: float, sent_last_24_hours: float = 0) -> dict[str, Any]:
    """A GetAccount answer; aws-ses-v2-local needs every one of these fields or answers 400."""
    return {
        "DedicatedIpAutoWarmupEnabled": False,
        "Details": {
            "AdditionalContactEmailAddresses": [],
            "ContactLanguage": "EN",
            "MailType": "MARKETING",
            "ReviewDetails": {"CaseId": "local", "Status": "GRANTED"},
            "UseCaseDescription": "panel-pipeline local run",
            "WebsiteURL": "https://example.test",
        },
        "EnforcementStatus": "HEALTHY",
        "ProductionAccessEnabled": True,
        "SendingEnabled": True,
        "SendQuota": {
            "Max24HourSend": max_24_hour_send,
            "MaxSendRate": max_send_rate,
            "SentLast24Hours": sent_last_24_hours,
        },
        "SuppressionAttributes": {"SuppressedReasons": ["BOUNCE", "COMPLAINT"]},
    }


@dataclass
class LocalSesServer(ChildProcessServer):
    """Start/stop aws-ses-v2-local on `host:port`; safe to share between threads and fixtures."""

    port: int = 8005
    host: str = "127.0.0.1"
    max_send_rate: float = 14.0
    max_24_hour_send: float = 50_000.0
    strict_rendering: bool = True  # a missing variable fails the entry instead of rendering ""
    binary: Path | None = None
    log_path: Path | None = None

    log_name = "aws-ses-v2-local"

    def _spawn(self, log_file: IO[bytes]) -> subprocess.Popen[bytes]:
        binary = self.binary or default_binary()
        if not binary.exists():
            raise SesServerError(f"{binary} is missing; run `npm ci` in templates/ (Node 20)")
        env = {
            **os.environ,
            "AWS_SES_ACCOUNT": json.dumps(account_document(self.max_send_rate, self.max_24_hour_send)),
            "AWS_SES_STRICT_TEMPLATE_RENDERING": "true" if self.strict_rendering else "false",
        }
        return subprocess.Popen(
            [str(binary), "--host", self.host, "--port", str(self.port)],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    def _wait_ready(self, process: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise SesServerError(f"aws-ses-v2-local exited with code {process.returncode}")
            try:
                with urllib.request.urlopen(f"{self.url}/health-check", timeout=1):
                    return
            except (urllib.error.URLError, OSError):
                time.sleep(0.05)
        raise SesServerError(f"aws-ses-v2-local did not answer on {self.url} within {START_TIMEOUT_SECONDS}s")

    # --- inspection ---------------------------------------------------------------------------

    def emails(self, since_epoch_seconds: int | None = None) -> list[dict[str, Any]]:
        """Messages delivered so far: messageId, destination{to,cc,bcc}, subject, body{html,text}, headers, at."""
        query = "" if since_epoch_seconds is None else f"?since={int(since_epoch_seconds)}"
        return list(self._get_json(f"/store{query}")["emails"])

    def templates(self) -> dict[str, Any]:
        return dict(self._get_json("/store")["templates"])

    def clear(self) -> None:
        """Forget every message and every stored template."""
        request = urllib.request.Request(f"{self.url}/clear-store", method="POST", data=b"")
        with urllib.request.urlopen(request, timeout=10):
            pass

    def _get_json(self, path: str) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.url}{path}", timeout=30) as response:
            return json.loads(response.read())


def main() -> None:
    """Run the local SES endpoint in the foreground until SIGTERM or Ctrl-C (the local stack uses this).

    With `--sns-topic-arn` the fault proxy answers on `--port` in front of the emulator and publishes
    SES's events to that topic on `--sns-endpoint-url`, as a configuration set's event destination does,
    with the bounces, complaints, opens and clicks of `--feedback` (ses_events.FeedbackShares).
    """
    import argparse
    import signal

    from panel_pipeline.local.mongod import free_port
    from panel_pipeline.local.ses_events import FEEDBACK_SHARES_VARIABLE, FeedbackShares, SnsEventPublisher
    from panel_pipeline.local.ses_proxy import SesFaultProxy

    parser = argparse.ArgumentParser(description="The local SES v2 endpoint (aws-ses-v2-local).")
    parser.add_argument("--port", type=int, default=8005)
    parser.add_argument("--max-send-rate", type=float, default=200.0)
    parser.add_argument("--sns-topic-arn", help="Publish SES events to this SNS topic.")
    parser.add_argument("--sns-endpoint-url", default="http://127.0.0.1:8007", help="The local SNS endpoint.")
    parser.add_argument(
        "--feedback",
        default="",
        help=f"Shares of simulated feedback, e.g. bounce=0.02,transient=0.03,complaint=0.001,open=0.3,click=0.1 "
        f"(the stack passes {FEEDBACK_SHARES_VARIABLE}).",
    )
    args = parser.parse_args()
    try:
        feedback = FeedbackShares.parse(args.feedback)
    except ValueError as invalid:
        parser.error(str(invalid))
    publishing = args.sns_topic_arn is not None
    server = LocalSesServer(port=free_port() if publishing else args.port, max_send_rate=args.max_send_rate)
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    server.start()
    publisher = proxy = None
    if publishing:
        publisher = SnsEventPublisher(args.sns_endpoint_url, args.sns_topic_arn)
        proxy = SesFaultProxy(server.url, port=args.port, publish=publisher, feedback=feedback)
        proxy.start()
    print(f"local SES endpoint and sent-mail viewer on {proxy.url if proxy else server.url}", flush=True)
    try:
        stopped.wait()
    except KeyboardInterrupt:
        pass
    finally:
        if proxy is not None and publisher is not None:
            proxy.stop()
            publisher.close()
        server.stop()


if __name__ == "__main__":
    main()
