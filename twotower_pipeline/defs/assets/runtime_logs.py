"""Data preparation (SPEC §3): the runtime's collections in, the flatten collection out."""

import datetime as dt

import dagster as dg
from pydantic import Field

from twotower_pipeline.defs.checks import accept_rate_check, no_null_keys_check, schema_check
from twotower_pipeline.defs.partitions import daily_partitions
from twotower_pipeline.defs.resources import MongoResource
from twotower_pipeline.ingest.flatten import REASONS, fetch_runtime_window, flatten_runtime_logs
from twotower_pipeline.ingest.runtime_logs import ensure_source_indexes
from twotower_pipeline.store import names

GROUP = "runtime_logs"


def _external(location: str, description: str, key: list[str] | None = None) -> dg.AssetSpec:
    return dg.AssetSpec(
        key=key or location.split("."),
        description=description,
        group_name=GROUP,
        kinds={"mongodb"},
        metadata={"mongo_collection": location},
    )


presented_logs = _external(names.PRESENTED, "One document per scoring request the runtime answered (presented offers).")
response_logs = _external(names.RESPONSES, "One document per /response call: the offers the customer accepted.")
offer_matrix = _external(names.OFFER_MATRIX, "The offer catalogue, keyed by `offer_name`.")
customer_features = _external(names.CUSTOMER_FEATURES, "One row of features per customer, keyed by `customer_id`.")

FLATTEN_KEY = dg.AssetKey(names.FLATTEN.split("."))
QUARANTINE_KEY = dg.AssetKey(names.FLATTEN_QUARANTINE.split("."))

FLATTEN_SCHEMA = {
    "uuid": "string",
    "predictor": "string",
    "customer_id": "string",
    "offer": "string",
    "accepted": "number",
    "price": "number",
    "rank": "number",
    "score": "number",
    "datetime": "datetime",
}


class FlattenConfig(dg.Config):
    max_rejected_share: float = Field(
        default=0.05,
        ge=0.0,
        le=1.0,
        description="The rejected-share check fails when more than this share of the input is quarantined.",
    )
    ensure_source_indexes: bool = Field(
        default=True,
        description="Create the `date_log` and `uuid` indexes on the runtime collections if missing "
        "(each day's flatten reads them by date range).",
    )
    response_window_days: int = Field(
        default=7,
        ge=0,
        le=365,
        description="A response counts if it is logged before the window's end plus this many days.",
    )


@dg.multi_asset(
    outs={
        "ecosystemruntime_flatten": dg.AssetOut(
            key=FLATTEN_KEY,
            io_manager_key="mongo_frame_io_manager",
            group_name=GROUP,
            kinds={"mongodb", "pandas"},
            description="One row per customer/offer exposure; `accepted` is 1 when a response accepted the offer.",
            # `_id`s carry the exposure time, so the `_id` index serves day slices and windows: a
            # secondary index costs about as much per insert as the row itself on the embedded server.
            metadata={"partition_expr": "datetime", "mongo_time_ordered_ids": True},
            code_version="1",
        ),
        "ecosystemruntime_flatten_quarantine": dg.AssetOut(
            key=QUARANTINE_KEY,
            io_manager_key="mongo_frame_io_manager",
            group_name=GROUP,
            kinds={"mongodb", "pandas"},
            description="Log documents and exposures set aside, with the reason and the raw document.",
            metadata={"partition_expr": "datetime", "mongo_time_ordered_ids": True},
            code_version="1",
        ),
    },
    deps=[presented_logs, response_logs],
    partitions_def=daily_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    check_specs=[
        dg.AssetCheckSpec("schema", asset=FLATTEN_KEY, description="Documented columns with the right types."),
        dg.AssetCheckSpec("no_null_keys", asset=FLATTEN_KEY, description="customer_id, offer and uuid are set."),
        dg.AssetCheckSpec(
            "accept_rate_between_0_and_1",
            asset=FLATTEN_KEY,
            description="Warns when a slice is all accepts or all declines.",
        ),
        dg.AssetCheckSpec(
            "rejected_share_below_threshold",
            asset=FLATTEN_KEY,
            blocking=True,
            description="Fails when more than `max_rejected_share` of the input was quarantined.",
        ),
    ],
)
def ecosystemruntime_flatten(context: dg.AssetExecutionContext, config: FlattenConfig, mongo: MongoResource):
    """Unwind each presented document's offers and join the responses by `uuid`, for the
    selected days (a backfill of any range runs as one run)."""
    window = context.partition_time_window
    if config.ensure_source_indexes:
        ensure_source_indexes(mongo.store())
    presented, responses, orphans = fetch_runtime_window(
        mongo.store(), window.start, window.end, dt.timedelta(days=config.response_window_days)
    )
    result = flatten_runtime_logs(presented, responses, (window.start, window.end), orphans)
    exposures, counts = result.exposures, result.counts
    context.log.info(
        f"{window.start:%Y-%m-%d}..{window.end:%Y-%m-%d}: {counts['presented']} presented documents, "
        f"{counts['exposures']} exposures, {counts['accepted']} accepted, {counts['quarantined']} quarantined"
    )
    yield dg.Output(
        exposures,
        output_name="ecosystemruntime_flatten",
        metadata={
            "window": f"[{window.start.isoformat()}, {window.end.isoformat()})",
            "presented_documents": counts["presented"],
            "responses_joined": counts["responses"],
            "exposures": counts["exposures"],
            "accepted": counts["accepted"],
            "accept_rate": float(exposures["accepted"].mean()) if len(exposures) else 0.0,
            "customers": int(exposures["customer_id"].nunique()),
            "offers": int(exposures["offer"].nunique()),
            "predictors": dg.MetadataValue.json(sorted(exposures["predictor"].unique().tolist())),
            "quarantined": counts["quarantined"],
            "rejected_share": result.rejected_share,
        },
    )
    yield dg.Output(
        result.quarantine,
        output_name="ecosystemruntime_flatten_quarantine",
        metadata={"quarantined": counts["quarantined"], **{f"rejected_{r}": counts[f"rejected_{r}"] for r in REASONS}},
    )
    yield schema_check(FLATTEN_KEY, exposures, FLATTEN_SCHEMA)
    yield no_null_keys_check(FLATTEN_KEY, exposures, ["customer_id", "offer", "uuid"])
    yield accept_rate_check(FLATTEN_KEY, exposures, severity=dg.AssetCheckSeverity.WARN)
    yield dg.AssetCheckResult(
        asset_key=FLATTEN_KEY,
        check_name="rejected_share_below_threshold",
        passed=result.rejected_share <= config.max_rejected_share,
        metadata={
            "rejected_share": result.rejected_share,
            "threshold": config.max_rejected_share,
            **{r: counts[f"rejected_{r}"] for r in REASONS if counts[f"rejected_{r}"]},
        },
    )
