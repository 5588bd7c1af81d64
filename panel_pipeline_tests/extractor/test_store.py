"""Raw response writes on a real mongod: new inserted, changed replaced, the same left alone."""

import dataclasses
import datetime as dt
from zoneinfo import ZoneInfo

from panel_pipeline.extractor import store
from panel_pipeline.extractor.assets import day_of
from panel_pipeline.extractor.responses import SurveyResponse, parse_response
from panel_pipeline.local.profile_survey import PROFILE_SURVEY_ID, response_record
from panel_pipeline.shared.mongo import insert_missing
from panel_pipeline_tests.extractor.conftest import EXAMPLE_PROFILE

ZONE = ZoneInfo("America/New_York")
NOW = dt.datetime(2026, 3, 5, 12, 0, tzinfo=dt.UTC)


def responses(count: int, **profile_changes: str) -> list[SurveyResponse]:
    submitted = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC)
    records = [
        response_record(
            {**EXAMPLE_PROFILE, **profile_changes}, response_id=100 + n, submitted_at=submitted, account_zone=ZONE
        )
        for n in range(count)
    ]
    return [parse_response(record, PROFILE_SURVEY_ID, ZONE) for record in records]


def test_new_changed_and_unchanged_responses(mongo_db):
    assert store.upsert_raw(mongo_db, responses(3), day_of, NOW) == store.RawWrite(inserted=3, changed=0, unchanged=0)
    assert store.upsert_raw(mongo_db, responses(4), day_of, NOW) == store.RawWrite(inserted=1, changed=0, unchanged=3)
    edited = responses(4, region="Wales")[:2]
    assert store.upsert_raw(mongo_db, edited, day_of, NOW) == store.RawWrite(inserted=0, changed=2, unchanged=0)
    regions = {doc["response_id"]: doc["record"]["survey_data"]["12"]["answer"] for doc in mongo_db.sg_responses.find()}
    assert regions == {"100": "Wales", "101": "Wales", "102": "Scotland", "103": "Scotland"}


def test_a_deleted_response_listed_again_is_restored_and_quarantine_is_left(mongo_db):
    store.upsert_raw(mongo_db, responses(2), day_of, NOW)
    store.mark_deleted(mongo_db, PROFILE_SURVEY_ID, ["100"], NOW)
    store.quarantine(mongo_db, PROFILE_SURVEY_ID, "101", "2026-03-02", "bad date", {"id": "101"}, NOW)
    assert store.upsert_raw(mongo_db, responses(2), day_of, NOW) == store.RawWrite(inserted=0, changed=1, unchanged=1)
    assert mongo_db.sg_responses.count_documents({"deleted_at": {"$exists": True}}) == 0
    assert mongo_db.sg_quarantine.count_documents({}) == 0


def test_responses_a_concurrent_run_inserted_first_are_replaced_not_lost(mongo_db):
    documents = {
        store.raw_id(r.survey_id, r.id): store.raw_document(r, day_of(r.submitted_at), NOW)
        for r in responses(2, region="Wales")
    }
    mongo_db.sg_responses.insert_one(
        {"_id": f"{PROFILE_SURVEY_ID}:100", "record": {}}
    )  # lands between our read and our insert
    inserts = [{"_id": key, **doc} for key, doc in documents.items()]
    assert [inserts[index]["_id"] for index in insert_missing(mongo_db.sg_responses, inserts)] == [
        f"{PROFILE_SURVEY_ID}:100"
    ]


def test_large_batches_are_written_in_chunks(mongo_db):
    one = responses(1)[0]
    batch = [dataclasses.replace(one, id=str(n)) for n in range(store.WRITE_CHUNK + 10)]
    assert store.upsert_raw(mongo_db, batch, day_of, NOW).inserted == store.WRITE_CHUNK + 10
    assert mongo_db.sg_responses.count_documents({}) == store.WRITE_CHUNK + 10


def test_a_stream_of_responses_is_written_a_chunk_at_a_time_as_it_comes(mongo_db):
    """A backfill's responses arrive as a generator: each chunk is in Mongo before the next is read,
    so the run never holds more than one chunk."""
    one = responses(1)[0]
    stored_when_reading: list[int] = []

    def listing():
        for n in range(2 * store.WRITE_CHUNK + 10):
            if n % store.WRITE_CHUNK == 0:
                stored_when_reading.append(mongo_db.sg_responses.count_documents({}))
            yield dataclasses.replace(one, id=str(n))

    written = store.upsert_raw(mongo_db, listing(), day_of, NOW)
    assert written == store.RawWrite(inserted=2 * store.WRITE_CHUNK + 10, changed=0, unchanged=0)
    assert written.total == 2 * store.WRITE_CHUNK + 10
    assert stored_when_reading == [0, store.WRITE_CHUNK, 2 * store.WRITE_CHUNK]
