"""Extractor: 100,000 responses from the local SurveyGizmo server into `sg_responses` and
`users.profile` through the assets themselves (one backfill run over the whole date range), then the
same with 5% of API calls failing with 429/5xx; and our raw write path against a plain `insert_many`.

The local server runs in its own process (as SurveyGizmo would), so it does not share the
pipeline's interpreter. The client's rate limit is lifted to measure our own throughput; the
account's real limit of 240 calls a minute is printed as what it implies for the same calls.
"""

import contextlib
import datetime as dt
import hashlib
import json
import math
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from zoneinfo import ZoneInfo

import dagster as dg
import pymongo

from benchmarks._mongo import throwaway_mongod
from panel_pipeline.extractor.assets import day_of, surveygizmo_responses, users
from panel_pipeline.extractor.resources import SurveyGizmoResource
from panel_pipeline.extractor.responses import parse_response
from panel_pipeline.extractor.store import RAW, raw_document, raw_id, upsert_raw
from panel_pipeline.local.demo import demo_user
from panel_pipeline.local.mongod import free_port
from panel_pipeline.local.profile_survey import PROFILE_SURVEY_ID
from panel_pipeline.local.surveygizmo.server import DEMO_TOKEN, DEMO_TOKEN_SECRET
from panel_pipeline.shared.clock import utc_now
from panel_pipeline.shared.resources import MongoResource

RESPONSES = 100_000
FIRST_DAY = dt.date(2026, 3, 1)
DAYS = 20
ACCOUNT_ZONE = ZoneInfo("America/New_York")
FAULT_RATE = 0.05
WRITE_REPEATS = 3
PAGE_SIZE = 500
DEFAULT_CALLS_PER_MINUTE = 240


@dataclass(frozen=True)
class WriteFigures:
    ours: float
    plain: float
    again: float
    building: float  # our documents built (record copied, day, SHA-1), no Mongo


@dataclass(frozen=True)
class Extraction:
    raw_seconds: float
    users_seconds: float
    api_calls: int
    retry_wait_seconds: float
    responses: int
    applied: int
    fingerprint: str

    @property
    def seconds(self) -> float:
        return self.raw_seconds + self.users_seconds


def main() -> None:
    with throwaway_mongod() as (client, uri):
        with local_surveygizmo(fault_rate=0.0) as base_url:
            clean = extract(client, uri, "clean", base_url)
        with local_surveygizmo(fault_rate=FAULT_RATE) as base_url:
            faulty = extract(client, uri, "faulty", base_url)
        writes = write_throughput(client)

    floor = math.ceil(RESPONSES / PAGE_SIZE)
    print(f"\nextract {RESPONSES:,} responses, rate limit lifted (clean run)")
    print(f"  raw (surveygizmo_responses): {clean.raw_seconds:6.1f} s  {clean.responses / clean.raw_seconds:8,.0f} responses/s")
    print(f"  users (profiles):            {clean.users_seconds:6.1f} s  {clean.applied / clean.users_seconds:8,.0f} responses/s")
    print(f"  total:                       {clean.seconds:6.1f} s  {RESPONSES / clean.seconds:8,.0f} responses/s")
    print(f"  API calls: {clean.api_calls} (floor ceil(N/{PAGE_SIZE}) = {floor}; + {clean.api_calls - floor})")
    print(f"  at the account's {DEFAULT_CALLS_PER_MINUTE} calls/min those calls alone take {clean.api_calls / (DEFAULT_CALLS_PER_MINUTE / 60):.0f} s")
    print(f"\nraw writes, {RESPONSES:,} documents into an empty collection (median of {WRITE_REPEATS})")
    print(f"  upsert_raw:             {writes.ours:8,.0f} docs/s")
    print(f"  plain insert_many:      {writes.plain:8,.0f} docs/s")
    print(f"  ratio ours / insert_many: {writes.ours / writes.plain:.2f}")
    mongo_only = 1 / (1 / writes.ours - 1 / writes.building)
    print(f"  of ours, building the documents (SHA-1 included) alone runs at {writes.building:,.0f} docs/s;")
    print(f"  without it, {mongo_only:,.0f} docs/s: ratio {mongo_only / writes.plain:.2f} (the existence check and the quarantine clean-up)")
    print(f"  upsert_raw of the same again (a re-run: all unchanged): {writes.again:8,.0f} docs/s")
    retry = SurveyGizmoResource.model_fields["retry_base_delay_seconds"].default
    print(f"\nwith {FAULT_RATE:.0%} of calls failing (429/500/502/503), the production retry policy ({retry} s base, {retry * 7.5} s after a 429, equal jitter)")
    print(f"  API calls: {faulty.api_calls} (clean {clean.api_calls}: the difference is the retried faults)")
    print(f"  total: {faulty.seconds:.1f} s (raw {faulty.raw_seconds:.1f}, users {faulty.users_seconds:.1f}), of which backing off {faulty.retry_wait_seconds:.1f} s")
    print(f"  slow-down ratio faulty / clean: {faulty.seconds / clean.seconds:.2f}; without the back-off waits: {(faulty.seconds - faulty.retry_wait_seconds) / clean.seconds:.2f}")
    identical = faulty.fingerprint == clean.fingerprint
    print(f"  data identical to the clean run: {'yes' if identical else 'NO'} ({clean.fingerprint[:16]})")
    if not identical:
        raise SystemExit("the faulty run's data differ from the clean run's")


