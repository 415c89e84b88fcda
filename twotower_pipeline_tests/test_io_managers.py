"""The MongoDB IO managers against the real server: slice rewrites, ranges, load-all, artefacts."""

import datetime as dt
import os

import dagster as dg
import numpy as np
import pandas as pd
import pytest
from pymongo import monitoring

from twotower_pipeline.defs.io_managers import GridFSArtefactIOManager, MongoFrameIOManager
from twotower_pipeline.store import artefacts, slices
from twotower_pipeline.store.client import MongoStore
from twotower_pipeline.store.slices import SlicedCollection

DAYS = dg.DailyPartitionsDefinition(start_date="2024-01-01", end_date="2024-01-10")
RANGE_TAGS = {"dagster/asset_partition_range_start": "2024-01-02", "dagster/asset_partition_range_end": "2024-01-04"}


def _day_rows(window: dg.TimeWindow, version: str) -> pd.DataFrame:
    days = pd.date_range(window.start, window.end, freq="D", inclusive="left")
    return pd.DataFrame(
        {"day": [d for d in days for _ in range(3)], "n": list(range(3)) * len(days), "version": version}
    )


def _partitioned_assets(version: str, extra_row: bool = False):
    @dg.asset(
        key=["testdb", "events"],
        partitions_def=DAYS,
        io_manager_key="frames",
        metadata={"partition_expr": "day"},
        backfill_policy=dg.BackfillPolicy.single_run(),
    )
    def events(context: dg.AssetExecutionContext) -> pd.DataFrame:
        frame = _day_rows(context.partition_time_window, version)
        if extra_row:  # a row that belongs to a day outside the partition being written
            frame.loc[len(frame)] = [pd.Timestamp("2023-12-31", tz="UTC"), 9, version]
        return frame

    @dg.asset(key=["testdb", "summary"], io_manager_key="frames", deps=[])
    def summary(events: pd.DataFrame) -> pd.DataFrame:
        return events.groupby("version").size().rename("rows").reset_index()

    @dg.asset(
        key=["testdb", "daily_copy"], partitions_def=DAYS, io_manager_key="frames", metadata={"partition_expr": "day"}
    )
    def daily_copy(events: pd.DataFrame) -> pd.DataFrame:
        return events

    return [events, summary, daily_copy]


def _materialize(mongo, assets, **kwargs):
    return dg.materialize(assets, resources={"frames": MongoFrameIOManager(mongo=mongo)}, **kwargs)


def _stored(store, name="events") -> pd.DataFrame:
    return SlicedCollection(store, f"testdb.{name}").read().sort_values(["day", "n"]).reset_index(drop=True)


def test_rewriting_a_partition_replaces_only_that_slice(mongo, store):
    assets = _partitioned_assets("v1")
    for day in ("2024-01-02", "2024-01-03"):
        assert _materialize(mongo, assets, partition_key=day, selection=["testdb/events"]).success
    assert _materialize(
        mongo, _partitioned_assets("v2"), partition_key="2024-01-03", selection=["testdb/events"]
    ).success
    stored = _stored(store)
    assert len(stored) == 6
    by_day = stored.groupby(stored["day"].dt.strftime("%Y-%m-%d"))["version"].agg(set).to_dict()
    assert by_day == {"2024-01-02": {"v1"}, "2024-01-03": {"v2"}}
    # no index entry per row: a read of any number of slices is one pass with their write ids
    assert list(store.collection("testdb.events").index_information()) == ["_id_"]


def test_a_range_is_written_in_one_run_and_loaded_whole_downstream(mongo, store):
    result = _materialize(mongo, _partitioned_assets("v1"), selection=["testdb/events"], tags=RANGE_TAGS)
    assert result.success
    assert sorted(_stored(store)["day"].dt.day.unique()) == [2, 3, 4]
    # an unpartitioned asset downstream loads every partition
    assert _materialize(mongo, _partitioned_assets("v1"), selection=["testdb/summary"]).success
    summary = SlicedCollection(store, "testdb.summary").read()
    assert summary.to_dict("records") == [{"version": "v1", "rows": 9}]
    # a partitioned asset downstream loads just its own slice
    assert _materialize(
        mongo, _partitioned_assets("v1"), partition_key="2024-01-03", selection=["testdb/daily_copy"]
    ).success
    assert _stored(store, "daily_copy")["day"].dt.day.unique().tolist() == [3]


