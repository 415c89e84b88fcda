"""Loaders without Mongo: the UCI coupon file, the user-file importer and the traffic simulator."""

import datetime as dt
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from twotower_pipeline.ingest import coupon
from twotower_pipeline.ingest.importer import ImportFileError, load_exposures_file
from twotower_pipeline.ingest.runtime_logs import build_runtime_logs
from twotower_pipeline.ingest.simulator import simulate_exposures, simulate_traffic, simulate_world

UTC = dt.timezone.utc


def _data_root() -> Path:
    configured = os.environ.get("TWOTOWER_DATA_DIR")
    return Path(configured).expanduser() if configured else Path(__file__).resolve().parents[2] / "shared" / "data"


COUPON_FILE = _data_root() / "in-vehicle-coupon" / "in-vehicle-coupon-recommendation.csv"


@pytest.fixture(scope="module")
def coupon_logs():
    if not COUPON_FILE.is_file():
        pytest.skip(f"UCI coupon CSV not found at {COUPON_FILE} (set TWOTOWER_DATA_DIR)")
    return coupon.load_coupons(COUPON_FILE)


def _accepted_pairs(logs):
    return {(r["uuid"], o["offer_name"]) for r in logs.responses for o in r["response"]["offers_accepted"]}


# --- UCI in-vehicle coupons -------------------------------------------------------------------

def test_coupon_loader_counts(coupon_logs):
    logs = coupon_logs
    assert logs.predictor == "coupon_recommender"
    assert len(logs.presented) == 12_684 and logs.n_exposures == 12_684
    assert len(_accepted_pairs(logs)) == 7_210 and len(logs.responses) == 7_210
    assert len(logs.offer_matrix) == 10 and logs.offer_matrix["offer_name"].is_unique
    assert {"coupon_coffee_house_2h", "coupon_restaurant_lt20_1d", "coupon_carry_out_take_away_2h"} <= set(
        logs.offer_matrix["offer_name"])
    assert {"offer_name", "offer_id", "price", "cost", "static_offers"} <= set(logs.offer_matrix.columns)
    shown = {r["result"]["offer"] for d in logs.presented for r in d["final_result"]}
    assert shown == set(logs.offer_matrix["offer_name"])
    customers = logs.customer_features["customer_id"]
    assert customers.is_unique and customers.str.fullmatch(r"driver_[0-9a-f]{10}").all()
    # Far fewer derived drivers than rows: the survey asked each driver about many coupons.
    assert 100 < len(customers) < 2_000
    assert {d["api_params"]["customer"] for d in logs.presented} == set(customers)
    assert set(logs.customer_features["car"]) >= {"unknown"}
    assert "" not in set(logs.customer_features.drop(columns="customer_id").astype(str).stack())


def test_coupon_documents_have_the_runtime_shapes(coupon_logs):
    logs = coupon_logs
    by_uuid = {d["uuid"]: d for d in logs.presented}
    assert len(by_uuid) == len(logs.presented)
    start, end = dt.datetime(2024, 3, 1, tzinfo=UTC), dt.datetime(2024, 3, 31, tzinfo=UTC)
    for doc in logs.presented[:200] + logs.presented[-200:]:
        assert re.fullmatch(r"[0-9a-f-]{36}", doc["uuid"])
        assert doc["predictor"] == "coupon_recommender"
        assert doc["date_log"].tzinfo is not None and start <= doc["date_log"] < end
        assert doc["api_params"]["channel"] == "in_vehicle"
        assert doc["params"] == [{"key": "customer", "value": doc["api_params"]["customer"]}]
        (item,) = doc["final_result"]
        assert item["rank"] == 1
        result = item["result"]
        assert result["offer"] == result["offer_name"] and result["offer"].startswith("coupon_")
        assert result["score"] == 0.5 and result["price"] in set(coupon.COUPON_PRICES.values())
        assert doc["scoring_data"]["customer"] == doc["api_params"]["customer"]
        assert {"age", "income", "coffee_house"} <= set(doc["scoring_data"])
    # The clock time of the day comes from the survey's `time` column.
    assert {d["date_log"].hour for d in logs.presented} == {7, 10, 14, 18, 22}
    for response in logs.responses[:200]:
        asked = by_uuid[response["uuid"]]
        assert response["predictor"] == "coupon_recommender" and response["date_log"] > asked["date_log"]
        assert response["response"]["offers_accepted"] == [
            {"offer_name": asked["final_result"][0]["result"]["offer_name"],
             "offer": asked["final_result"][0]["result"]["offer"]}]
        assert response["response_log"]["uuid"] == response["uuid"]


