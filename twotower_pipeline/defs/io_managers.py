"""IO managers over MongoDB: DataFrames (partition-aware, after Dagster's DbIOManager) and
model artefacts (GridFS)."""

from typing import Any

import dagster as dg
import pandas as pd

from twotower_pipeline.defs.resources import MongoResource
from twotower_pipeline.store import artefacts, frames

#: Definition metadata read by the DataFrame IO manager.
COLLECTION_KEY = "mongo_collection"  # "database.collection"; default: the asset key's two parts
PARTITION_KEY = "partition_expr"  # the field that holds the partition (required when partitioned)
INDEXES_KEY = "mongo_indexes"  # list of field lists to index besides the partition field
TIME_IDS_KEY = "mongo_time_ordered_ids"  # time partitions: `_id`s carry the row's time (no extra index)


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


def slice_filter(context, definition) -> dict:
    """The Mongo filter selecting the partitions `context` reads or writes ({} = everything).

    `definition` is the output context of the asset's definition: its metadata names the field.
    """
    if not context.has_asset_partitions:
        return {}
    field = _meta(definition, PARTITION_KEY)
    if not field:
        raise dg.DagsterInvariantViolationError(
            f"partitioned asset {definition.asset_key.to_user_string()} has no `{PARTITION_KEY}` metadata "
            "naming the field that holds its partition"
        )
    if isinstance(context.asset_partitions_def, dg.TimeWindowPartitionsDefinition):
        window = context.asset_partitions_time_window
        if _meta(definition, TIME_IDS_KEY):
            return frames.time_range_filter(window.start, window.end)
        return {field: {"$gte": window.start, "$lt": window.end}}
    return {field: {"$in": list(context.asset_partition_keys)}}


def _rows_outside(context, frame: pd.DataFrame) -> int:
    field = _meta(context, PARTITION_KEY)
    if field not in frame.columns:
        return len(frame)
    if isinstance(context.asset_partitions_def, dg.TimeWindowPartitionsDefinition):
        window = context.asset_partitions_time_window
        values = pd.to_datetime(frame[field], utc=True)
        return int(((values < window.start) | (values >= window.end)).sum())
    return int((~frame[field].astype(str).isin(list(context.asset_partition_keys))).sum())


class MongoFrameIOManager(dg.ConfigurableIOManager):
    """DataFrames in collections. Partitioned: writing replaces exactly that slice (new rows in,
    then the slice's old rows out); unpartitioned: the collection is swapped whole. Reading a
    partitioned asset from an unpartitioned one loads every partition."""

    mongo: dg.ResourceDependency[MongoResource]

    def handle_output(self, context: dg.OutputContext, obj: pd.DataFrame) -> None:
        if obj is None:
            return
        if not isinstance(obj, pd.DataFrame):
            raise TypeError(
                f"{context.asset_key.to_user_string()}: expected a pandas DataFrame, got {type(obj).__name__}"
            )
        location = collection_location(context)
        collection = self.mongo.store().collection(location)
        query = slice_filter(context, context)
        indexes = [list(ix) for ix in (_meta(context, INDEXES_KEY) or [])]
        if query:
            outside = _rows_outside(context, obj)
            if outside:
                keys = context.asset_partition_keys
                written_keys = keys[0] if len(keys) == 1 else f"{keys[0]}..{keys[-1]}"
                raise dg.DagsterInvariantViolationError(
                    f"{context.asset_key.to_user_string()}: {outside} of {len(obj)} rows lie outside the "
                    f"partition(s) being written: `{_meta(context, PARTITION_KEY)}` not in {written_keys}"
                )
            if _meta(context, TIME_IDS_KEY):
                window = context.asset_partitions_time_window
                written = frames.replace_time_slice(
                    collection, obj, _meta(context, PARTITION_KEY), window.start, window.end, indexes
                )
            else:
                written = frames.replace_slice(collection, obj, query, indexes)
        else:
            written = frames.replace_collection(collection, obj, indexes)
        context.add_output_metadata(
            {
                "dagster/row_count": written,
                "collection": dg.MetadataValue.text(location),
            }
        )

    def load_input(self, context: dg.InputContext) -> pd.DataFrame:
        upstream = context.upstream_output
        location = collection_location(upstream)
        columns = (context.definition_metadata or {}).get("columns")
        query = slice_filter(context, upstream)
        return frames.read_frame(self.mongo.store().collection(location), query, columns)


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
        return artefacts.load_artefact(self.mongo.store(), self._name(context))
