"""UCI in-vehicle coupon recommendation as runtime logs: every survey answer is one request.

Each CSV row is one driver deciding on one coupon in one driving context; the label (`Y` in the
UCI original, `class` in some copies, both accepted) is the accept. The offer is the coupon type
crossed with its expiration (`coupon_coffee_house_2h`, ...: 10 offers).

Three things are derived, because the data does not have them:

- Customer id: the survey has no driver id. A driver is identified by the demographic and habit
  columns (`DRIVER_COLUMNS`): the id is `driver_` + the first 10 hex digits of the SHA-1 of those
  raw values, so two rows with the same answers belong to the same (derived) driver. The customer
  features are those columns with lower snake case names, empty values -> "unknown".
- Timestamps: the data has no dates. Row `i` of `n` falls on day `i * 30 // n` after 2024-03-01
  UTC, at the clock hour of its `time` column (7AM, 2PM, ...) plus `i % 3600` seconds, so a reload
  gives identical documents.
- Price: a fixed, synthetic table per coupon type (`COUPON_PRICES`); cost is 40 % of it. The
  runtime `score` is a constant 0.5: the survey had no recommender, and a per-offer accept rate
  would put the label into an item feature.

The driving context is the request's context: each request's `in_params` carries it as the
runtime would have received it (`CONTEXT_NAMES`: destination, passenger, weather, temperature,
time of day, the distance flags `to_coupon_geq5min` / `15min` / `25min` and `direction_same` /
`direction_opp`; the flags and the temperature as integers, the rest as the survey's text), and
the flatten keeps it as `context_<key>` exposure columns.
Source: UCI ML Repository dataset 603, Wang et al. (JMLR 2017), CC BY 4.0.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from pathlib import Path

import numpy as np
import pandas as pd

from twotower_pipeline.ingest.context import context_column
from twotower_pipeline.ingest.runtime_logs import RuntimeLogs, build_runtime_logs

PREDICTOR = "coupon_recommender"
CHANNEL = "in_vehicle"
START = pd.Timestamp("2024-03-01", tz="UTC")
DAYS = 30
SCORE = 0.5
LABEL_COLUMNS = ("Y", "class")
DRIVER_COLUMNS = (
    "gender", "age", "maritalStatus", "has_children", "education", "occupation", "income", "car",
    "Bar", "CoffeeHouse", "CarryAway", "RestaurantLessThan20", "Restaurant20To50",
)
#: The driving context (CSV column -> `in_params` key), logged with each request.
CONTEXT_NAMES = {
    "destination": "destination", "passanger": "passenger", "weather": "weather", "temperature": "temperature",
    "time": "time", "toCoupon_GEQ5min": "to_coupon_geq5min", "toCoupon_GEQ15min": "to_coupon_geq15min",
    "toCoupon_GEQ25min": "to_coupon_geq25min", "direction_same": "direction_same", "direction_opp": "direction_opp",
}
#: Context values that are integers in a request (the others are text).
NUMERIC_CONTEXT = ("temperature", "toCoupon_GEQ5min", "toCoupon_GEQ15min", "toCoupon_GEQ25min", "direction_same",
                   "direction_opp")
REQUIRED_COLUMNS = ("coupon", "expiration", "time", *DRIVER_COLUMNS)
#: Synthetic face value of each coupon type (the data has no prices).
COUPON_PRICES = {
    "Coffee House": 2.5,
    "Carry out & Take away": 5.0,
    "Bar": 8.0,
    "Restaurant(<20)": 10.0,
    "Restaurant(20-50)": 25.0,
}
FEATURE_NAMES = {
    "gender": "gender", "age": "age", "maritalStatus": "marital_status", "has_children": "has_children",
    "education": "education", "occupation": "occupation", "income": "income", "car": "car", "Bar": "bar",
    "CoffeeHouse": "coffee_house", "CarryAway": "carry_away",
    "RestaurantLessThan20": "restaurant_less_than_20", "Restaurant20To50": "restaurant_20_to_50",
}


def snake(text: str) -> str:
    """`Restaurant(<20)` -> `restaurant_lt20`, `Carry out & Take away` -> `carry_out_take_away`."""
    text = text.replace("<", "lt").replace(">", "gt")
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def offer_name(coupon: str, expiration: str) -> str:
    return f"coupon_{snake(coupon)}_{snake(expiration)}"


def driver_id(values) -> str:
    """The derived customer id of one driver: a hash of the raw `DRIVER_COLUMNS` values, in order."""
    return "driver_" + hashlib.sha1("|".join(str(v) for v in values).encode("utf-8")).hexdigest()[:10]


def read_coupons(path: str | Path) -> pd.DataFrame:
    """The CSV as strings (empty cells stay ""), with the label column renamed to `accepted` (int)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"coupon file {path} is missing")
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    frame.columns = [c.strip() for c in frame.columns]
    label = next((c for c in LABEL_COLUMNS if c in frame.columns), None)
    if label is None:
        raise ValueError(f"coupon file {path} lacks the label column 'Y' (or 'class')")
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"coupon file {path} lacks column(s) {', '.join(repr(c) for c in missing)}")
    bad_label = ~frame[label].str.strip().isin(["0", "1"])
    if bad_label.any():
        first = int(np.flatnonzero(bad_label.to_numpy())[0])
        raise ValueError(
            f"coupon file {path}: column {label!r} must be 0/1 (line {first + 2}: {frame[label].iloc[first]!r})"
        )
    unknown = sorted(set(frame["coupon"]) - set(COUPON_PRICES))
    if unknown:
        raise ValueError(f"coupon file {path}: column 'coupon' has unknown coupon type(s) {unknown}")
    return frame.assign(accepted=frame[label].str.strip().astype(int)).drop(columns=[label])