@contextlib.contextmanager
def local_surveygizmo(fault_rate: float) -> Iterator[str]:
    """The local server with the benchmark's responses, in its own process; yields its base URL."""
    end = dt.datetime.combine(FIRST_DAY + dt.timedelta(days=DAYS), dt.time())
    print(f"starting the local server with {RESPONSES:,} responses over {DAYS} days (faults {fault_rate:.0%}) ...", flush=True)
    with surveygizmo_process(RESPONSES, DAYS, end, fault_rate) as base_url:
        yield base_url


@contextlib.contextmanager
def surveygizmo_process(responses: int, days: int, end: dt.datetime, fault_rate: float = 0.0) -> Iterator[str]:
    """The local SurveyGizmo server's demo survey with `responses` over the `days` before `end` (naive,
    in the account's zone), in a process of its own; yields its base URL."""
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable, "-m", "panel_pipeline.local.surveygizmo", "--port", str(port), "--demo",
            "--members", str(responses), "--days", str(days), "--end", end.isoformat(),
            "--seed", "3", "--fault-rate", str(fault_rate), "--time-zone", ACCOUNT_ZONE.key,
        ],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        server.stdout.readline()  # printed once it listens
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait()


def extract(client: pymongo.MongoClient, uri: str, database: str, base_url: str) -> Extraction:
    db = client[database]
    now = utc_now()
    db.users.insert_many([demo_user(number, now) for number in range(1, RESPONSES + 1)])
    resources = {
        "mongo": MongoResource(uri=uri, database=database),
        "surveygizmo": SurveyGizmoResource(
            api_token=DEMO_TOKEN, api_token_secret=DEMO_TOKEN_SECRET, base_url=base_url,
            account_time_zone=ACCOUNT_ZONE.key, profile_survey_ids=PROFILE_SURVEY_ID,
            calls_per_minute=1e9,
        ),
    }
    last_day = FIRST_DAY + dt.timedelta(days=DAYS - 1)
    tags = {"dagster/asset_partition_range_start": FIRST_DAY.isoformat(), "dagster/asset_partition_range_end": last_day.isoformat()}
    print(f"[{database}] extracting {FIRST_DAY} .. {last_day} as one backfill run ...", flush=True)
    with dg.instance_for_test() as instance:
        raw_seconds, raw = timed_materialization(surveygizmo_responses, instance, resources, tags)
        users_seconds, profiles = timed_materialization(users, instance, resources, tags)
    return Extraction(
        raw_seconds, users_seconds, int(raw["api_calls"]), float(raw["retry_wait_seconds"]), int(raw["responses"]), int(profiles["responses_applied"]), fingerprint(db)
    )


def timed_materialization(asset: dg.AssetsDefinition, instance: dg.DagsterInstance, resources: dict, tags: dict) -> tuple[float, dict]:
    start = time.perf_counter()
    result = dg.materialize([asset], instance=instance, resources=resources, tags=tags)
    seconds = time.perf_counter() - start
    materialization = result.asset_materializations_for_node(asset.op.name)[0]  # one per day, the same metadata
    return seconds, {key: value.value for key, value in materialization.metadata.items()}


def fingerprint(db: pymongo.database.Database) -> str:
    """A hash of the raw responses and the profiles, without the times the runs wrote them."""
    digest = hashlib.sha256()
    for doc in db[RAW].find({}, {"fetched_at": 0}).sort("_id"):
        digest.update(json.dumps(doc, sort_keys=True, default=str).encode())
    for doc in db.users.find({}, {"profile": 1, "profile_sources": 1}).sort("_id"):
        digest.update(json.dumps(doc, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def write_throughput(client: pymongo.MongoClient) -> WriteFigures:
    """Documents per second into empty collections, `upsert_raw` and a plain `insert_many` of the
    same documents taking turns (median of three each), then `upsert_raw` of the same again."""
    source = client["clean"][RAW]
    responses = [parse_response(doc["record"], doc["survey_id"], ACCOUNT_ZONE) for doc in source.find({}, {"record": 1, "survey_id": 1})]
    now = utc_now()
    documents = [{"_id": raw_id(r.survey_id, r.id), **raw_document(r, day_of(r.submitted_at), now)} for r in responses]
    ours, plain = [], []
    for attempt in range(WRITE_REPEATS):
        plain_collection, our_db = client[f"plain_{attempt}"][RAW], client[f"ours_{attempt}"]
        plain.append(rate(len(documents), lambda: plain_collection.insert_many(documents, ordered=False)))  # noqa: B023 - called at once
        ours.append(rate(len(responses), lambda: upsert_raw(our_db, responses, day_of, now)))  # noqa: B023
    again = rate(len(responses), lambda: upsert_raw(client["ours_0"], responses, day_of, now))
    building = rate(len(responses), lambda: [raw_document(r, day_of(r.submitted_at), now) for r in responses])
    return WriteFigures(statistics.median(ours), statistics.median(plain), again, building)


def rate(count: int, work: Callable[[], object]) -> float:
    start = time.perf_counter()
    work()
    return count / (time.perf_counter() - start)


if __name__ == "__main__":
    main()