def test_coupon_reload_gives_identical_documents(coupon_logs):
    again = coupon.load_coupons(COUPON_FILE)
    assert again.presented == coupon_logs.presented and again.responses == coupon_logs.responses


# A row of the UCI file, for small hand-made files that need no data set.
COUPON_ROW = {
    "destination": "No Urgent Place", "passanger": "Alone", "weather": "Sunny", "temperature": "55",
    "time": "2PM", "coupon": "Restaurant(<20)", "expiration": "1d", "gender": "Female", "age": "21",
    "maritalStatus": "Unmarried partner", "has_children": "1", "education": "Some college - no degree",
    "occupation": "Unemployed", "income": "$37500 - $49999", "car": "", "Bar": "never",
    "CoffeeHouse": "never", "CarryAway": "", "RestaurantLessThan20": "4~8", "Restaurant20To50": "1~3",
    "toCoupon_GEQ5min": "1", "toCoupon_GEQ15min": "0", "toCoupon_GEQ25min": "0", "direction_same": "0",
    "direction_opp": "1",
}


def _coupon_csv(path, label="Y", drop=()):
    rows = [
        {**COUPON_ROW, label: "1"},
        {**COUPON_ROW, "coupon": "Coffee House", "expiration": "2h", "time": "7AM", label: "0"},
        {**COUPON_ROW, "gender": "Male", "coupon": "Bar", "time": "10PM", label: "1"},
    ]
    pd.DataFrame(rows).drop(columns=list(drop)).to_csv(path, index=False)
    return path


def test_coupon_requests_carry_the_driving_context_as_in_params(tmp_path):
    logs = coupon.load_coupons(_coupon_csv(tmp_path / "context.csv"))
    first, second = logs.presented[0]["in_params"], logs.presented[1]["in_params"]
    assert first == {"destination": "No Urgent Place", "passenger": "Alone", "weather": "Sunny", "temperature": 55,
                     "time": "2PM", "to_coupon_geq5min": 1, "to_coupon_geq15min": 0, "to_coupon_geq25min": 0,
                     "direction_same": 0, "direction_opp": 1}
    assert second["time"] == "7AM" and type(second["temperature"]) is int
    assert logs.responses[0]["response_log"]["in_params"] == first  # the response logs the request as presented
    # a copy of the data without the context columns loads too, its requests without them
    bare = coupon.load_coupons(_coupon_csv(tmp_path / "bare.csv", drop=("weather", "passanger")))
    assert "weather" not in bare.presented[0]["in_params"] and bare.presented[0]["in_params"]["destination"]


def test_runtime_logs_carry_context_columns_as_in_params_and_leave_missing_keys_out():
    exposures = pd.DataFrame({
        "request": ["q1", "q1", "q2"], "customer_id": ["c1", "c1", "c2"], "offer": ["a", "b", "a"],
        "accepted": [1, 0, 0], "datetime": pd.Timestamp("2024-03-05 10:00", tz="UTC"), "price": 1.0, "score": 0.5,
        "context_hour": [7, 7, None], "context_weather": ["Rainy", "Rainy", "Sunny"],
    })
    logs = build_runtime_logs(exposures, predictor="p", channel="web",
                              offer_matrix=pd.DataFrame({"offer_name": ["a", "b"]}),
                              customer_features=pd.DataFrame({"customer_id": ["c1", "c2"]}))
    assert [d["in_params"] for d in logs.presented] == [{"hour": 7, "weather": "Rainy"}, {"weather": "Sunny"}]
    without = build_runtime_logs(exposures.drop(columns=["context_hour", "context_weather"]), predictor="p",
                                 channel="web", offer_matrix=pd.DataFrame({"offer_name": ["a", "b"]}),
                                 customer_features=pd.DataFrame({"customer_id": ["c1", "c2"]}))
    assert all("in_params" not in d for d in without.presented)