def _clock_seconds(times: pd.Series) -> np.ndarray:
    """`7AM` / `2PM` / `10PM` -> seconds after midnight."""
    parsed = times.str.strip().str.upper().str.extract(r"^(\d{1,2})(AM|PM)$")
    if parsed[0].isna().any():
        raise ValueError(f"column 'time' has values other than <hour>AM/PM: {sorted(set(times[parsed[0].isna()]))[:5]}")
    hour = parsed[0].astype(int) % 12 + np.where(parsed[1] == "PM", 12, 0)
    return (hour * 3600).to_numpy(dtype="int64")


def load_coupons(path: str | Path, *, predictor: str = PREDICTOR) -> RuntimeLogs:
    path = Path(path)
    frame = read_coupons(path)
    try:
        clock = _clock_seconds(frame["time"])
    except ValueError as error:
        raise ValueError(f"coupon file {path}: {error}") from None

    drivers = frame[list(DRIVER_COLUMNS)]
    customers = pd.Series([driver_id(row) for row in drivers.itertuples(index=False)], index=frame.index)
    offers = [offer_name(c, e) for c, e in zip(frame["coupon"], frame["expiration"])]

    kinds = [(c, e) for c in COUPON_PRICES for e in sorted(frame["expiration"].unique())]
    price = np.array([COUPON_PRICES[c] for c, _ in kinds])
    offer_matrix = pd.DataFrame(
        {
            "offer_name": [offer_name(c, e) for c, e in kinds],
            "offer_id": np.arange(1, len(kinds) + 1),
            "title": [f"{c} coupon, expires in {e}" for c, e in kinds],
            "coupon_type": [c for c, _ in kinds],
            "expiration": [e for _, e in kinds],
            "price": price.astype(float),
            "cost": (price * 0.4).round(2).astype(float),
            "static_offers": False,
        }
    )

    features = drivers.rename(columns=FEATURE_NAMES)
    features = features.apply(lambda col: col.str.strip().replace("", "unknown"))
    features["has_children"] = features["has_children"].astype(int)
    customer_features = (
        features.assign(customer_id=customers)
        .drop_duplicates("customer_id")
        .sort_values("customer_id")
        .reset_index(drop=True)[["customer_id", *FEATURE_NAMES.values()]]
    )

    row = np.arange(len(frame), dtype="int64")
    seconds = (row * DAYS // max(len(frame), 1)) * 86400 + clock + row % 3600
    exposures = pd.DataFrame(
        {
            "request": [f"row{i:06d}" for i in row],
            "customer_id": customers,
            "offer": offers,
            "accepted": frame["accepted"].astype(int),
            "datetime": START + pd.to_timedelta(seconds, unit="s"),
            "price": frame["coupon"].map(COUPON_PRICES).astype(float),
            "score": SCORE,
        }
    )
    for column, key in CONTEXT_NAMES.items():
        if column not in frame.columns:  # an older copy of the data without it: not sent
            continue
        values = frame[column].str.strip()
        if column in NUMERIC_CONTEXT:
            values = pd.to_numeric(values, errors="coerce").astype("Int64")
        exposures[context_column(key)] = values.where(values != "", None) if column not in NUMERIC_CONTEXT else values
    return build_runtime_logs(
        exposures, predictor=predictor, channel=CHANNEL, offer_matrix=offer_matrix,
        customer_features=customer_features, response_delay=dt.timedelta(seconds=20),
    )
