"""`python -m panel_pipeline.local.surveygizmo`: the local SurveyGizmo server in the foreground
(the local stack runs it)."""

from __future__ import annotations

import argparse
import datetime as dt
import threading

from panel_pipeline.local.profile_survey import PROFILE_SURVEY_ID
from panel_pipeline.local.surveygizmo.demo import load_demo_data
from panel_pipeline.local.surveygizmo.faults import RandomFaults
from panel_pipeline.local.surveygizmo.server import DEMO_TOKEN, DEMO_TOKEN_SECRET, LocalSurveyGizmo

UTC = dt.UTC


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m panel_pipeline.local.surveygizmo", description="The local SurveyGizmo v5 server."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8089)
    parser.add_argument("--token", default=DEMO_TOKEN)
    parser.add_argument("--secret", default=DEMO_TOKEN_SECRET)
    parser.add_argument("--time-zone", default="America/New_York")
    parser.add_argument("--demo", action="store_true", help="load the profile survey and synthetic responses")
    parser.add_argument("--members", type=int, default=1000)
    parser.add_argument("--days", type=int, default=14, help="spread demo responses over the last N days")
    parser.add_argument(
        "--end", type=dt.datetime.fromisoformat, help="demo responses end at this UTC time (default now)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--fault-rate", type=float, default=0.0, help="share of requests answered 429/500/502/503 at random"
    )
    args = parser.parse_args(argv)
    server = LocalSurveyGizmo(args.token, args.secret, time_zone=args.time_zone, host=args.host, port=args.port)
    if args.demo:
        from panel_pipeline.local.synthetic_panel import generate_profiles  # pandas and numpy: only for --demo

        end = (args.end or dt.datetime.now(UTC)).replace(microsecond=0, tzinfo=UTC)
        load_demo_data(server, generate_profiles(args.members, seed=args.seed), end - dt.timedelta(days=args.days), end)
    if args.fault_rate:
        server.random_faults = RandomFaults(args.fault_rate, seed=args.seed)
    server.start()
    print(
        f"SurveyGizmo v5 local API at {server.base_url}/v5 (api_token={args.token}, demo survey {PROFILE_SURVEY_ID})",
        flush=True,
    )
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
