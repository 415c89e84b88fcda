"""The flatten and training-frame assets, materialised against the real server."""

import datetime as dt
import json

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
UNDATED = dg.AssetKey(["logging", "ecosystemruntime_flatten_undated"])
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
        "has_accepts": True,
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


def _metadata(result, key) -> dict:
    [event] = [m for m in result.get_asset_materialization_events() if m.asset_key == key]
    return {k: getattr(v, "value", v) for k, v in event.materialization.metadata.items()}


def test_quiet_days_materialise_empty_slices_with_a_note(mongo, store):
    _seed_logs(store)
    assert _flatten(mongo, tags=RANGE, run_config=LENIENT).success
    # a day without any logs: an empty slice, and the day's earlier rows (none here) would be gone
    quiet = _flatten(mongo, partition_key="2024-03-10", run_config=LENIENT)
    assert quiet.success
    assert _metadata(quiet, FLATTEN)["note"] == "no presented documents in this window: the slice is empty"
    committed = SlicedCollection(store, names.FLATTEN).record()["slices"]
    assert committed["2024-03-10"]["rows"] == 0
    # a day with requests but no response yet: every exposure a decline, said so
    store.collection(names.PRESENTED).insert_one(presented("q1", when=DAY + dt.timedelta(days=6, hours=3)))
    declines = _flatten(mongo, partition_key="2024-03-11", run_config=LENIENT)
    assert declines.success
    metadata = _metadata(declines, FLATTEN)
    assert metadata["note"] == "no responses for this window's documents: every exposure is a decline"
    assert metadata["exposures"] == 3 and metadata["accepted"] == 0
    assert len(SlicedCollection(store, names.FLATTEN).read()) == 8 + 3


def test_documents_without_a_readable_date_are_found_counted_and_kept(mongo, store):
    _seed_logs(store)
    bad = [presented("u1", date_log=None), presented("u2", date_log="yesterday"), presented("u3", date_log=1234),
           {k: v for k, v in presented("u4").items() if k != "date_log"}]
    store.collection(names.PRESENTED).insert_many(bad)
    store.collection(names.RESPONSES).insert_one({k: v for k, v in response("r1").items() if k != "date_log"})
    # a response whose date has no timezone belongs to a day: that day's flatten sets it aside
    store.collection(names.RESPONSES).insert_one(response("r2", accepted=("b",), when="2024-03-05T12:00:00"))
    result = dg.materialize(ASSETS, resources=build_resources(mongo), tags=RANGE, run_config=LENIENT,
                            selection=[FLATTEN, QUARANTINE, UNDATED], raise_on_error=False)
    undated = SlicedCollection(store, names.FLATTEN_UNDATED).read().sort_values("detail")
    assert sorted(zip(undated["source"], undated["uuid"].fillna("-"))) == [
        ("presented", "u1"), ("presented", "u2"), ("presented", "u3"), ("presented", "u4"), ("response", "r1")]
    assert all(json.loads(d)["uuid"] in {"u1", "u2", "u3", "u4", "r1"} for d in undated["document"])
    checks = {(e.asset_key, e.check_name): e.passed for e in result.get_asset_check_evaluations()}
    assert checks[(UNDATED, "no_undated_documents")] is False
    quarantine = SlicedCollection(store, names.FLATTEN_QUARANTINE).read()
    naive = quarantine[quarantine["reason"] == "naive_datetime"]
    assert naive["source"].tolist() == ["response"] and naive["uuid"].tolist() == ["r2"]
    # the accept it carried is not counted (nor silently lost: it is in the quarantine)
    flat = SlicedCollection(store, names.FLATTEN).read()
    assert flat.loc[(flat["uuid"] == "r2") & (flat["offer"] == "b"), "accepted"].tolist() == [0]


@pytest.mark.parametrize("order", [("2024-03-05", "2024-03-06"), ("2024-03-06", "2024-03-05")])
def test_a_uuid_presented_on_two_days_belongs_to_the_first_whichever_is_flattened_first(mongo, store, order):
    store.collection(names.PRESENTED).insert_many([
        presented("dup", customer="first", offers=("a", "b")),
        presented("dup", customer="again", offers=("a", "c"), when=DAY + dt.timedelta(days=1, hours=2)),
    ])
    anything = {"ops": {"ecosystemruntime_flatten": {"config": {"max_rejected_share": 1.0}}}}
    for day in order:
        assert _flatten(mongo, partition_key=day, run_config=anything).success
    flat = SlicedCollection(store, names.FLATTEN).read()
    assert sorted(zip(flat["customer_id"], flat["offer"])) == [("first", "a"), ("first", "b")]
    quarantine = SlicedCollection(store, names.FLATTEN_QUARANTINE).read()
    assert quarantine["reason"].tolist() == ["duplicate_uuid"]
    assert "first presented at 2024-03-05T10:00:00+00:00" in quarantine["detail"].iloc[0]


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


def test_request_context_is_kept_from_the_logs_to_the_training_frame(mongo, store):
    _seed_logs(store)
    store.collection(names.PRESENTED).insert_many([
        presented("x1", customer="c1", offers=("a", "b"), in_params={"weather": "Rainy", "temperature": 55}),
        presented("x2", customer="c2", offers=("c",), in_params={"weather": ["not", "a", "scalar"], "temperature": 80}),
    ])
    store.collection(names.RESPONSES).insert_one(response("x1", accepted=("b",)))
    flattened = _flatten(mongo, tags=RANGE, run_config=LENIENT)
    assert flattened.success
    by_key = {m.asset_key: m.metadata for m in flattened.asset_materializations_for_node("ecosystemruntime_flatten")}
    assert by_key[FLATTEN]["context_columns"].value == ["context_temperature", "context_weather"]
    assert by_key[FLATTEN]["dropped_context_non_scalar"].value == 1  # the list; x2's exposure is kept
    flat = SlicedCollection(store, names.FLATTEN).read().set_index(["uuid", "offer"])
    assert flat.loc[("x1", "b"), "context_weather"] == "Rainy" and flat.loc[("x1", "b"), "accepted"] == 1
    assert flat.loc[("x2", "c"), "context_temperature"] == 80 and pd.isna(flat.loc[("x2", "c"), "context_weather"])
    assert pd.isna(flat.loc[("r1", "a"), "context_weather"])  # requests without in_params: absent
    assert _training_frame(mongo, predictor="p1", min_accepted_rows=1).success
    frame = SlicedCollection(store, names.TRAINING_FRAME).read().set_index(["uuid", "offer"])
    assert frame.loc[("x1", "a"), "context_weather"] == "Rainy"
    assert frame.loc[("x2", "c"), "context_temperature"] == 80.0
    # absent context is not filled like a feature ("unknown", the median): the towers make it neutral
    assert pd.isna(frame.loc[("r1", "a"), "context_weather"]) and pd.isna(frame.loc[("r1", "a"), "context_temperature"])
