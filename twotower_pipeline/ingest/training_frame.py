"""One predictor's exposures joined with customer and offer features: the `two_tower_features` frame.

The frame is what training reads, so it is typed and has no gaps: keys are strings, the target
is 0/1, absent context features take the documented defaults (price 0.0, rank 1.0, score 0.0),
missing numeric features take the column median and missing categories become "unknown".
The request's context columns (`context_<key>`, see `ingest.context`) are kept as they came, typed
(numbers as floats, anything else as text) but not filled: a request that did not send a key has
no value there, and the customer tower gives it the neutral value, as at export time.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from twotower_pipeline.ingest.context import context_columns, is_context_column

CONTEXT_DEFAULTS = {"price": 0.0, "rank": 1.0, "score": 0.0}
KEY_COLUMNS = ("customer_id", "offer")
TARGET_COLUMN = "accepted"
#: Columns of the flatten collection that describe the exposure, not a feature to fill.
#: What served an exposure (the flatten keeps them from the presented document; absent in documents
#: logged before the runtime wrote them): the run, the experiment and arm, whether the order was
#: explored, and the offer's propensity (the probability the serving policy showed it at that rank).
#: For online evaluation only: a run id or a propensity as a feature would learn the serving policy.
SERVING_COLUMNS = ("run_id", "experiment", "arm", "explore", "propensity")
BOOKKEEPING_COLUMNS = ("uuid", "predictor", "channel", "offer_name", "datetime", *SERVING_COLUMNS)
#: When a customer's or an offer's document last changed (set by whoever writes them; the runtime
#: refresh finds changes by it): bookkeeping of the feature tables, never a feature.
CHANGED_AT = "updated_at"
UNKNOWN = "unknown"


def build_training_frame(
    exposures: pd.DataFrame,
    customer_features: pd.DataFrame,
    offer_matrix: pd.DataFrame,
    *,
    customer_key: str = "customer_id",
    offer_key: str = "offer_name",
) -> tuple[pd.DataFrame, dict]:
    """Join, type and clean; return the frame and the statistics shown as metadata."""
    stats: dict = {"exposures_read": len(exposures)}
    frame = exposures.copy()
    for column in KEY_COLUMNS:
        if column not in frame.columns:
            raise ValueError(f"exposures lack the key column {column!r} (columns: {sorted(frame.columns)})")
    null_keys = frame[list(KEY_COLUMNS)].isna().any(axis=1) | (frame["customer_id"].astype(str).str.strip() == "")
    stats["dropped_null_keys"] = int(null_keys.sum())
    frame = frame.loc[~null_keys].reset_index(drop=True)
    frame["customer_id"] = frame["customer_id"].astype(str)
    frame["offer"] = frame["offer"].astype(str)
    frame[TARGET_COLUMN] = pd.to_numeric(frame[TARGET_COLUMN], errors="coerce").fillna(0).clip(0, 1).astype("int64")
    for column, default in CONTEXT_DEFAULTS.items():
        values = pd.to_numeric(frame[column], errors="coerce") if column in frame.columns else None
        frame[column] = default if values is None else values.fillna(default).astype("float64")

    customers = _keyed(customer_features, customer_key, "customer_id")
    offers = _keyed(offer_matrix, offer_key, "offer")
    stats["customers_without_features"] = (
        int((~frame["customer_id"].isin(customers["customer_id"])).sum()) if len(customers) else len(frame)
    )
    stats["exposures_of_unknown_offers"] = (
        int((~frame["offer"].isin(offers["offer"])).sum()) if len(offers) else len(frame)
    )
    if len(customers.columns) > 1:
        frame = frame.merge(customers, on="customer_id", how="left", suffixes=("", "_customer"))
    if len(offers.columns) > 1:
        frame = frame.merge(offers, on="offer", how="left", suffixes=("", "_offer"))

    protected = set(KEY_COLUMNS) | {TARGET_COLUMN} | set(CONTEXT_DEFAULTS) | set(BOOKKEEPING_COLUMNS)
    for column in frame.columns:
        if column in protected:
            continue
        frame[column] = _clean_context(frame[column]) if is_context_column(column) else _clean_feature(frame[column])
    stats["context_columns"] = context_columns(frame.columns)

    stats.update(
        rows=len(frame),
        accepted=int(frame[TARGET_COLUMN].sum()),
        accept_rate=float(frame[TARGET_COLUMN].mean()) if len(frame) else 0.0,
        customers=int(frame["customer_id"].nunique()),
        offers=int(frame["offer"].nunique()),
    )
    if "datetime" in frame.columns and len(frame):
        stats["first_exposure"] = frame["datetime"].min().isoformat()
        stats["last_exposure"] = frame["datetime"].max().isoformat()
    return frame, stats


def customer_row(customer_id: str, features: dict | None = None, context: dict | None = None) -> pd.DataFrame:
    """One customer's row as the frame types it (what `build_training_frame` makes of its stored
    feature document, without the joins: one request is served by it): `customer_id`, the features
    (`_`-fields, `embedding` and `updated_at` left out; None/NaN values left out, so the towers
    give them their neutral value) and the request's `context_<key>` columns."""
    row = {"customer_id": str(customer_id)}
    for key, value in (features or {}).items():
        if (key in row or str(key).startswith("_") or key in ("embedding", CHANGED_AT)
                or value is None or (isinstance(value, float) and value != value)):
            continue
        row[key] = value
    frame = pd.DataFrame([{**row, **(context or {})}])
    for column in frame.columns:
        if column != "customer_id":
            frame[column] = (_clean_context(frame[column]) if is_context_column(column)
                             else _clean_feature(frame[column]))
    return frame