def test_rows_outside_the_partition_are_refused_and_nothing_is_written(mongo, store):
    assert _materialize(
        mongo, _partitioned_assets("v1"), partition_key="2024-01-02", selection=["testdb/events"]
    ).success
    message = "1 of 4 rows lie outside the partition.* `day` not in 2024-01-02"
    with pytest.raises(dg.DagsterInvariantViolationError, match=message):
        _materialize(
            mongo, _partitioned_assets("v2", extra_row=True), partition_key="2024-01-02", selection=["testdb/events"]
        )
    assert set(_stored(store)["version"]) == {"v1"}


DAY_2 = ["2024-01-02"]


def _day_frame(version: str, rows: int) -> pd.DataFrame:
    return pd.DataFrame({"day": pd.to_datetime(["2024-01-02"] * rows, utc=True), "v": [version] * rows})


def test_a_failed_write_leaves_the_previous_slice_whole(store, monkeypatch):
    sliced = SlicedCollection(store, "testdb.events")
    sliced.write(_day_frame("old", 3), DAY_2)
    monkeypatch.setattr(slices, "INSERT_BATCH", 2)
    new = _day_frame("new", 5).astype({"v": object})
    new.loc[4, "v"] = object()  # not encodable: the third insert batch fails
    with pytest.raises(Exception):
        sliced.write(new, DAY_2)
    assert sorted(sliced.read()["v"]) == ["old"] * 3
    assert store.collection("testdb.events").count_documents({}) == 3  # the failed write removed its rows
    assert sliced.record()["leases"] == {}  # and let go of the slice


def test_rows_of_an_uncommitted_write_are_invisible_and_cleaned_by_the_next_commit(store):
    sliced = SlicedCollection(store, "testdb.events")
    sliced.write(_day_frame("v1", 3), DAY_2)
    # what a write killed before its commit leaves behind: rows tagged with a write id never committed
    leftovers = [{"day": dt.datetime(2024, 1, 2, 5, tzinfo=dt.timezone.utc), "v": "killed",
                  slices.WRITE_ID_FIELD: "dead.0"} for _ in range(4)]
    store.collection("testdb.events").insert_many(leftovers)
    store.collection(slices.COMMITS).update_one({"_id": "testdb.events"}, {"$set": {"pending.dead": {
        "write_ids": ["dead.0"], "keys": ["2024-01-02"], "owner": {"host": "elsewhere", "pid": 1}}}})
    assert sorted(sliced.read()["v"]) == ["v1"] * 3
    assert sliced.count() == 3
    sliced.write(_day_frame("v2", 2), DAY_2)
    assert sorted(sliced.read()["v"]) == ["v2"] * 2
    assert store.collection("testdb.events").count_documents({}) == 2
    committed = sliced.record()["slices"]["2024-01-02"]
    assert committed["rows"] == 2 and committed["owner"]["pid"] == os.getpid()


def test_a_collection_no_commit_wrote_is_read_as_it_is(store):
    store.collection("testdb.foreign").insert_many([{"a": 1}, {"a": 2}])
    assert sorted(SlicedCollection(store, "testdb.foreign").read()["a"]) == [1, 2]


def test_slice_keys_that_are_not_field_names_are_encoded(store):
    odd = ["a.b $c"]
    sliced = SlicedCollection(store, "testdb.static")
    sliced.write(pd.DataFrame({"k": ["a.b $c"] * 2}), odd)
    assert sliced.committed_write_ids() == {"a.b $c": sliced.record()["slices"]["a%2Eb%20%24c"]["write_id"]}
    assert len(sliced.read()) == 2


