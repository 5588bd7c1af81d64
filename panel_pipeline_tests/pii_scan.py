"""Scan everything a Dagster instance kept of a run of the pipeline for personal data and secrets.

What is read: every file under DAGSTER_HOME as raw bytes (sqlite run and event-log storage, compute
logs, schedule and sensor storage, `dagster dev`'s captured stdout/stderr), and, through the instance
API, every run's tags and config and every event of every run with its asset metadata, so a value
that storage compresses or escapes is still seen. The needles are exact strings: each member's
e-mail address, each token and each secret the scenario used.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg

EMAIL_LIKE = re.compile(rb"[A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]+")
HEX_RUN = re.compile(rb"[0-9a-f]{16,}")


@dataclass(frozen=True)
class Needles:
    """What must not be found: e-mail addresses (matched whole, case-insensitive), hex tokens
    (matched as whole hex runs), and secrets (matched anywhere)."""

    emails: frozenset[str]
    tokens: frozenset[str]
    secrets: frozenset[str]

    def __len__(self) -> int:
        return len(self.emails) + len(self.tokens) + len(self.secrets)


@dataclass
class ScanReport:
    files_read: int = 0
    bytes_read: int = 0
    runs_read: int = 0
    events_read: int = 0
    needles: int = 0
    hits: list[str] = field(default_factory=list)  # "where: kind", never the value itself

    def summary(self) -> str:
        return (
            f"PII scan: {self.files_read} files ({self.bytes_read / 1e6:.1f} MB), {self.runs_read} runs, "
            f"{self.events_read} events read for {self.needles} needles; hits {len(self.hits)}"
        )


def scan_dagster_home(home: Path, instance: dg.DagsterInstance, needles: Needles) -> ScanReport:
    report = _scan_files(home, needles)
    for run in instance.get_runs():
        report.runs_read += 1
        text = json.dumps({"tags": dict(run.tags), "config": run.run_config}, default=str).encode()
        _find(needles, text, f"run {run.run_id[:8]} tags/config", report)
        for entry in instance.all_logs(run.run_id):
            report.events_read += 1
            _find(needles, _event_text(entry).encode(), f"run {run.run_id[:8]} event", report)
    return report


def _scan_files(home: Path, needles: Needles, attempts: int = 5) -> ScanReport:
    """Every file under `home`, read whole. The daemon is still running: SQLite may checkpoint a
    `-wal` (and drop its `-shm`) while the scan walks, moving what it held into the database file,
    so a file that vanishes mid-scan starts the scan again rather than being skipped."""
    for _ in range(attempts):
        report = ScanReport(needles=len(needles))
        try:
            for path in sorted(p for p in home.rglob("*") if p.is_file()):
                data = path.read_bytes()
                report.files_read += 1
                report.bytes_read += len(data)
                _find(needles, data, f"file {path.relative_to(home)}", report)
        except FileNotFoundError:
            continue
        return report
    raise RuntimeError(f"files under {home} kept vanishing during {attempts} scans")


def scan_texts(texts: Iterable[tuple[str, str]], needles: Needles) -> list[str]:
    """Hits in (where, text) pairs, e.g. the errors stored on queue documents."""
    report = ScanReport()
    for where, text in texts:
        _find(needles, text.encode(), where, report)
    return report.hits


def _event_text(entry: dg.EventLogEntry) -> str:
    parts: list[str] = [entry.user_message or ""]
    event = entry.dagster_event
    if event is not None:
        parts.append(event.message or "")
        materialization = getattr(event.event_specific_data, "materialization", None)
        if materialization is not None:
            parts.append(json.dumps({key: str(value) for key, value in materialization.metadata.items()}))
        parts.append(str(event.event_specific_data))
    return "\n".join(parts)


def _find(needles: Needles, haystack: bytes, where: str, report: ScanReport) -> None:
    emails = {match.decode(errors="replace").lower() for match in EMAIL_LIKE.findall(haystack)}
    if found := emails & needles.emails:
        report.hits.append(f"{where}: {len(found)} member e-mail address(es)")
    if found := {match.decode() for match in HEX_RUN.findall(haystack)} & needles.tokens:
        report.hits.append(f"{where}: {len(found)} token(s)")
    for secret in needles.secrets:
        if secret.encode() in haystack:
            report.hits.append(f"{where}: a secret")