def test_coupon_label_may_be_named_Y_or_class(tmp_path):
    for label in ("Y", "class"):
        logs = coupon.load_coupons(_coupon_csv(tmp_path / f"{label}.csv", label=label))
        assert len(logs.presented) == 3 and len(logs.responses) == 2
        # Two drivers: the rows differ in gender only once.
        assert len(logs.customer_features) == 2
        assert [d["final_result"][0]["result"]["offer"] for d in logs.presented] == [
            "coupon_restaurant_lt20_1d", "coupon_coffee_house_2h", "coupon_bar_1d"]
        assert [d["date_log"].hour for d in logs.presented] == [14, 7, 22]
        assert len(logs.offer_matrix) == 10


def test_coupon_file_without_a_needed_column_is_refused(tmp_path):
    for missing in ("coupon", "income", "Y"):
        path = _coupon_csv(tmp_path / f"no_{missing}.csv", drop=(missing,))
        with pytest.raises(ValueError, match=re.escape(missing)) as caught:
            coupon.load_coupons(path)
        assert str(path) in str(caught.value)


# --- importer ------------------------------------------------------------------------------------

IMPORT_ROWS = [
    # request r1: c1 is shown o2 then o1 (timestamp order, not file order), accepts o1.
    {"customer_id": "c1", "offer": "o1", "accepted": "yes", "timestamp": "2024-03-01T09:00:05Z",
     "price": "10", "score": "0.9", "request_id": "r1", "age": "30", "segment": "gold"},
    {"customer_id": "c1", "offer": "o2", "accepted": "0", "timestamp": "2024-03-01T10:00:00+01:00",
     "price": "20", "score": "0.8", "request_id": "r1", "age": "30", "segment": "gold"},
    {"customer_id": "c2", "offer": "o1", "accepted": "false", "timestamp": "1709283600",
     "price": "12", "score": "", "request_id": "", "age": "", "segment": "silver"},
    {"customer_id": "c1", "offer": "o3", "accepted": "TRUE", "timestamp": "2024-03-02T08:00:00.250-02:00",
     "price": "5.5", "score": "0.1", "request_id": "", "age": "31", "segment": "platinum"},
    {"customer_id": "c2", "offer": "o1", "accepted": "1", "timestamp": "2024-02-28T09:00:00Z",
     "price": "14", "score": "0.2", "request_id": "", "age": "40", "segment": "bronze"},
]


def _import_frame(rows=IMPORT_ROWS):
    return pd.DataFrame(rows)


def _documents(logs):
    return sorted(logs.presented, key=lambda d: d["uuid"]), sorted(logs.responses, key=lambda d: d["uuid"])


def test_import_csv(tmp_path):
    path = tmp_path / "exposures.csv"
    _import_frame().to_csv(path, index=False)
    logs = load_exposures_file(path, predictor="imported")
    assert logs.predictor == "imported" and logs.n_exposures == 5
    assert len(logs.presented) == 4  # r1 groups two rows; the other three are requests of their own
    grouped = [d for d in logs.presented if len(d["final_result"]) == 2]
    (r1,) = grouped
    assert [(r["rank"], r["result"]["offer"]) for r in r1["final_result"]] == [(1, "o2"), (2, "o1")]
    assert r1["date_log"] == dt.datetime(2024, 3, 1, 9, 0, tzinfo=UTC)
    assert r1["api_params"] == {"customer": "c1", "channel": "import", "numberoffers": 2}
    assert {doc["date_log"] for doc in logs.presented} == {
        dt.datetime(2024, 3, 1, 9, 0, tzinfo=UTC), dt.datetime(2024, 2, 28, 9, 0, tzinfo=UTC),
        dt.datetime(2024, 3, 2, 10, 0, 0, 250000, tzinfo=UTC)}
    accepted = {(d["api_params"]["customer"], o["offer"]) for d in logs.presented
                for o in [r["result"] for r in d["final_result"]]
                if (d["uuid"], o["offer_name"]) in _accepted_pairs(logs)}
    assert accepted == {("c1", "o1"), ("c1", "o3"), ("c2", "o1")}
    assert len(logs.responses) == 3
    # Empty score -> 0.0; offer price = median price shown.
    scores = sorted(r["result"]["score"] for d in logs.presented for r in d["final_result"])
    assert scores == [0.0, 0.1, 0.2, 0.8, 0.9]
    matrix = logs.offer_matrix.set_index("offer_name")
    assert matrix.loc["o1", "price"] == 12.0 and matrix.loc["o3", "price"] == 5.5
    assert list(matrix["offer_id"]) == [1, 2, 3]
    # Features come from each customer's latest row, numbers as numbers.
    features = logs.customer_features.set_index("customer_id")
    assert features.loc["c1", "segment"] == "platinum" and features.loc["c1", "age"] == 31
    assert features.loc["c2", "segment"] == "silver" and pd.isna(features.loc["c2", "age"])
    assert r1["scoring_data"] == {"customer": "c1", "age": 31, "segment": "platinum"}


