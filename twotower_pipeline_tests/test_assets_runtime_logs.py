"""The flatten and training-frame assets, materialised against the real server."""

import datetime as dt

import dagster as dg
import pandas as pd
import pytest

from twotower_pipeline.definitions import build_resources, defs
from twotower_pipeline.defs.assets.training_data import TrainingFrameConfig
from twotower_pipeline.store import names
from twotower_pipeline.store.slices import SlicedCollection
from twotower_pipeline_tests.runtime_docs import DAY, presented, response

FLATTEN = dg.AssetKey(["logging", "ecosystemruntime_flatten"])
QUARANTINE = dg.AssetKey(["logging", "ecosystemruntime_flatten_quarantine"])
ASSETS = list(defs.assets)


def _seed_logs(store):
    next_day = DAY + dt.timedelta(days=1, hours=9)
    store.collection(names.PRESENTED).insert_many(
        [
            presented("r1", customer="c1", offers=("a", "b", "c")),
            presented("r2", customer="c2", offers=("b", "c")),
            presented("r3", customer="c1", offers=("a", "c"), when=next_day),
            presented("bad", api_params={}, params=[]),
            presented("r4", customer="c3", offers=("a",), predictor="other"),
        ]
    )
    store.collection(names.RESPONSES).insert_many(
        [
            response("r1", accepted=("b",)),
            response("r2", accepted=("c",)),
            response("r3", accepted=("a",), when=next_day + dt.timedelta(minutes=5)),
            response("ghost", when=next_day),
        ]
    )
    store.collection(names.CUSTOMER_FEATURES).insert_many(
        [
            {"customer_id": "c1", "age": 30, "segment": "gold"},
            {"customer_id": "c2", "age": None, "segment": None},
        ]
    )
    store.collection(names.OFFER_MATRIX).insert_many(
        [
            {"offer_name": o, "offer_id": i, "price": 1.0 + i, "cost": 0.5, "category": cat}
            for i, (o, cat) in enumerate([("a", "x"), ("b", "y"), ("c", "x")])
        ]
    )


def _flatten(mongo, run_config=None, **kwargs):
    return dg.materialize(
        ASSETS,
        resources=build_resources(mongo),
        selection=[FLATTEN, QUARANTINE],
        run_config=run_config,
        **kwargs,
    )


LENIENT = {"ops": {"ecosystemruntime_flatten": {"config": {"max_rejected_share": 0.5}}}}
RANGE = {"dagster/asset_partition_range_start": "2024-03-05", "dagster/asset_partition_range_end": "2024-03-06"}


def test_flatten_backfills_a_range_in_one_run_with_quarantine_and_checks(mongo, store):
    _seed_logs(store)
    result = _flatten(mongo, tags=RANGE, raise_on_error=False)
    # 2 of 10 items rejected > 5%: the blocking check fails the run, after the good rows and the
    # quarantine are written, so nothing downstream runs on the slice
    assert not result.success
    flat = SlicedCollection(store, names.FLATTEN).read().sort_values(["uuid", "offer"])
    assert list(zip(flat["uuid"], flat["offer"], flat["accepted"])) == [
        ("r1", "a", 0),
        ("r1", "b", 1),
        ("r1", "c", 0),
        ("r2", "b", 0),
        ("r2", "c", 1),
        ("r3", "a", 1),
        ("r3", "c", 0),
        ("r4", "a", 0),
    ]
    quarantine = SlicedCollection(store, names.FLATTEN_QUARANTINE).read()
    assert sorted(quarantine["reason"]) == ["missing_customer", "orphan_response"]
    # the runtime's collections were seeded without indexes; the flatten reads them by date
    assert {"date_log_1", "uuid_1"} <= set(store.collection(names.PRESENTED).index_information())
    assert {"date_log_1", "uuid_1"} <= set(store.collection(names.RESPONSES).index_information())
    materialization = result.asset_materializations_for_node("ecosystemruntime_flatten")
    by_key = {m.asset_key: m.metadata for m in materialization}
    assert by_key[FLATTEN]["exposures"].value == 8 and by_key[FLATTEN]["accepted"].value == 3
    assert by_key[QUARANTINE]["rejected_orphan_response"].value == 1
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks == {
        "schema": True,
        "no_null_keys": True,
        "accept_rate_between_0_and_1": True,
        "rejected_share_below_threshold": False,
    }
    # re-materialising one day rewrites it and leaves the other alone
    store.collection(names.RESPONSES).insert_one(response("r2", accepted=("b",)))
    _flatten(mongo, partition_key="2024-03-05", raise_on_error=False)
    flat = SlicedCollection(store, names.FLATTEN).read()
    assert len(flat) == 8 and int(flat["accepted"].sum()) == 4
    assert len(SlicedCollection(store, names.FLATTEN_QUARANTINE).read()) == 2


