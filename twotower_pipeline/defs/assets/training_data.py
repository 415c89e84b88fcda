"""The training slice (SPEC §3): one predictor's exposures in a window, with customer and offer features."""

import datetime as dt

import dagster as dg
import pandas as pd

from twotower_pipeline.defs.assets import OWNERS
from twotower_pipeline.defs.assets.runtime_logs import FLATTEN_KEY, FLATTEN_SCHEMA, customer_features, offer_matrix
from twotower_pipeline.defs.checks import accepts_check, no_null_keys_check, schema_check
from twotower_pipeline.defs.resources import MongoResource
from twotower_pipeline.ingest.training_frame import build_training_frame
from twotower_pipeline.defs.partitions import daily_partitions
from twotower_pipeline.parameters import TrainingWindow
from twotower_pipeline.store import frames, names
from twotower_pipeline.store.slices import SlicedCollection

TRAINING_FRAME_SCHEMA = {c: FLATTEN_SCHEMA[c] for c in ("customer_id", "offer", "accepted", "price", "rank", "score")}


class TrainingFrameConfig(TrainingWindow, dg.Config):
    """The training slice's launchpad: a predictor and its days (`parameters.TrainingWindow`)."""

    def read_exposures(self, store) -> pd.DataFrame:
        """The committed flatten rows of this predictor and window: the days of the window are
        looked up by their slices' write ids, the predictor on the server, the exact bounds here."""
        start, end = self.window()
        flatten = SlicedCollection(store, names.FLATTEN)
        committed = flatten.committed_write_ids() or {}
        days = [k for k in committed if _overlaps(daily_partitions.time_window_for_partition_key(k), start, end)]
        exposures = flatten.read(days, query={"predictor": self.predictor})
        if len(exposures) and self.from_date:
            exposures = exposures[exposures["datetime"] >= start]
        if len(exposures) and self.to_date:
            exposures = exposures[exposures["datetime"] < end]
        return exposures.reset_index(drop=True)


def _overlaps(window: dg.TimeWindow, start: dt.datetime, end: dt.datetime) -> bool:
    return window.start < end and window.end > start


@dg.asset(
    key="training_frame",
    deps=[FLATTEN_KEY, customer_features, offer_matrix],
    io_manager_key="mongo_frame_io_manager",
    metadata={"mongo_collection": names.TRAINING_FRAME},
    group_name="training_data",
    owners=OWNERS,
    kinds={"mongodb", "pandas"},
    code_version="1",
    check_specs=[
        dg.AssetCheckSpec("schema", asset="training_frame", blocking=True),
        dg.AssetCheckSpec("no_null_keys", asset="training_frame", blocking=True),
        dg.AssetCheckSpec("has_accepts", asset="training_frame", blocking=True),
        dg.AssetCheckSpec("enough_accepted_rows", asset="training_frame", blocking=True),
        dg.AssetCheckSpec("unique_exposures", asset="training_frame", blocking=True,
                          description="Each exposure (uuid, offer) appears once: no slice was read twice."),
    ],
)
def training_frame(context: dg.AssetExecutionContext, config: TrainingFrameConfig, mongo: MongoResource):
    """The documented `two_tower_features` frame: one predictor's exposures in
    `[from_date, to_date)`, joined with customer features and the offer matrix, typed and cleaned."""
    store = mongo.store()
    flatten = store.collection(names.FLATTEN)
    exposures = config.read_exposures(store)  # committed slices only
    if exposures.empty:
        known = sorted(p for p in flatten.distinct("predictor") if p)
        raise dg.Failure(
            description=(
                f"no exposures for predictor {config.predictor!r} in [{config.from_date or 'start'}, "
                f"{config.to_date or 'end'}) in {names.FLATTEN}; predictors there: {known or 'none'}. "
                "Materialise ecosystemruntime_flatten for those days first."
            )
        )
    customers = frames.read_frame(store.collection(names.CUSTOMER_FEATURES))
    offers = frames.read_frame(store.collection(names.OFFER_MATRIX))
    frame, stats = build_training_frame(
        exposures, customers, offers, customer_key=names.CUSTOMER_KEY, offer_key=names.OFFER_KEY
    )
    context.log.info(
        f"training frame for {config.predictor}: {stats['rows']} rows, accept rate {stats['accept_rate']:.3f}"
    )
    key = dg.AssetKey("training_frame")
    yield dg.Output(
        frame,
        metadata={
            "predictor": config.predictor,
            "window": f"[{config.from_date or 'start'}, {config.to_date or 'end'})",
            **{k: v for k, v in stats.items()},
            "dagster/column_schema": dg.TableSchema(
                columns=[dg.TableColumn(name=str(c), type=str(t)) for c, t in frame.dtypes.items()]
            ),
            "preview": dg.MetadataValue.md(_preview(frame)),
        },
    )
    yield schema_check(key, frame, TRAINING_FRAME_SCHEMA)
    yield no_null_keys_check(key, frame, ["customer_id", "offer"])
    yield accepts_check(key, frame)
    yield dg.AssetCheckResult(
        asset_key=key,
        check_name="enough_accepted_rows",
        passed=stats["accepted"] >= config.min_accepted_rows,
        metadata={"accepted": stats["accepted"], "minimum": config.min_accepted_rows},
    )
    keyed = {"uuid", "offer"} <= set(frame.columns)
    duplicated = int(frame.duplicated(["uuid", "offer"]).sum()) if keyed else len(frame)
    yield dg.AssetCheckResult(
        asset_key=key,
        check_name="unique_exposures",
        passed=keyed and duplicated == 0,
        metadata={"duplicated_exposures": duplicated, "rows": len(frame)},
    )


def _preview(frame: pd.DataFrame, rows: int = 10) -> str:
    head = frame.head(rows).copy()
    for column in head.columns:
        if head[column].dtype == object:
            head[column] = head[column].map(lambda v: ", ".join(map(str, v)) if isinstance(v, list) else v)
    return head.to_markdown(index=False)
