"""DataFrames in and out of documents, batches, plain reads."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import pandas as pd
from pymongo import ASCENDING
from pymongo.collection import Collection

#: Documents per insert_many (TWOTOWER_INSERT_BATCH overrides it, e.g. for many small batches in tests).
INSERT_BATCH = int(os.environ.get("TWOTOWER_INSERT_BATCH", "20000"))


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


def batches(items: Iterable, size: int) -> Iterator[list]:
    """Lists of up to `size` items from any iterable (a cursor is streamed, never held whole)."""
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def ensure_indexes(collection: Collection, indexes: Iterable[Sequence[str]]) -> None:
    for fields in indexes:
        collection.create_index([(f, ASCENDING) for f in fields])


def read_frame(collection: Collection, query: dict | None = None, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """A collection that is not written through slice commits (the runtime's, the catalogue's) as a
    DataFrame; see :class:`twotower_pipeline.store.slices.SlicedCollection` for the ones that are."""
    projection = {c: 1 for c in columns} if columns else None
    return documents_to_frame(list(collection.find(query or {}, projection)), columns)


def documents_to_frame(documents: list[dict], columns: Sequence[str] | None = None) -> pd.DataFrame:
    """Documents as a DataFrame without `_id` or bookkeeping fields (`_`-prefixed); dates as UTC."""
    frame = pd.DataFrame(documents, columns=list(columns) if columns else None)
    frame = frame.drop(columns=[c for c in frame.columns if str(c).startswith("_")])
    for column in frame.columns:
        if isinstance(frame[column].dtype, pd.DatetimeTZDtype):
            frame[column] = frame[column].dt.tz_convert("UTC")  # bson's own UTC tzinfo -> pandas UTC
        elif frame[column].dtype == object:
            first = frame[column].dropna()
            if len(first) and hasattr(first.iloc[0], "tzinfo") and hasattr(first.iloc[0], "year"):
                frame[column] = pd.to_datetime(frame[column], utc=True)
    return frame
