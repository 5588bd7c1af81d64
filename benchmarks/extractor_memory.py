"""Extractor memory: the peak memory of `surveygizmo_responses` over one day of 100,000 responses
(local SurveyGizmo server in its own process, real mongod), measured in this process.

Two figures: tracemalloc's peak of Python allocations during the run (what the run holds), and the
process's peak resident set (`resource.getrusage`) over its resident set just before the run.
`--responses N` changes the day's size (memory should not grow with it).
"""

import argparse
import contextlib
import datetime as dt
import resource
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import dagster as dg

from benchmarks._mongo import throwaway_mongod
from benchmarks.extractor_bench import ACCOUNT_ZONE, surveygizmo_process
from panel_pipeline.extractor.assets import surveygizmo_responses
from panel_pipeline.extractor.resources import SurveyGizmoResource
from panel_pipeline.local.profile_survey import PROFILE_SURVEY_ID
from panel_pipeline.local.surveygizmo.server import DEMO_TOKEN, DEMO_TOKEN_SECRET
from panel_pipeline.shared.resources import MongoResource

DAY = dt.date(2026, 3, 10)
MIB = 1024 * 1024


@contextlib.contextmanager
def one_day_server(responses: int) -> Iterator[str]:
    end = dt.datetime.combine(DAY + dt.timedelta(days=1), dt.time())
    print(f"starting the local server with {responses:,} responses on {DAY} ...", flush=True)
    with surveygizmo_process(responses, 1, end) as base_url:
        yield base_url


def resident_mib() -> float:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() / MIB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--responses", type=int, default=100_000)
    args = parser.parse_args()
    with throwaway_mongod() as (_, uri), one_day_server(args.responses) as base_url:
        resources = {
            "mongo": MongoResource(uri=uri, database="memory"),
            "surveygizmo": SurveyGizmoResource(
                api_token=DEMO_TOKEN, api_token_secret=DEMO_TOKEN_SECRET, base_url=base_url,
                account_time_zone=ACCOUNT_ZONE.key, profile_survey_ids=PROFILE_SURVEY_ID, calls_per_minute=1e9,
            ),
        }
        with dg.instance_for_test() as instance:
            before = resident_mib()
            tracemalloc.start()
            started = time.perf_counter()
            result = dg.materialize([surveygizmo_responses], instance=instance, resources=resources, partition_key=DAY.isoformat())
            seconds = time.perf_counter() - started
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        (materialization,) = result.asset_materializations_for_node("surveygizmo_responses")
        count = materialization.metadata["responses"].value
    print(f"\nsurveygizmo_responses, one day of {count:,} responses ({seconds:.1f} s under tracemalloc)")
    print(f"  peak Python allocations during the run (tracemalloc): {peak / MIB:8.1f} MiB")
    print(f"  peak resident set {peak_rss:.0f} MiB, {peak_rss - before:.0f} MiB over the {before:.0f} MiB before the run")


if __name__ == "__main__":
    main()
