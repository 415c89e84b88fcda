"""Data preparation (SPEC §3): the runtime's collections in, the flatten collection out."""

import datetime as dt

import dagster as dg
import pandas as pd
from pydantic import Field

from twotower_pipeline.defs.assets import OWNERS
from twotower_pipeline.defs.checks import accepts_check, no_null_keys_check, schema_check
from twotower_pipeline.defs.partitions import daily_partitions
from twotower_pipeline.defs.resources import MongoResource
from twotower_pipeline.ingest.context import DROP_REASONS, context_columns
from twotower_pipeline.ingest.flatten import (
    REASONS,
    document_copy,
    fetch_runtime_window,
    find_undated,
    flatten_runtime_logs,
)
from twotower_pipeline.ingest.runtime_logs import ensure_source_indexes
from twotower_pipeline.store import names

GROUP = "runtime_logs"


def _external(location: str, description: str, group: str = GROUP) -> dg.AssetSpec:
    return dg.AssetSpec(
        key=location.split("."),
        description=description,
        group_name=group,
        owners=OWNERS,
        kinds={"mongodb"},
        metadata={"mongo_collection": location},
    )


presented_logs = _external(names.PRESENTED, "One document per scoring request the runtime answered (presented offers).")
response_logs = _external(names.RESPONSES, "One document per /response call: the offers the customer accepted.")
offer_matrix = _external(names.OFFER_MATRIX, "The offer catalogue, keyed by `offer_name`.", "feature_sources")
customer_features = _external(names.CUSTOMER_FEATURES, "One row of features per customer, keyed by `customer_id`.",
                              "feature_sources")

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
            owners=OWNERS,
            kinds={"mongodb", "pandas"},
            description="One row per customer/offer exposure; `accepted` is 1 when a response accepted the offer.",
            metadata={"partition_expr": "datetime"},
            code_version="1",
        ),
        "ecosystemruntime_flatten_quarantine": dg.AssetOut(
            key=QUARANTINE_KEY,
            io_manager_key="mongo_frame_io_manager",
            group_name=GROUP,
            owners=OWNERS,
            kinds={"mongodb", "pandas"},
            description="Log documents and exposures set aside, with the reason and the raw document.",
            metadata={"partition_expr": "datetime"},
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
            "has_accepts",
            asset=FLATTEN_KEY,
            description="Warns when nothing in a slice is accepted (accepts only is implicit feedback: fine).",
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
    fetched = fetch_runtime_window(
        mongo.store(), window.start, window.end, dt.timedelta(days=config.response_window_days)
    )
    result = flatten_runtime_logs(
        fetched.presented, fetched.responses, (window.start, window.end), fetched.orphan_responses,
        fetched.naive_responses, fetched.earlier_uuids,
    )
    exposures, counts = result.exposures, result.counts
    context.log.info(
        f"{window.start:%Y-%m-%d}..{window.end:%Y-%m-%d}: {counts['presented']} presented documents, "
        f"{counts['exposures']} exposures, {counts['accepted']} accepted, {counts['quarantined']} quarantined"
    )
    note = _quiet_note(counts)
    if note:
        context.log.info(note)
    dropped = {f"dropped_context_{r}": counts[f"dropped_context_{r}"] for r in DROP_REASONS}
    if any(dropped.values()):
        context.log.warning(f"request context values dropped (the exposures are kept): "
                            f"{ {k: v for k, v in dropped.items() if v} }")
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
            "context_columns": dg.MetadataValue.json(context_columns(exposures.columns)),
            **dropped,
            **({"note": note} if note else {}),
        },
    )
    yield dg.Output(
        result.quarantine,
        output_name="ecosystemruntime_flatten_quarantine",
        metadata={"quarantined_documents": len(result.quarantine),
                  **{f"rejected_{r}": counts[f"rejected_{r}"] for r in REASONS}},
    )
    yield schema_check(FLATTEN_KEY, exposures, FLATTEN_SCHEMA)
    yield no_null_keys_check(FLATTEN_KEY, exposures, ["customer_id", "offer", "uuid"])
    yield accepts_check(FLATTEN_KEY, exposures, severity=dg.AssetCheckSeverity.WARN)
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


def _quiet_note(counts: dict) -> str | None:
    """Why a slice is empty or all declines, when the logs were quiet rather than wrong."""
    if counts["presented"] == 0:
        return "no presented documents in this window: the slice is empty"
    if counts["responses"] == 0:
        return "no responses for this window's documents: every exposure is a decline"
    return None


UNDATED_KEY = dg.AssetKey(names.FLATTEN_UNDATED.split("."))


@dg.asset(
    key=UNDATED_KEY,
    deps=[presented_logs, response_logs],
    io_manager_key="mongo_frame_io_manager",
    group_name=GROUP,
    owners=OWNERS,
    kinds={"mongodb", "pandas"},
    code_version="1",
    check_specs=[
        dg.AssetCheckSpec(
            "no_undated_documents",
            asset=UNDATED_KEY,
            description="Fails while runtime documents without a readable date_log exist: no day's flatten reads them.",
        )
    ],
)
def ecosystemruntime_flatten_undated(context: dg.AssetExecutionContext, mongo: MongoResource):
    """Runtime documents whose `date_log` is missing or not a date: no daily slice can hold them,
    so they are found by a scan, counted and kept here with the raw document."""
    rows = [
        {"uuid": str(doc["uuid"]) if doc.get("uuid") not in (None, "") else None,
         "predictor": doc.get("predictor") if isinstance(doc.get("predictor"), str) else None,
         "source": source, "reason": "undated", "detail": detail, "document": document_copy(doc)}
        for source, doc, detail in find_undated(mongo.store())
    ]
    frame = pd.DataFrame(rows, columns=["uuid", "predictor", "source", "reason", "detail", "document"])
    by_source = {f"undated_{source}": int((frame["source"] == source).sum()) for source in ("presented", "response")}
    if len(frame):
        context.log.warning(f"{len(frame)} runtime documents have no readable date_log: {by_source}")
    yield dg.Output(frame, metadata={"undated_documents": len(frame), **by_source})
    yield dg.AssetCheckResult(
        asset_key=UNDATED_KEY,
        check_name="no_undated_documents",
        passed=frame.empty,
        metadata={"undated_documents": len(frame), **by_source},
    )