def test_import_context_columns_are_the_requests_in_params_not_customer_features(tmp_path):
    path = tmp_path / "context.csv"
    weather, hour = ["Rainy", "Rainy", "", "Sunny", "Snowy"], ["9", "9", "7", "", "8"]
    rows = [{**row, "context_weather": w, "context_hour": h} for row, w, h in zip(IMPORT_ROWS, weather, hour)]
    _import_frame(rows).to_csv(path, index=False)
    logs = load_exposures_file(path, predictor="imported")
    assert "context_weather" not in logs.customer_features.columns
    documents = sorted(logs.presented, key=lambda d: (d["api_params"]["customer"], d["date_log"]))
    # request r1's two rows are one request with one context; empty cells are keys not sent
    assert [d["in_params"] for d in documents] == [{"weather": "Rainy", "hour": 9}, {"weather": "Sunny"},
                                                   {"weather": "Snowy", "hour": 8}, {"hour": 7}]
    assert len(documents[0]["final_result"]) == 2


def test_import_parquet_gives_the_same_documents_as_csv(tmp_path):
    frame = _import_frame()
    frame.to_csv(tmp_path / "x.csv", index=False)
    typed = frame.assign(
        accepted=frame["accepted"].str.lower().isin(["yes", "true", "1"]),
        price=frame["price"].astype(float),
        age=pd.to_numeric(frame["age"]).astype("Int64"),
    )
    typed.to_parquet(tmp_path / "x.parquet", index=False)
    from_csv = load_exposures_file(tmp_path / "x.csv", predictor="imported")
    from_parquet = load_exposures_file(tmp_path / "x.parquet", predictor="imported")
    csv_docs, parquet_docs = _documents(from_csv), _documents(from_parquet)
    # Requests without request_id are keyed by position ("line N" vs "row N"), so uuids differ.
    strip = [{k: v for k, v in d.items() if k != "uuid"} for d in csv_docs[0]]
    assert sorted(map(repr, strip)) == sorted(repr({k: v for k, v in d.items() if k != "uuid"})
                                              for d in parquet_docs[0])
    assert len(parquet_docs[1]) == len(csv_docs[1])


def test_import_parquet_timestamps_must_have_a_timezone(tmp_path):
    frame = pd.DataFrame({"customer_id": ["a", "b"], "offer": ["x", "y"], "accepted": [1, 0],
                          "timestamp": pd.to_datetime(["2024-01-01 10:00", "2024-01-02 10:00"])})
    frame.to_parquet(tmp_path / "naive.parquet")
    with pytest.raises(ImportFileError, match=r"column 'timestamp', row 1: .*no timezone.*2 bad rows"):
        load_exposures_file(tmp_path / "naive.parquet", predictor="p")
    frame["timestamp"] = frame["timestamp"].dt.tz_localize("Europe/Berlin")
    frame.to_parquet(tmp_path / "aware.parquet")
    logs = load_exposures_file(tmp_path / "aware.parquet", predictor="p")
    assert sorted(d["date_log"] for d in logs.presented)[0] == dt.datetime(2024, 1, 1, 9, 0, tzinfo=UTC)