def test_missing_partition_field_metadata_is_a_clear_error(mongo):
    @dg.asset(key=["testdb", "nofield"], partitions_def=DAYS, io_manager_key="frames")
    def nofield() -> pd.DataFrame:
        return pd.DataFrame({"x": [1]})

    with pytest.raises(dg.DagsterInvariantViolationError, match="no `partition_expr` metadata"):
        _materialize(mongo, [nofield], partition_key="2024-01-02")


def test_unpartitioned_rewrite_replaces_the_collection_whole(mongo, store):
    def table(rows):
        @dg.asset(key=["testdb", "table"], io_manager_key="frames", metadata={"mongo_indexes": [["k"]]})
        def table_asset() -> pd.DataFrame:
            return pd.DataFrame(
                {
                    "k": range(rows),
                    "x": np.arange(rows) * 0.5,
                    "when": pd.Timestamp("2024-01-01", tz="UTC"),
                    "tags": [["a"]] * rows,
                }
            )

        return table_asset

    assert _materialize(mongo, [table(5)]).success
    assert _materialize(mongo, [table(3)]).success
    stored = SlicedCollection(store, "testdb.table").read()
    assert len(stored) == 3 and stored["tags"].tolist() == [["a"]] * 3
    assert str(stored["when"].dt.tz) == "UTC"
    assert "k_1" in store.collection("testdb.table").index_information()
    assert store.collection("testdb.table").count_documents({}) == 3  # the replaced rows are gone


@artefacts.register_artefact
class LinearModel:
    """A tiny artefact: weights as bytes, shape in the JSON config."""

    artefact_kind = "test_linear_model"

    def __init__(self, weights: np.ndarray):
        self.weights = weights

    def to_artefact(self):
        return {"shape": list(self.weights.shape)}, self.weights.astype("<f8").tobytes()

    @classmethod
    def from_artefact(cls, config, state):
        return cls(np.frombuffer(state, dtype="<f8").reshape(config["shape"]))


def test_artefacts_round_trip_through_gridfs_and_keep_versions(mongo, store):
    def model_asset(scale):
        @dg.asset(key="linear_model", io_manager_key="artefacts")
        def linear_model() -> LinearModel:
            return LinearModel(np.arange(6.0).reshape(2, 3) * scale)

        return linear_model

    @dg.asset(key="model_sum")
    def model_sum(linear_model: LinearModel) -> float:
        return float(linear_model.weights.sum())

    resources = {"artefacts": GridFSArtefactIOManager(mongo=mongo)}
    assert dg.materialize([model_asset(1)], resources=resources).success
    result = dg.materialize([model_asset(2), model_sum], resources=resources)
    assert result.output_for_node("model_sum") == 30.0
    assert artefacts.artefact_versions(store, "linear_model") == 2
    files = store.database(artefacts.ARTEFACT_DATABASE)[f"{artefacts.ARTEFACT_BUCKET}.files"]
    assert {f["metadata"]["kind"] for f in files.find()} == {"test_linear_model"}


def test_a_downstream_step_loads_the_version_its_own_run_wrote_not_the_newest(mongo, store, tmp_path):
    @dg.asset(key="linear_model", io_manager_key="artefacts")
    def linear_model() -> LinearModel:
        return LinearModel(np.ones((2, 2)))

    @dg.asset(deps=[linear_model])
    def concurrent_run() -> None:
        """Another run saving a newer version between this run's two steps."""
        artefacts.save_artefact(store, "linear_model", LinearModel(np.full((2, 2), 100.0)),
                                {"dagster_run_id": "another-run"})

    @dg.asset(deps=[concurrent_run])
    def model_sum(linear_model: LinearModel) -> float:
        return float(linear_model.weights.sum())

    resources = {"artefacts": GridFSArtefactIOManager(mongo=mongo)}
    with dg.DagsterInstance.local_temp(str(tmp_path)) as instance:
        result = dg.materialize([linear_model, concurrent_run, model_sum], resources=resources, instance=instance)
        assert result.output_for_node("model_sum") == 4.0
        # a later run of the downstream alone reads what the latest materialisation recorded
        artefacts.save_artefact(store, "linear_model", LinearModel(np.full((2, 2), 7.0)), {"dagster_run_id": "x"})
        later = dg.materialize([linear_model, concurrent_run, model_sum], resources=resources, instance=instance,
                               selection=["model_sum"])
        assert later.output_for_node("model_sum") == 4.0
    assert artefacts.artefact_versions(store, "linear_model") == 3


