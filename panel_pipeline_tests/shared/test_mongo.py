import pytest
from pymongo.errors import BulkWriteError

from panel_pipeline.shared.mongo import insert_missing


def test_insert_missing_skips_what_a_unique_index_holds_and_raises_anything_else(mongo_db):
    mongo_db.things.insert_one({"_id": 2})
    assert insert_missing(mongo_db.things, [{"_id": 1}, {"_id": 2}, {"_id": 3}, {"_id": 1}]) == [1, 3]
    assert sorted(doc["_id"] for doc in mongo_db.things.find()) == [1, 2, 3]
    assert insert_missing(mongo_db.things, []) == []
    with pytest.raises(BulkWriteError):
        insert_missing(mongo_db.things, [{"_id": 4}, {"_id": [5, 6]}])