def _keyed(table: pd.DataFrame, key: str, as_name: str) -> pd.DataFrame:
    """Feature table with its key renamed to the frame's key column, one row per key (the last)."""
    if table is None or table.empty:
        return pd.DataFrame({as_name: pd.Series(dtype=str)})
    if key not in table.columns:
        raise ValueError(f"feature table lacks its key column {key!r} (columns: {sorted(table.columns)})")
    internal = [c for c in table.columns if c.startswith("_") or c in ("embedding", CHANGED_AT)]
    table = table.drop(columns=internal).rename(columns={key: as_name})
    table[as_name] = table[as_name].astype(str)
    return table.drop_duplicates(as_name, keep="last")


def _clean_context(values: pd.Series) -> pd.Series:
    """A request-context column: numbers (and booleans) as float64, anything else as text; missing
    values (and empty text) stay missing."""
    if pd.api.types.is_bool_dtype(values) or pd.api.types.is_numeric_dtype(values):
        return values.astype("float64")
    present = values.notna() & (values.astype(str).str.strip() != "")
    if present.any() and all(isinstance(v, (bool, int, float, np.number, np.bool_)) for v in values[present]):
        return pd.to_numeric(values.where(present).astype(object), errors="coerce").astype("float64")
    return values.where(present).map(lambda v: v if v is None or v != v else str(v)).astype(object)


def _clean_feature(values: pd.Series) -> pd.Series:
    if pd.api.types.is_bool_dtype(values):
        return values.fillna(False).astype(bool)
    if pd.api.types.is_numeric_dtype(values):
        median = values.median()
        return values.fillna(0.0 if pd.isna(median) else median).astype("float64")
    non_null = values.dropna()
    if len(non_null) and isinstance(non_null.iloc[0], (list, tuple)):
        return values.map(lambda v: list(v) if isinstance(v, (list, tuple)) else [])
    if len(non_null) and pd.api.types.is_datetime64_any_dtype(values):
        return values
    return values.map(
        lambda v: UNKNOWN if v is None or (isinstance(v, float) and v != v) or str(v).strip() == "" else str(v)
    )
