"""DataFrames in and out of collections: slice rewrites, atomic whole-collection swaps, reads."""

from __future__ import annotations

import datetime as dt
import os
import uuid
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import pandas as pd
from bson import ObjectId
from pymongo import ASCENDING
from pymongo.collection import Collection

#: Every document written through a slice rewrite carries the id of the write that made it.
WRITE_ID_FIELD = "_write_id"
#: Marks the staging collections of whole-collection swaps: `<collection>__staging_<hex>`.
STAGING_MARK = "__staging_"
INSERT_BATCH = 20_000


def plain_value(value):
    """numpy scalars/arrays, NaN and NaT -> plain Python values that BSON can encode."""
    if isinstance(value, np.ndarray):
        return [plain_value(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and value != value:
        return None
    if value is pd.NaT or value is pd.NA:
        return None
    if isinstance(value, pd.Timestamp):
        return value.to_pydatetime()
    return value


def _column_values(values: pd.Series) -> list:
    """One column as BSON-encodable Python values, converted a column at a time."""
    if pd.api.types.is_datetime64_any_dtype(values):
        utc = values.dt.tz_convert("UTC") if values.dt.tz is not None else values.dt.tz_localize("UTC")
        return [None if v is pd.NaT else v.to_pydatetime() for v in utc]
    if pd.api.types.is_bool_dtype(values) or pd.api.types.is_integer_dtype(values):
        if values.isna().any():
            return [plain_value(v) for v in values.astype(object).tolist()]
        return values.tolist()
    if pd.api.types.is_float_dtype(values):
        listed = values.tolist()
        return [None if v != v else v for v in listed] if values.isna().any() else listed
    if pd.api.types.is_string_dtype(values) and values.dtype != object and not values.isna().any():
        return values.tolist()
    return [plain_value(v) for v in values.tolist()]


def frame_to_documents(frame: pd.DataFrame) -> list[dict]:
    """DataFrame rows as BSON-encodable dicts."""
    names = [str(c) for c in frame.columns]
    columns = [_column_values(frame[c]) for c in frame.columns]
    return [dict(zip(names, row)) for row in zip(*columns)]


def chunked(items: Sequence, size: int) -> Iterable[Sequence]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def ensure_indexes(collection: Collection, indexes: Iterable[Sequence[str]]) -> None:
    for fields in indexes:
        collection.create_index([(f, ASCENDING) for f in fields])


def time_ordered_ids(times: pd.Series) -> list[ObjectId]:
    """`_id`s whose leading 4 bytes are each row's time (as ObjectIds carry their creation time).

    The mandatory `_id` index then doubles as a time index: a day's rows are one `_id` range
    (:func:`time_range_filter`), and no secondary index has to be kept up on every insert.
    """
    epoch = pd.Timestamp(0, tz="UTC")
    seconds = ((pd.to_datetime(times, utc=True) - epoch) // pd.Timedelta(seconds=1)).to_numpy(dtype=np.int64)
    if len(seconds) and (seconds.min() < 0 or seconds.max() >= 2**32):
        raise ValueError("time-ordered ids cover 1970-01-01..2106-02-07 UTC; a row's time lies outside")
    raw = np.zeros((len(seconds), 12), dtype=np.uint8)
    raw[:, 0:4] = seconds.astype(">u4").view(np.uint8).reshape(-1, 4)
    raw[:, 4:8] = np.frombuffer(os.urandom(4), dtype=np.uint8)  # one random prefix per write
    raw[:, 8:12] = np.arange(len(seconds), dtype=">u4").view(np.uint8).reshape(-1, 4)
    return [ObjectId(row.tobytes()) for row in raw]


def time_range_filter(start: dt.datetime, end: dt.datetime) -> dict:
    """The `_id` range of rows written with :func:`time_ordered_ids` whose time is in [start, end)."""
    return {"_id": {"$gte": ObjectId.from_datetime(start), "$lt": ObjectId.from_datetime(end)}}


def replace_slice(
    collection: Collection,
    frame: pd.DataFrame,
    slice_filter: dict,
    indexes: Iterable[Sequence[str]] = (),
    ids: list | None = None,
) -> int:
    """Make the documents matching `slice_filter` exactly the rows of `frame`.

    New rows go in first, tagged with a fresh write id; only then are the slice's older
    documents deleted (a slice written for the first time has none, and skips that step). A
    failure part-way removes what this write added, so the previous slice survives whole.
    The slice's fields are indexed (`_id` always is). `ids`, when given, become the documents'
    `_id`s. Returns the number of documents written.
    """
    ensure_indexes(collection, [fields for fields in [list(slice_filter), *indexes] if fields != ["_id"]])
    had_rows = collection.find_one(slice_filter, {"_id": 1}) is not None
    write_id = uuid.uuid4().hex
    documents = frame_to_documents(frame)
    for document in documents:
        document[WRITE_ID_FIELD] = write_id
    if ids is not None:
        for document, _id in zip(documents, ids):
            document["_id"] = _id
    try:
        for batch in chunked(documents, INSERT_BATCH):
            collection.insert_many(batch, ordered=False)
    except BaseException:
        collection.delete_many({WRITE_ID_FIELD: write_id})
        raise
    if had_rows:
        collection.delete_many({**slice_filter, WRITE_ID_FIELD: {"$ne": write_id}})
    return len(documents)


def replace_time_slice(
    collection: Collection,
    frame: pd.DataFrame,
    time_field: str,
    start: dt.datetime,
    end: dt.datetime,
    indexes: Iterable[Sequence[str]] = (),
) -> int:
    """`replace_slice` for the rows whose `time_field` lies in [start, end), with time-ordered `_id`s."""
    ids = time_ordered_ids(frame[time_field])
    return replace_slice(collection, frame, time_range_filter(start, end), indexes, ids)


def swap_in(
    collection: Collection,
    documents: list[dict],
    indexes: Iterable[Sequence[str]] = (),
    unique_key: str | None = None,
    before_swap: Callable[[], None] | None = None,
) -> int:
    """Replace `collection` with `documents` as a whole: staging collection, indexes, then one
    `renameCollection(dropTarget=True)`. A reader sees the old content or the new, never a mix; a
    failure before the rename leaves the collection as it was, and a staging collection left by a
    killed write is dropped by the next one. `before_swap` runs once staging is complete.
    Returns the number of documents written."""
    database = collection.database
    for stale in database.list_collection_names():
        if stale.startswith(collection.name + STAGING_MARK):
            database.drop_collection(stale)
    staging = database[f"{collection.name}{STAGING_MARK}{uuid.uuid4().hex[:12]}"]
    try:
        written = 0
        for batch in chunked(documents, INSERT_BATCH):
            written += len(staging.insert_many(batch, ordered=False).inserted_ids)
        if written != len(documents):
            raise RuntimeError(f"staging {staging.name} holds {written} documents, expected {len(documents)}")
        if unique_key:
            staging.create_index([(unique_key, ASCENDING)], unique=True)
        ensure_indexes(staging, indexes)
        if before_swap is not None:
            before_swap()
        if documents:
            staging.rename(collection.name, dropTarget=True)
        else:  # an empty staging collection does not exist to be renamed
            collection.drop()
            ensure_indexes(collection, indexes)
    finally:
        staging.drop()
    return written


def replace_collection(collection: Collection, frame: pd.DataFrame, indexes: Iterable[Sequence[str]] = ()) -> int:
    """Swap the whole collection for `frame` at once (see :func:`swap_in`)."""
    return swap_in(collection, frame_to_documents(frame), indexes)


def read_frame(collection: Collection, query: dict | None = None, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """Documents as a DataFrame without `_id` or the write id; date columns come back as UTC."""
    projection = {c: 1 for c in columns} if columns else {WRITE_ID_FIELD: 0}
    projection["_id"] = 0
    documents = list(collection.find(query or {}, projection))
    frame = pd.DataFrame(documents, columns=list(columns) if columns else None)
    for column in frame.columns:
        if isinstance(frame[column].dtype, pd.DatetimeTZDtype):
            frame[column] = frame[column].dt.tz_convert("UTC")  # bson's own UTC tzinfo -> pandas UTC
        elif frame[column].dtype == object:
            first = frame[column].dropna()
            if len(first) and hasattr(first.iloc[0], "tzinfo") and hasattr(first.iloc[0], "year"):
                frame[column] = pd.to_datetime(frame[column], utc=True)
    return frame
