"""Update cost: with 100,000 and 1,000,000 members and 1,000 changed, the dynamic-sample update must
take about the same time (it reads changes through indexes, never the panel)."""

from __future__ import annotations

import datetime as dt
import time

import dagster as dg

from benchmarks._mongo import throwaway_mongod
from panel_pipeline.local.synthetic_panel import generate_profiles
from panel_pipeline.shared.resources import ContactBudget, MongoResource
from panel_pipeline.updater import store
from panel_pipeline.updater.assets import dynamic_sample_updates

UTC = dt.UTC
CHANGED = 1_000
PROFILE_COLUMNS = ["gender", "birth_year", "age", "age_band", "region", "social_grade", "education"]


def load_panel(db, members: int, created_at: dt.datetime) -> None:
    profiles = generate_profiles(members, seed=1)[PROFILE_COLUMNS]
    records = profiles.to_dict("records")
    for start in range(0, members, 20_000):
        db.users.insert_many(
            [{"status": "active", "created_at": created_at, "profile": row} for row in records[start : start + 20_000]],
            ordered=False,
        )


def dynamic_samples(db, drawn_at: dt.datetime) -> None:
    for region in ("Scotland", "Wales", "London"):
        db.samples.insert_one(
            {
                "name": f"{region} tracker",
                "survey_id": "1",
                "size": 100_000,
                "dynamic": True,
                "open": True,
                "filters": {"region": {"$in": [region]}},
                "processed": True,
                "status": "done",
                "processed_at": drawn_at,
                "drawn_at": drawn_at,
                "mailing": {
                    "template": "new_survey",
                    "default_data": {
                        "survey_name": "Tracker",
                        "duration_minutes": 5,
                        "points": 50,
                        "survey_url": "https://survey.example/s/9",
                    },
                },
            }
        )


def timed_update(client, uri: str, members: int) -> float:
    db_name = f"updater_{members}"
    db = client[db_name]
    long_ago = dt.datetime(2025, 1, 1, tzinfo=UTC)
    load_panel(db, members, long_ago)
    store.ensure_indexes(db)
    dynamic_samples(db, long_ago + dt.timedelta(days=1))
    store.write_cursor(db, long_ago + dt.timedelta(days=2))
    now = dt.datetime.now(UTC)
    changed = list(db.users.find({}, {"_id": 1}).limit(CHANGED))
    db.users.update_many({"_id": {"$in": [d["_id"] for d in changed]}}, {"$set": {"profile_updated_at": now}})
    mongo = MongoResource(uri=uri, database=db_name)
    with dg.instance_for_test() as instance:
        start = time.perf_counter()
        result = dg.materialize(
            [dynamic_sample_updates], instance=instance, resources={"mongo": mongo, "contact_budget": ContactBudget()}
        )
        elapsed = time.perf_counter() - start
    metadata = result.asset_materializations_for_node("dynamic_sample_updates")[0].metadata
    print(
        f"{members:>9,} members, {CHANGED:,} changed: update {elapsed:.2f} s "
        f"(members added {metadata['members_added'].value}, changed read {metadata['changed_members'].value})"
    )
    client.drop_database(db_name)
    return elapsed


def main() -> None:
    with throwaway_mongod() as (client, uri):
        timed_update(client, uri, 20_000)  # warm-up: imports, Dagster's first instance
        small = timed_update(client, uri, 100_000)
        large = timed_update(client, uri, 1_000_000)
    print(f"ratio 1,000,000 / 100,000 = {large / small:.2f} (target <= 1.5)")


if __name__ == "__main__":
    main()