def test_unregistered_objects_are_not_stored(mongo):
    @dg.asset(io_manager_key="artefacts")
    def not_an_artefact() -> dict:
        return {"a": 1}

    with pytest.raises(TypeError, match="not a registered artefact kind"):
        dg.materialize([not_an_artefact], resources={"artefacts": GridFSArtefactIOManager(mongo=mongo)})


def test_a_day_is_read_through_its_committed_write_id_and_rewrites_leave_no_old_rows(mongo, store):
    @dg.asset(key=["testdb", "timed"], partitions_def=DAYS, io_manager_key="frames",
              metadata={"partition_expr": "when"})
    def timed(context: dg.AssetExecutionContext) -> pd.DataFrame:
        start = pd.Timestamp(context.partition_time_window.start)
        edges = [start, start + pd.Timedelta(hours=23, minutes=59, seconds=59, milliseconds=900)]
        return pd.DataFrame({"when": edges, "day": context.partition_key})

    @dg.asset(
        key=["testdb", "timed_copy"], partitions_def=DAYS, io_manager_key="frames", metadata={"partition_expr": "when"}
    )
    def timed_copy(timed: pd.DataFrame) -> pd.DataFrame:
        return timed

    for day in ("2024-01-02", "2024-01-03", "2024-01-02"):
        assert _materialize(mongo, [timed], partition_key=day).success
    collection = store.collection("testdb.timed")
    assert sorted(d["day"] for d in collection.find()) == ["2024-01-02", "2024-01-02", "2024-01-03", "2024-01-03"]
    assert list(collection.index_information()) == ["_id_"]
    assert _materialize(mongo, [timed, timed_copy], partition_key="2024-01-03", selection=["testdb/timed_copy"]).success
    assert set(SlicedCollection(store, "testdb.timed_copy").read()["day"]) == {"2024-01-03"}


def test_reading_counting_and_cleaning_any_number_of_slices_is_one_command_each(mongo_uri, store):
    """Slices are not indexed by write id: each read, count or cleanup names all its write ids at
    once, so the collection is passed over once, however many days it covers."""
    days = [f"2024-01-{d:02d}" for d in range(1, 11)]
    frame = pd.DataFrame({"day": np.repeat(days, 3), "n": np.tile([0, 1, 2], len(days))})
    sliced = SlicedCollection(store, "testdb.passes")
    sliced.write(frame, days, np.repeat(np.arange(len(days)), 3))
    sent = _Commands(store.database_prefix + "testdb")
    monitoring.register(sent)
    counted = MongoStore(f"{mongo_uri}{'&' if '?' in mongo_uri else '?'}appname=one-pass-test", store.database_prefix)
    watched = SlicedCollection(counted, "testdb.passes")
    assert len(watched.read(days[2:9])) == 21 and watched.count(days[:5]) == 15
    # count_documents is an aggregate on the wire
    assert [name for name, collection in sent.seen if collection == "passes"] == ["find", "aggregate"]
    sent.seen.clear()
    watched.write(frame.iloc[:6], days[:2], np.repeat([0, 1], 3))  # replaces two days: one cleanup
    assert [name for name, collection in sent.seen if collection == "passes"] == ["insert", "delete"]
    assert sorted(sliced.read()["n"].tolist()) == sorted(frame["n"].tolist())
    assert store.collection("testdb.passes").count_documents({}) == 30


class _Commands(monitoring.CommandListener):
    """The commands a client sends to one database, with the collection each names."""

    def __init__(self, database: str):
        self.database, self.seen = database, []

    def started(self, event):
        if event.database_name == self.database:
            self.seen.append((event.command_name, event.command.get(event.command_name)))

    def succeeded(self, event):
        pass

    def failed(self, event):
        pass