def _bad(column, value, rows=(1, 3)):
    """IMPORT_ROWS with `column` set to `value` in the given (0-based) data rows."""
    return [{**row, column: value} if i in rows else row for i, row in enumerate(IMPORT_ROWS)]


@pytest.mark.parametrize(
    "rows, column, line, n_bad",
    [
        (_bad("price", "ten"), "price", 3, 2),
        (_bad("score", "high", rows=(4,)), "score", 6, 1),
        (_bad("accepted", "maybe"), "accepted", 3, 2),
        (_bad("accepted", "2", rows=(2,)), "accepted", 4, 1),
        (_bad("timestamp", "yesterday"), "timestamp", 3, 2),
        (_bad("timestamp", "2024-03-01T09:00:00", rows=(0, 2, 4)), "timestamp", 2, 3),
        (_bad("timestamp", "2024-03-01"), "timestamp", 3, 2),
        (_bad("timestamp", "1709283600000", rows=(2,)), "timestamp", 4, 1),
        (_bad("customer_id", " ", rows=(4,)), "customer_id", 6, 1),
        (_bad("offer", "", rows=(2, 3)), "offer", 4, 2),
        (_bad("customer_id", "c9", rows=(1,)), "request_id", 2, 2),
    ],
)
def test_import_bad_values_name_file_column_and_first_line(tmp_path, rows, column, line, n_bad):
    path = tmp_path / "bad.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    with pytest.raises(ImportFileError) as caught:
        load_exposures_file(path, predictor="p")
    error = caught.value
    message = str(error)
    assert str(path) in message and f"column {column!r}" in message and f"line {line}:" in message
    assert f"{n_bad} bad row" in message
    assert (error.column, error.line, error.n_bad) == (column, line, n_bad)


def test_import_missing_column_and_unknown_type(tmp_path):
    path = tmp_path / "no_timestamp.csv"
    _import_frame().drop(columns="timestamp").to_csv(path, index=False)
    with pytest.raises(ImportFileError, match=rf"{re.escape(str(path))}: missing required column\(s\) 'timestamp'"):
        load_exposures_file(path, predictor="p")
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(ImportFileError, match=r"x\.json: unknown file type"):
        load_exposures_file(tmp_path / "x.json", predictor="p")


@pytest.mark.parametrize("name, content, message", [
    ("empty.csv", b"", "the file is empty"),
    ("blank.csv", b"\n\n", "no header line and no data"),
    ("latin1.csv", "customer_id,offer\nJos\xe9,a\n".encode("latin-1"), r"not UTF-8 text: byte b'\\xe9' on line 2"),
    ("broken.parquet", b"PAR1 not really", "cannot be read as parquet"),
])
def test_import_files_that_cannot_be_read_name_the_file(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ImportFileError, match=rf"^{re.escape(str(path))}: {message}"):
        load_exposures_file(path, predictor="p")


def test_import_line_numbers_count_blank_lines_and_optional_columns_default(tmp_path):
    path = tmp_path / "blank.csv"
    path.write_text(
        "customer_id,offer,accepted,timestamp\n"
        "c1,o1,1,2024-03-01T09:00:00Z\n"
        "\n"
        "c1,o2,no,2024-03-01T09:00:00Z\n"
        "c2,o1,oui,2024-03-01T09:00:00Z\n"
    )
    with pytest.raises(ImportFileError, match=r"column 'accepted', line 5: .*'oui'"):
        load_exposures_file(path, predictor="p")
    path.write_text(path.read_text().replace("oui", "0"))
    logs = load_exposures_file(path, predictor="p")
    assert len(logs.presented) == 3 and len(logs.responses) == 1
    assert {r["result"]["price"] for d in logs.presented for r in d["final_result"]} == {0.0}
    assert list(logs.customer_features.columns) == ["customer_id"]


# --- simulator -----------------------------------------------------------------------------------

SMALL = dict(n_customers=300, n_offers=20, n_requests=3_000, offers_per_request=4, latent_dim=6)


