"""Runtime log documents as an ecosystem.Ai runtime writes them (SPEC §3), and their writer.

Every loader (MovieLens, coupon, importer, simulator) turns its source into an exposures table
and hands it to :func:`build_runtime_logs`, so all of them produce the same document shapes.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid as uuid_lib

import numpy as np
import pandas as pd

from twotower_pipeline.ingest.context import CONTEXT_PREFIX, context_columns
from twotower_pipeline.ingest.training_frame import CHANGED_AT
from twotower_pipeline.store import names
from twotower_pipeline.store.frames import INSERT_BATCH, chunked, ensure_indexes, frame_to_documents, plain_value

# Namespace for deterministic request ids: reloading the same source gives the same uuids.
_UUID_NAMESPACE = uuid_lib.UUID("7b0e6a52-3c1f-4a57-9d59-2f1f1f0c2a10")

#: Columns an exposures table must have; `feature columns` are anything else in scoring_data.
EXPOSURE_COLUMNS = ("request", "customer_id", "offer", "accepted", "datetime", "price", "score")


@dataclasses.dataclass
class RuntimeLogs:
    """What a loader writes: the two runtime collections plus the catalogue collections."""

    predictor: str
    presented: list[dict]
    responses: list[dict]
    offer_matrix: pd.DataFrame
    customer_features: pd.DataFrame

    @property
    def n_exposures(self) -> int:
        return sum(len(doc["final_result"]) for doc in self.presented)


def request_uuid(predictor: str, request_key: str) -> str:
    return str(uuid_lib.uuid5(_UUID_NAMESPACE, f"{predictor}/{request_key}"))


def build_runtime_logs(
    exposures: pd.DataFrame,
    *,
    predictor: str,
    channel: str,
    offer_matrix: pd.DataFrame,
    customer_features: pd.DataFrame,
    customer_key: str = "customer_id",
    offer_key: str = "offer_name",
    response_delay: dt.timedelta = dt.timedelta(seconds=30),
) -> RuntimeLogs:
    """Group exposures into requests and build presented + response documents.

    ``exposures`` has one row per offer shown: ``request`` (a key that groups the offers shown
    together, in display order), ``customer_id``, ``offer``, ``accepted`` (0/1), ``datetime``
    (tz-aware UTC), ``price`` and ``score``. The customer's row in ``customer_features`` becomes
    the request's ``scoring_data``; offers are looked up in ``offer_matrix`` by ``offer_key``.
    Columns named ``context_<key>`` are the request's context: the request's first row gives its
    ``in_params`` ``{key: value}`` (missing values left out), as the runtime logs the request.
    """
    missing = [c for c in EXPOSURE_COLUMNS if c not in exposures.columns]
    if missing:
        raise ValueError(f"exposures table lacks column(s) {missing}")
    exposures = exposures.sort_values(["request", "datetime"], kind="stable")
    offer_names = dict(
        zip(offer_matrix[offer_key].astype(str), offer_matrix.get("title", offer_matrix[offer_key]).astype(str))
    )
    offer_cost = dict(
        zip(
            offer_matrix[offer_key].astype(str),
            offer_matrix.get("cost", pd.Series(0.0, index=offer_matrix.index)).astype(float),
        )
    )
    features = customer_features.set_index(customer_key, drop=False)
    feature_rows = {
        str(k): {kk: plain_value(vv) for kk, vv in row.items() if kk != customer_key}
        for k, row in features.to_dict("index").items()
    }

    presented: list[dict] = []
    responses: list[dict] = []
    request_keys = exposures["request"].to_numpy()
    # Boundaries of each request's block of rows (rows are sorted by request).
    starts = np.flatnonzero(np.r_[True, request_keys[1:] != request_keys[:-1]])
    ends = np.r_[starts[1:], len(request_keys)]
    cols = {c: exposures[c].to_numpy() for c in EXPOSURE_COLUMNS}
    context = {c[len(CONTEXT_PREFIX):]: exposures[c].to_numpy(dtype=object) for c in context_columns(exposures.columns)}
    for start, end in zip(starts, ends):
        customer = str(cols["customer_id"][start])
        when = pd.Timestamp(cols["datetime"][start]).to_pydatetime()
        request_id = request_uuid(predictor, str(cols["request"][start]))
        final_result = []
        accepted_offers = []
        for position, i in enumerate(range(start, end), start=1):
            offer = str(cols["offer"][i])
            final_result.append(
                {
                    "rank": position,
                    "result": {
                        "offer": offer,
                        "offer_name": offer,
                        "offer_description": offer_names.get(offer, offer),
                        "score": float(cols["score"][i]),
                        "final_score": float(cols["score"][i]),
                        "price": float(cols["price"][i]),
                        "cost": offer_cost.get(offer, 0.0),
                    },
                }
            )
            if int(cols["accepted"][i]) == 1:
                accepted_offers.append({"offer_name": offer, "offer": offer})
        doc = {
            "uuid": request_id,
            "predictor": predictor,
            "date_log": when,
            "api_params": {"customer": customer, "channel": channel, "numberoffers": len(final_result)},
            "params": [{"key": "customer", "value": customer}],
            "final_result": final_result,
            "scoring_data": {"customer": customer, **feature_rows.get(customer, {})},
        }
        if context:
            doc["in_params"] = {key: plain_value(values[start]) for key, values in context.items()
                                if plain_value(values[start]) is not None}
        presented.append(doc)
        if accepted_offers:
            responses.append(
                {
                    "uuid": request_id,
                    "predictor": predictor,
                    "date_log": when + response_delay,
                    "response": {"offers_accepted": accepted_offers, "channel_name": channel},
                    "response_log": {k: v for k, v in doc.items() if k != "scoring_data"},
                }
            )
    return RuntimeLogs(predictor, presented, responses, offer_matrix, customer_features)


def write_runtime_logs(store, logs: RuntimeLogs, *, replace: bool = False) -> dict:
    """Write a loader's output into the runtime and catalogue collections; idempotent.

    A predictor whose presented and response counts already match is left alone unless
    `replace`; otherwise its documents are deleted and written again. Catalogue documents are
    replaced by key. Returns what was done, for the caller to report.
    """
    presented = store.collection(names.PRESENTED)
    responses = store.collection(names.RESPONSES)
    ensure_source_indexes(store)
    already = presented.count_documents({"predictor": logs.predictor}) == len(
        logs.presented
    ) and responses.count_documents({"predictor": logs.predictor}) == len(logs.responses)
    if already and not replace:
        return {
            "predictor": logs.predictor,
            "written": False,
            "presented": len(logs.presented),
            "responses": len(logs.responses),
            "exposures": logs.n_exposures,
        }
    presented.delete_many({"predictor": logs.predictor})
    responses.delete_many({"predictor": logs.predictor})
    for batch in chunked(logs.presented, INSERT_BATCH):
        presented.insert_many(batch, ordered=False)
    for batch in chunked(logs.responses, INSERT_BATCH):
        responses.insert_many(batch, ordered=False)
    _replace_by_key(store.collection(names.OFFER_MATRIX), logs.offer_matrix, names.OFFER_KEY)
    _replace_by_key(store.collection(names.CUSTOMER_FEATURES), logs.customer_features, names.CUSTOMER_KEY)
    return {
        "predictor": logs.predictor,
        "written": True,
        "presented": len(logs.presented),
        "responses": len(logs.responses),
        "exposures": logs.n_exposures,
    }


def ensure_source_indexes(store) -> None:
    """The indexes the flatten reads the runtime collections by (idempotent)."""
    ensure_indexes(store.collection(names.PRESENTED), [("date_log",), ("uuid",), ("predictor", "date_log")])
    ensure_indexes(store.collection(names.RESPONSES), [("date_log",), ("uuid",)])


def _replace_by_key(collection, frame: pd.DataFrame, key: str) -> None:
    """Replace the documents of the frame's keys, each stamped `updated_at` (what the runtime
    refresh looks for)."""
    collection.create_index(key, unique=True)
    collection.create_index(CHANGED_AT)
    keys = frame[key].astype(str).tolist()
    for batch in chunked(keys, 200):
        collection.delete_many({key: {"$in": list(batch)}})
    stamped = frame.assign(**{key: frame[key].astype(str), CHANGED_AT: pd.Timestamp.now(tz="UTC")})
    documents = frame_to_documents(stamped)
    for batch in chunked(documents, INSERT_BATCH):
        collection.insert_many(batch, ordered=False)