def test_rejected_share_threshold_is_configurable(mongo, store):
    _seed_logs(store)
    result = _flatten(mongo, tags=RANGE, run_config=LENIENT)
    assert result.success
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks["rejected_share_below_threshold"] is True


def _training_frame(mongo, **config):
    return dg.materialize(
        ASSETS,
        resources=build_resources(mongo),
        selection=["training_frame"],
        run_config={"ops": {"training_frame": {"config": config}}},
        raise_on_error=False,
    )


def test_training_frame_joins_features_and_fills_gaps(mongo, store):
    _seed_logs(store)
    assert _flatten(mongo, tags=RANGE, run_config=LENIENT).success
    result = _training_frame(mongo, predictor="p1", min_accepted_rows=1)
    assert result.success
    frame = SlicedCollection(store, names.TRAINING_FRAME).read().sort_values(["customer_id", "offer"])
    assert set(frame["customer_id"]) == {"c1", "c2"}  # predictor "other" is not in this slice
    c2 = frame[frame["customer_id"] == "c2"]
    assert c2["age"].tolist() == [30.0, 30.0]  # missing numeric -> the column's median
    assert c2["segment"].tolist() == ["unknown", "unknown"]
    assert frame["price_offer"].notna().all() and "category" in frame.columns
    metadata = result.asset_materializations_for_node("training_frame")[0].metadata
    assert metadata["rows"].value == 7 and metadata["accepted"].value == 3
    assert metadata["customers"].value == 2 and metadata["offers"].value == 3
    assert "| customer_id" in metadata["preview"].value
    assert all(e.passed for e in result.get_asset_check_evaluations())
    # a window keeps only its days
    assert _training_frame(mongo, predictor="p1", from_date="2024-03-06", min_accepted_rows=1).success
    assert set(SlicedCollection(store, names.TRAINING_FRAME).read()["uuid"]) == {"r3"}


def test_training_frame_checks_block_a_frame_with_too_few_accepts(mongo, store):
    _seed_logs(store)
    assert _flatten(mongo, tags=RANGE, run_config=LENIENT).success
    result = _training_frame(mongo, predictor="p1", min_accepted_rows=100)
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks["enough_accepted_rows"] is False and checks["schema"] is True


def test_training_frame_for_an_unknown_predictor_says_what_exists(mongo, store):
    _seed_logs(store)
    assert _flatten(mongo, tags=RANGE, run_config=LENIENT).success
    result = _training_frame(mongo, predictor="nope")
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    message = failure.step_failure_data.error.message + str(failure.step_failure_data.user_failure_data)
    assert "no exposures for predictor 'nope'" in message and "['other', 'p1']" in message


@pytest.mark.parametrize(
    "config, message",
    [
        ({"predictor": "p1", "from_date": "2024-03-06", "to_date": "2024-03-05"}, "must be before to_date"),
        ({"predictor": "p1", "from_date": "05/03/2024"}, "is not an ISO date"),
        ({"predictor": ""}, "at least 1 character"),
    ],
)
def test_training_window_config_is_validated(config, message):
    with pytest.raises(Exception, match=message):
        TrainingFrameConfig(**config)


def test_movielens_logs_flatten_to_every_rating(mongo, store, shared_data):
    from twotower_pipeline.ingest.movielens import load_movielens
    from twotower_pipeline.ingest.runtime_logs import write_runtime_logs

    logs = load_movielens(shared_data / "ml-100k")
    assert write_runtime_logs(store, logs)["written"] is True
    assert write_runtime_logs(store, logs)["written"] is False  # idempotent
    result = _flatten(
        mongo,
        tags={"dagster/asset_partition_range_start": "1997-09-20", "dagster/asset_partition_range_end": "1998-04-22"},
    )
    assert result.success
    flat = SlicedCollection(store, names.FLATTEN).read(columns=["customer_id", "offer", "accepted"])
    ratings = pd.read_csv(shared_data / "ml-100k" / "u.data", sep="\t", names=["u", "i", "r", "t"])
    assert len(flat) == len(ratings) == 100_000
    expected = {(str(u), f"movie_{i}"): int(r >= 4) for u, i, r in zip(ratings["u"], ratings["i"], ratings["r"])}
    assert dict(zip(zip(flat["customer_id"], flat["offer"]), flat["accepted"])) == expected
    assert SlicedCollection(store, names.FLATTEN_QUARANTINE).read().empty