@pytest.fixture(scope="module")
def traffic():
    return simulate_traffic(**SMALL, seed=7)


def test_simulator_is_deterministic_for_a_seed(traffic):
    again = simulate_traffic(**SMALL, seed=7)
    pd.testing.assert_frame_equal(again.exposures, traffic.exposures)
    assert again.logs.presented == traffic.logs.presented and again.logs.responses == traffic.logs.responses
    np.testing.assert_array_equal(again.customer_latent, traffic.customer_latent)
    other = simulate_traffic(**SMALL, seed=8)
    assert not np.array_equal(other.offer_latent, traffic.offer_latent)
    assert not other.exposures["offer"].equals(traffic.exposures["offer"])
    # The fast path and the ground truth alone give the same data for the same arguments.
    exposures, offers, customers = simulate_exposures(**SMALL, seed=7)
    pd.testing.assert_frame_equal(exposures, traffic.exposures)
    pd.testing.assert_frame_equal(offers, traffic.logs.offer_matrix)
    world = simulate_world(SMALL["n_customers"], SMALL["n_offers"], SMALL["latent_dim"], seed=7)
    np.testing.assert_array_equal(world.offer_latent, traffic.offer_latent)


def test_simulator_sizes_and_shapes(traffic):
    logs, exposures = traffic.logs, traffic.exposures
    assert len(logs.presented) == 3_000 and logs.n_exposures == len(exposures) == 12_000
    assert len(logs.offer_matrix) == 20 and len(logs.customer_features) == 300
    assert traffic.customer_latent.shape == (300, 6) and traffic.offer_latent.shape == (20, 6)
    assert {"segment", "age", "region"} <= set(logs.customer_features.columns)
    assert {"category", "price", "cost", "static_offers", "offer_id"} <= set(logs.offer_matrix.columns)
    for doc in logs.presented[:100]:
        offers = [r["result"]["offer"] for r in doc["final_result"]]
        assert len(set(offers)) == 4 and [r["rank"] for r in doc["final_result"]] == [1, 2, 3, 4]
        assert doc["scoring_data"]["customer"] == doc["api_params"]["customer"]
    dates = [d["date_log"] for d in logs.presented]
    assert min(dates) >= dt.datetime(2024, 1, 1, tzinfo=UTC) and max(dates) < dt.datetime(2024, 1, 31, tzinfo=UTC)
    assert max(dates) - min(dates) > dt.timedelta(days=28)
    # Popularity-skewed: the most shown offer is shown far more than the least shown one.
    counts = exposures["offer"].value_counts()
    assert counts.iloc[0] > 3 * counts.iloc[-1]


def test_simulator_accepts_follow_the_latent_structure(traffic):
    exposures = traffic.exposures
    rate = exposures["accepted"].mean()
    assert 0.10 <= rate <= 0.25
    affinity = traffic.true_affinity(exposures["customer_id"], exposures["offer"])
    accepted = exposures["accepted"].to_numpy() == 1
    assert affinity[accepted].mean() > affinity[~accepted].mean() + 0.5
    # The responses are the accepted rows.
    assert len(_accepted_pairs(traffic.logs)) == int(exposures["accepted"].sum())
    # Observable features carry part of the structure.
    world = traffic.world
    features = world.customer_features
    assert np.corrcoef(features["age"], world.customer_latent[:, 0])[0, 1] > 0.5
    assert (features["segment"].to_numpy() == np.array([f"segment_{c}" for c in "abcde"])[world.customer_segment]).all()
    assert np.corrcoef(world.offer_matrix["price"], world.offer_latent[:, 1])[0, 1] > 0.5


def test_simulator_default_sizes():
    traffic = simulate_traffic()
    assert traffic.logs.predictor == "simulated_offers"
    assert len(traffic.logs.presented) == 20_000 and traffic.logs.n_exposures == 80_000
    assert len(traffic.logs.offer_matrix) == 50 and traffic.world.customer_latent.shape == (2_000, 8)
    assert 0.10 <= traffic.exposures["accepted"].mean() <= 0.25
