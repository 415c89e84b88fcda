"""The MongoDB features this project relies on, against the session's server.

Run against your own MongoDB with `MONGODB_URI=... .venv/bin/pytest -m compat` before pointing
the pipeline at it.
"""

import datetime as dt

import gridfs
import pymongo
import pytest

pytestmark = pytest.mark.compat
UTC = dt.timezone.utc


def test_crud_bulk_and_indexes(store):
    coll = store.collection("compat.items")
    coll.insert_many([{"k": i, "g": i % 3} for i in range(100)], ordered=False)
    coll.create_index("k", unique=True)
    with pytest.raises(pymongo.errors.DuplicateKeyError):
        coll.insert_one({"k": 5})
    coll.bulk_write([pymongo.UpdateOne({"k": 1}, {"$set": {"x": 1}}), pymongo.DeleteOne({"k": 2})])
    assert coll.count_documents({}) == 99 and coll.find_one({"k": 1})["x"] == 1
    assert coll.delete_many({"g": 0}).deleted_count == 34
    assert sorted(coll.distinct("g")) == [1, 2]


def test_dates_round_trip_tz_aware_and_range_queries_use_type_brackets(store):
    coll = store.collection("compat.dates")
    when = dt.datetime(2024, 3, 5, 10, tzinfo=UTC)
    coll.insert_many([{"d": when}, {"d": "2024-03-05T11:00:00"}, {"d": when + dt.timedelta(days=1)}])
    assert coll.count_documents({"d": {"$gte": when, "$lt": when + dt.timedelta(hours=1)}}) == 1
    assert coll.count_documents({"d": {"$gte": "2024-03-05", "$lt": "2024-03-06"}}) == 1
    assert coll.find_one({"d": when})["d"].utcoffset() == dt.timedelta(0)


def test_in_queries_and_simple_aggregation(store):
    coll = store.collection("compat.agg")
    coll.insert_many([{"p": f"p{i % 2}", "t": dt.datetime(2024, 1, 1 + i, tzinfo=UTC), "u": str(i)} for i in range(10)])
    assert coll.count_documents({"u": {"$in": [str(i) for i in range(0, 10, 2)]}}) == 5
    groups = {
        g["_id"]: g
        for g in coll.aggregate(
            [{"$match": {"p": "p1"}}, {"$group": {"_id": "$p", "n": {"$sum": 1}, "first": {"$min": "$t"}}}]
        )
    }
    assert groups["p1"]["n"] == 5 and groups["p1"]["first"].day == 2


def test_rename_with_drop_target_swaps_a_collection(store):
    db = store.database("compat")
    db.live.insert_one({"run": "old"})
    db.staging.insert_many([{"run": "new"}, {"run": "new"}])
    db.staging.rename("live", dropTarget=True)
    assert [d["run"] for d in db.live.find()] == ["new", "new"]
    assert "staging" not in db.list_collection_names()


def test_gridfs_round_trip(store):
    bucket = gridfs.GridFSBucket(store.database("compat"), bucket_name="blobs")
    payload = bytes(range(256)) * 5000
    file_id = bucket.upload_from_stream("model", payload, metadata={"kind": "x"})
    assert bucket.open_download_stream(file_id).read() == payload
