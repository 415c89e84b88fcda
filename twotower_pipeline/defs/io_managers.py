"""IO managers over MongoDB: DataFrames (partition-aware, after Dagster's DbIOManager) and
model artefacts (GridFS)."""

from typing import Any

import dagster as dg
import numpy as np
import pandas as pd
from pydantic import Field

from twotower_pipeline.defs.resources import MongoResource
from twotower_pipeline.store import artefacts, slices

#: Definition metadata read by the DataFrame IO manager.
COLLECTION_KEY = "mongo_collection"  # "database.collection"; default: the asset key's two parts
PARTITION_KEY = "partition_expr"  # the field that holds the partition (required when partitioned)
INDEXES_KEY = "mongo_indexes"  # list of field lists to index (the write id is not: store/slices.py)


def _meta(context, key: str, default=None):
    metadata = context.definition_metadata or {}
    value = metadata.get(key, default)
    return value.value if isinstance(value, dg.MetadataValue) else value


def collection_location(context) -> str:
    location = _meta(context, COLLECTION_KEY)
    if location:
        return location
    path = context.asset_key.path
    if len(path) != 2:
        raise dg.DagsterInvariantViolationError(
            f"asset {context.asset_key.to_user_string()} needs `{COLLECTION_KEY}` metadata or a "
            "two-part key (database, collection) to be stored in MongoDB"
        )
    return ".".join(path)


def _written_slices(context: dg.OutputContext, frame: pd.DataFrame) -> tuple[list[str], np.ndarray]:
    """The slice keys an output writes (its partition keys, or the one slice of an unpartitioned
    asset) and the slice of each row. Rows outside the partitions being written are refused."""
    if not context.has_asset_partitions:
        return [slices.ALL], np.zeros(len(frame), dtype=np.int64)
    field = _meta(context, PARTITION_KEY)
    if not field:
        raise dg.DagsterInvariantViolationError(
            f"partitioned asset {context.asset_key.to_user_string()} has no `{PARTITION_KEY}` metadata "
            "naming the field that holds its partition"
        )
    keys = list(context.asset_partition_keys)
    partitions_def = context.asset_partitions_def
    if field not in frame.columns:
        row_slices, outside = np.full(len(frame), -1), np.ones(len(frame), dtype=bool)
    elif isinstance(partitions_def, dg.TimeWindowPartitionsDefinition):
        windows = [partitions_def.time_window_for_partition_key(k) for k in keys]
        values = pd.to_datetime(frame[field], utc=True)
        starts = pd.DatetimeIndex([w.start for w in windows]).tz_convert("UTC")
        ends = pd.DatetimeIndex([w.end for w in windows]).tz_convert("UTC")
        row_slices = np.clip(np.searchsorted(starts, values, side="right") - 1, 0, len(keys) - 1)
        outside = (values < starts[row_slices]) | (values >= ends[row_slices]) | values.isna()
        outside = np.asarray(outside)
    else:
        row_slices = frame[field].astype(str).map({k: i for i, k in enumerate(keys)}).fillna(-1).to_numpy()
        outside = row_slices < 0
    if outside.any():
        written = keys[0] if len(keys) == 1 else f"{keys[0]}..{keys[-1]}"
        raise dg.DagsterInvariantViolationError(
            f"{context.asset_key.to_user_string()}: {int(outside.sum())} of {len(frame)} rows lie outside the "
            f"partition(s) being written: `{field}` not in {written}"
        )
    return keys, np.asarray(row_slices, dtype=np.int64)


class MongoFrameIOManager(dg.ConfigurableIOManager):
    """DataFrames in collections, written and read through slice commits (see `store.slices`).

    Partitioned: a partition is a slice; writing a partition (or a range) replaces exactly those
    slices, committed at once. Unpartitioned: the collection is one slice. Readers see committed
    rows only, every slice of a read found by its write id in one pass. Two writers of one
    slice take turns (the second waits up to `wait_seconds`). Reading a partitioned asset from an
    unpartitioned one loads every partition."""

    mongo: dg.ResourceDependency[MongoResource]
    wait_seconds: float = Field(default=slices.WAIT_SECONDS,
                                description="How long a write waits for another writer of the same slice.")
    lease_seconds: float = Field(default=slices.LEASE_SECONDS,
                                 description="A writer's lease expires this long after its last heartbeat.")

    def _collection(self, location: str) -> slices.SlicedCollection:
        return slices.SlicedCollection(self.mongo.store(), location, lease_seconds=self.lease_seconds,
                                       wait_seconds=self.wait_seconds)

    def handle_output(self, context: dg.OutputContext, obj: pd.DataFrame) -> None:
        if obj is None:
            return
        if not isinstance(obj, pd.DataFrame):
            raise TypeError(
                f"{context.asset_key.to_user_string()}: expected a pandas DataFrame, got {type(obj).__name__}"
            )
        location = collection_location(context)
        keys, row_slices = _written_slices(context, obj)
        indexes = [list(ix) for ix in (_meta(context, INDEXES_KEY) or [])]
        written = self._collection(location).write(
            obj, keys, row_slices, indexes=indexes, owner={"dagster_run_id": context.run_id}
        )
        context.add_output_metadata(
            {
                "dagster/row_count": sum(written.values()),
                "collection": dg.MetadataValue.text(location),
            }
        )

    def load_input(self, context: dg.InputContext) -> pd.DataFrame:
        location = collection_location(context.upstream_output)
        columns = (context.definition_metadata or {}).get("columns")
        keys = list(context.asset_partition_keys) if context.has_asset_partitions else None
        return self._collection(location).read(keys, columns=columns)


class GridFSArtefactIOManager(dg.ConfigurableIOManager):
    """Model objects as GridFS files (binary state + JSON config); every version is kept."""

    mongo: dg.ResourceDependency[MongoResource]

    @staticmethod
    def _name(context) -> str:
        """Same name from an output context and from the input context that reads it."""
        name = context.asset_key.to_user_string()
        if context.has_asset_partitions:
            name += f"[{context.asset_partition_key}]"
        return name

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        name = self._name(context)
        file_id = artefacts.save_artefact(self.mongo.store(), name, obj, {"dagster_run_id": context.run_id})
        context.add_output_metadata(
            {"artefact": dg.MetadataValue.text(f"{artefacts.ARTEFACT_BUCKET}/{name}"), "artefact_file_id": file_id}
        )

    def load_input(self, context: dg.InputContext) -> Any:
        """The version the upstream step of this run (or of the run re-executed) wrote; when the
        upstream was not part of this run, the version its latest materialisation recorded. Never
        simply the newest file: a concurrent run may have written one since."""
        store, name = self.mongo.store(), self._name(context)
        instance = context.instance
        upstream_run = context.upstream_output.run_id
        if instance.get_run_by_id(upstream_run) is not None:
            return artefacts.load_artefact(store, name, dagster_run_id=upstream_run)
        event = instance.get_latest_materialization_event(context.asset_key)
        file_id = event.asset_materialization.metadata.get("artefact_file_id") if event else None
        if file_id is not None:
            return artefacts.load_artefact(store, name, file_id=getattr(file_id, "value", file_id))
        context.log.warning(f"no materialisation of {name} is recorded in this Dagster instance: "
                            "loading the newest stored version")
        return artefacts.load_artefact(store, name)
