"""DataFrames in and out of collections: slice rewrites, atomic whole-collection swaps, reads."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd
from pymongo import ASCENDING
from pymongo.collection import Collection

#: Every document written through a slice rewrite carries the id of the write that made it.
WRITE_ID_FIELD = "_write_id"
INSERT_BATCH = 20_000


def plain_value(value):
    """numpy scalars/arrays, NaN and NaT -> plain Python values that BSON can encode."""
    if isinstance(value, np.ndarray):
        return [plain_value(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and value != value:
        return None
    if value is pd.NaT:
        return None
    if isinstance(value, pd.Timestamp):
        return value.to_pydatetime()
    return value


def frame_to_documents(frame: pd.DataFrame) -> list[dict]:
    """DataFrame rows as BSON-encodable dicts."""
    records = frame.to_dict("records")
    # to_dict already boxes int/float columns to Python; only some columns need a per-value pass.
    needs_pass = [c for c in frame.columns if frame[c].dtype == object or not (
        pd.api.types.is_integer_dtype(frame[c]) or pd.api.types.is_bool_dtype(frame[c])
        or (pd.api.types.is_float_dtype(frame[c]) and not frame[c].isna().any())
        or (pd.api.types.is_string_dtype(frame[c]) and not frame[c].isna().any())
    )]
    if needs_pass:
        for record in records:
            for key in needs_pass:
                record[key] = plain_value(record[key])
    return records


def chunked(items: Sequence, size: int) -> Iterable[Sequence]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def ensure_indexes(collection: Collection, indexes: Iterable[Sequence[str]]) -> None:
    for fields in indexes:
        collection.create_index([(f, ASCENDING) for f in fields])


def replace_slice(collection: Collection, frame: pd.DataFrame, slice_filter: dict) -> int:
    """Make the documents matching `slice_filter` exactly the rows of `frame`.

    New rows go in first, tagged with a fresh write id; only then are the slice's older
    documents deleted. A failure part-way removes what this write added, so the previous
    slice survives whole. Returns the number of documents written.
    """
    write_id = uuid.uuid4().hex
    documents = frame_to_documents(frame)
    for document in documents:
        document[WRITE_ID_FIELD] = write_id
    try:
        for batch in chunked(documents, INSERT_BATCH):
            collection.insert_many(batch, ordered=False)
    except BaseException:
        collection.delete_many({WRITE_ID_FIELD: write_id})
        raise
    collection.delete_many({**slice_filter, WRITE_ID_FIELD: {"$ne": write_id}})
    return len(documents)


def replace_collection(collection: Collection, frame: pd.DataFrame, indexes: Iterable[Sequence[str]] = ()) -> int:
    """Swap the whole collection for `frame` at once: staging collection, then renameCollection."""
    staging = collection.database[f"{collection.name}__staging_{uuid.uuid4().hex[:12]}"]
    documents = frame_to_documents(frame)
    try:
        for batch in chunked(documents, INSERT_BATCH):
            staging.insert_many(batch, ordered=False)
        ensure_indexes(staging, indexes)
        if documents:
            staging.rename(collection.name, dropTarget=True)
        else:
            collection.drop()
            ensure_indexes(collection, indexes)
    finally:
        staging.drop()
    return len(documents)


def read_frame(collection: Collection, query: dict | None = None, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """Documents as a DataFrame without `_id` or the write id; date columns come back as UTC."""
    projection = {c: 1 for c in columns} if columns else {WRITE_ID_FIELD: 0}
    projection["_id"] = 0
    documents = list(collection.find(query or {}, projection))
    frame = pd.DataFrame(documents, columns=list(columns) if columns else None)
    for column in frame.columns:
        if frame[column].dtype == object:
            first = frame[column].dropna()
            if len(first) and hasattr(first.iloc[0], "tzinfo") and hasattr(first.iloc[0], "year"):
                frame[column] = pd.to_datetime(frame[column], utc=True)
    return frame
