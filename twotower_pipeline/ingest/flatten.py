"""Runtime logs -> one row per customer/offer exposure (`logging.ecosystemruntime_flatten`).

Each presented document's `final_result` is unwound; `accepted` is 1 where a response with the
same `uuid` lists that offer (by `offer_name` or `offer`). Real logs are dirty, so every document
or exposure that cannot be trusted is set aside with a reason instead of being guessed at: the
good rows go on, the rejected ones stay inspectable in the quarantine collection.

The request's context (`in_params`, see `ingest.context`) becomes one column per key,
`context_<key>`, on every exposure of the request (absent keys: None). A context value that cannot
be a feature (not a scalar, too long, a bad key) is dropped and counted
(`dropped_context_<reason>`), never a reason to set the exposure aside.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
from collections import Counter
from collections.abc import Iterable

import pandas as pd

from twotower_pipeline.ingest.context import DROP_REASONS, context_values
from twotower_pipeline.ingest.training_frame import SERVING_COLUMNS
from twotower_pipeline.store import names
from twotower_pipeline.store.frames import chunked

EXPOSURE_COLUMNS = (
    "uuid",
    "predictor",
    "channel",
    "customer_id",
    "offer",
    "offer_name",
    "accepted",
    "price",
    "rank",
    "score",
    "datetime",
    *SERVING_COLUMNS,
)
#: One quarantine row per bad document and reason; `items` counts the offers or responses set
#: aside for it, and the raw document is stored once, on the document's first row.
QUARANTINE_COLUMNS = ("uuid", "predictor", "source", "reason", "items", "detail", "datetime", "document")
MAX_DETAILS = 5

#: Why a document or exposure was set aside; every reason is counted, zero or not.
REASONS = (
    "missing_uuid",
    "missing_predictor",
    "missing_customer",
    "naive_datetime",
    "empty_final_result",
    "malformed_final_result",
    "malformed_offer",
    "duplicate_offer",
    "non_numeric_price",
    "non_numeric_score",
    "non_numeric_rank",
    "duplicate_uuid",
    "malformed_response",
    "orphan_response",
    "accepted_not_shown",
)
UUID_LOOKUP_BATCH = 50  # large $in lists are slow on some servers (measured: 50 per lookup is cheapest)
#: Scanning a document costs about a quarter of looking one uuid up (measured on the embedded server).
SCAN_PER_UUID = 4


@dataclasses.dataclass
class FlattenResult:
    exposures: pd.DataFrame
    quarantine: pd.DataFrame
    counts: dict[str, int]

    @property
    def rejected_share(self) -> float:
        """Share of input items (exposures shown + responses) that were set aside."""
        rejected = sum(self.counts[f"rejected_{r}"] for r in REASONS)
        seen = self.counts["exposures"] + rejected
        return rejected / seen if seen else 0.0


def parse_utc(value) -> tuple[dt.datetime | None, str | None]:
    """(UTC datetime, None) or (None, reason). Naive strings are refused: their zone is unknown."""
    if isinstance(value, dt.datetime):
        # BSON dates are UTC; a naive datetime object can only have come from a naive client.
        return (
            value.replace(tzinfo=dt.timezone.utc) if value.tzinfo is None else value.astimezone(dt.timezone.utc)
        ), None
    if isinstance(value, str):
        try:
            parsed = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            return None, "naive_datetime"
        if parsed.tzinfo is None:
            return None, "naive_datetime"
        return parsed.astimezone(dt.timezone.utc), None
    return None, "naive_datetime"


def _naive_as_utc(value) -> dt.datetime | None:
    """Where a naive date string would fall if it were UTC: used only to file it under one day."""
    try:
        return dt.datetime.fromisoformat(str(value).strip()).replace(tzinfo=dt.timezone.utc)
    except ValueError:
        return None


def _text(value) -> str | None:
    return None if value is None or value == "" else str(value)


def _propensity(value) -> float:
    """A logged propensity in (0, 1], or NaN: absent, or not a probability (an estimate refuses a
    round without one rather than guess it)."""
    number = _number(value, math.nan)
    return number if number is not None and 0 < number <= 1 else math.nan


def _number(value, default: float) -> float | None:
    """A finite float, `default` when absent, None when present but not a number."""
    if value is None:
        return default
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    if math.isnan(number):
        return default
    return number if math.isfinite(number) else None


def _customer(doc: dict) -> str | None:
    api_params = doc.get("api_params")
    customer = api_params.get("customer") if isinstance(api_params, dict) else None
    if customer in (None, "") and isinstance(doc.get("params"), list):
        for param in doc["params"]:
            if isinstance(param, dict) and param.get("key") == "customer":
                customer = param.get("value")
                break
    if customer is None or isinstance(customer, (dict, list)) or str(customer).strip() == "":
        return None
    return str(customer).strip()


def _accepted_offers(response: dict) -> list[str] | None:
    body = response.get("response")
    offers = body.get("offers_accepted") if isinstance(body, dict) else response.get("offers_accepted")
    if not isinstance(offers, list):
        return None
    keys = []
    for item in offers:
        if isinstance(item, dict) and (item.get("offer_name") or item.get("offer")):
            keys.append(str(item.get("offer_name") or item.get("offer")))
        elif isinstance(item, str) and item:
            keys.append(item)
        else:
            return None
    return keys


def _in_params(doc: dict):
    """The request's context as logged: `in_params`, or `api_params.in_params` where a runtime nests it."""
    if "in_params" in doc:
        return doc["in_params"]
    api_params = doc.get("api_params")
    return api_params.get("in_params") if isinstance(api_params, dict) else None


def document_copy(doc: dict) -> str:
    """The raw document as JSON text, so any shape can be stored and read back for inspection."""
    return json.dumps(doc, default=str, sort_keys=True)


def flatten_runtime_logs(
    presented: Iterable[dict],
    responses: Iterable[dict],
    window: tuple[dt.datetime, dt.datetime],
    orphan_responses: Iterable[dict] = (),
    naive_responses: Iterable[dict] = (),
    earlier_uuids: dict[str, dt.datetime] | None = None,
) -> FlattenResult:
    """Flatten the presented documents of `[start, end)` and join their responses.

    `responses` are all responses for those documents' uuids (whenever they arrived);
    `orphan_responses` are responses logged in the window whose uuid has no presented document;
    `naive_responses` are responses of the window whose date has no timezone; `earlier_uuids`
    maps uuids that were first presented before the window to that first date.
    """
    start, end = window
    earlier_uuids = earlier_uuids or {}
    counts: Counter = Counter({"presented": 0, "responses": 0})
    rows: dict[str, list] = {c: [] for c in EXPOSURE_COLUMNS}
    contexts: list[dict] = []  # per exposure row, its request's context columns
    quarantine: list[dict] = []
    rows_by_reason: dict[tuple[int, str], dict] = {}
    stored: set[int] = set()

    def reject(doc, reason, detail, source="presented", when=None, request_id=None):
        counts[f"rejected_{reason}"] += 1
        row = rows_by_reason.get((id(doc), reason))
        if row is not None:  # another offer of the same document, set aside for the same reason
            row["items"] += 1
            if row["items"] <= MAX_DETAILS:
                row["detail"] += f"; {detail}"
            return
        row = {
            "uuid": request_id if request_id is not None else (str(doc.get("uuid")) if doc.get("uuid") else None),
            "predictor": doc.get("predictor") if isinstance(doc.get("predictor"), str) else None,
            "source": source,
            "reason": reason,
            "items": 1,
            "detail": detail,
            "datetime": when if when is not None else start,
            "document": None if id(doc) in stored else document_copy(doc),
        }
        stored.add(id(doc))
        rows_by_reason[(id(doc), reason)] = row
        quarantine.append(row)

    response_docs: dict[str, list[dict]] = {}
    for response in responses:
        counts["responses"] += 1
        key = str(response.get("uuid"))
        response_docs.setdefault(key, []).append(response)

    seen_uuids: set[str] = set()
    shown_by_uuid: dict[str, tuple[set[str], dt.datetime]] = {}
    # earliest first, so that of two documents with one uuid the first presented is kept
    parsed = [(parse_utc(doc.get("date_log")), doc) for doc in presented]
    parsed.sort(key=lambda item: (item[0][0] or start, str(item[1].get("_id", ""))))
    for (when, bad_date), doc in parsed:
        counts["presented"] += 1
        if bad_date:
            naive = _naive_as_utc(doc.get("date_log"))
            if naive is not None and not (start <= naive < end):
                continue  # fetched from a neighbouring day's text window; that day quarantines it
            reject(doc, bad_date, f"date_log {doc.get('date_log')!r} has no timezone", when=naive)
            continue
        if not (start <= when < end):
            continue  # a string date_log near the window edge that belongs to a neighbouring day
        request_id = doc.get("uuid")
        if request_id in (None, ""):
            reject(doc, "missing_uuid", "document has no uuid", when=when)
            continue
        request_id = str(request_id)
        if request_id in earlier_uuids:
            first = earlier_uuids[request_id].isoformat()
            reject(doc, "duplicate_uuid", f"uuid {request_id} was first presented at {first}", when=when)
            continue
        if request_id in seen_uuids:
            reject(doc, "duplicate_uuid", f"uuid {request_id} was already presented in this window", when=when)
            continue
        seen_uuids.add(request_id)
        predictor = doc.get("predictor")
        if not isinstance(predictor, str) or not predictor:
            reject(doc, "missing_predictor", "document has no predictor", when=when)
            continue
        customer = _customer(doc)
        if customer is None:
            reject(doc, "missing_customer", "neither api_params.customer nor params[key=customer] is set", when=when)
            continue
        final_result = doc.get("final_result")
        if not isinstance(final_result, list):
            reject(
                doc, "malformed_final_result", f"final_result is {type(final_result).__name__}, not a list", when=when
            )
            continue
        if not final_result:
            reject(doc, "empty_final_result", "final_result is empty", when=when)
            continue
        api_params = doc.get("api_params") if isinstance(doc.get("api_params"), dict) else {}
        channel = api_params.get("channel")
        served = {name: _text(doc.get(name)) for name in ("run_id", "experiment", "arm")}
        explore = _number(doc.get("explore"), math.nan)
        context, dropped = context_values(_in_params(doc))
        for why, n in dropped.items():
            counts[f"dropped_context_{why}"] += n
        shown: set[str] = set()
        for position, entry in enumerate(final_result, start=1):
            result = entry.get("result") if isinstance(entry, dict) else None
            where = f"final_result[{position - 1}]"
            if not isinstance(result, dict) or not (result.get("offer") or result.get("offer_name")):
                reject(doc, "malformed_offer", f"{where} has no result.offer or result.offer_name", when=when)
                continue
            offer = str(result.get("offer") or result.get("offer_name"))
            offer_name = str(result.get("offer_name") or offer)
            if offer in shown:
                reject(doc, "duplicate_offer", f"{where}: offer {offer!r} is shown twice", when=when)
                continue
            price = _number(result.get("price"), math.nan)
            score = _number(result.get("score"), math.nan)
            rank = _number(entry.get("rank"), float(position))
            bad = [
                (n, v, r)
                for n, v, r in (
                    ("price", price, "non_numeric_price"),
                    ("score", score, "non_numeric_score"),
                    ("rank", rank, "non_numeric_rank"),
                )
                if v is None
            ]
            if bad:
                name, _, reason = bad[0]
                raw = entry.get("rank") if name == "rank" else result.get(name)
                reject(doc, reason, f"{where}.result.{name} = {raw!r} is not a number", when=when)
                continue
            shown.add(offer)
            shown.add(offer_name)
            rows["uuid"].append(request_id)
            rows["predictor"].append(predictor)
            rows["channel"].append(str(channel) if channel is not None else None)
            rows["customer_id"].append(customer)
            rows["offer"].append(offer)
            rows["offer_name"].append(offer_name)
            rows["accepted"].append(0)
            rows["price"].append(price)
            rows["rank"].append(rank)
            rows["score"].append(score)
            rows["datetime"].append(when)
            for name, value in served.items():
                rows[name].append(value)
            rows["explore"].append(math.nan if explore is None else explore)
            rows["propensity"].append(_propensity(result.get("propensity")))
            contexts.append(context)
        shown_by_uuid[request_id] = (shown, when)

    # Responses: mark accepted exposures; anything accepted that was never shown is set aside.
    row_index = {(u, o): i for i, (u, o) in enumerate(zip(rows["uuid"], rows["offer"]))}
    name_index = {(u, o): i for i, (u, o) in enumerate(zip(rows["uuid"], rows["offer_name"]))}
    for request_id, docs in response_docs.items():
        if request_id not in shown_by_uuid:
            continue  # its presented document was rejected above, or lies in another window
        shown, when = shown_by_uuid[request_id]
        for response in docs:
            offers = _accepted_offers(response)
            if offers is None:
                reject(
                    response,
                    "malformed_response",
                    "response.offers_accepted is not a list of offers",
                    source="response",
                    when=when,
                    request_id=request_id,
                )
                continue
            for offer in offers:
                i = row_index.get((request_id, offer), name_index.get((request_id, offer)))
                if i is None:
                    reject(
                        response,
                        "accepted_not_shown",
                        f"offer {offer!r} was accepted but not in final_result",
                        source="response",
                        when=when,
                        request_id=request_id,
                    )
                else:
                    rows["accepted"][i] = 1
    for response in naive_responses:
        reject(
            response,
            "naive_datetime",
            f"response date_log {response.get('date_log')!r} has no timezone",
            source="response",
            when=_naive_as_utc(response.get("date_log")),
        )
    for response in orphan_responses:
        when, _ = parse_utc(response.get("date_log"))
        reject(
            response,
            "orphan_response",
            f"no presented document has uuid {response.get('uuid')!r}",
            source="response",
            when=when or start,
        )

    for row in quarantine:
        if row["items"] > MAX_DETAILS:
            row["detail"] += f"; and {row['items'] - MAX_DETAILS} more"
    exposures = pd.DataFrame(rows, columns=list(EXPOSURE_COLUMNS))
    exposures = exposures.astype({"accepted": "int64", "price": "float64", "rank": "float64", "score": "float64",
                                  "explore": "float64", "propensity": "float64"})
    exposures["datetime"] = pd.to_datetime(exposures["datetime"], utc=True)
    exposures = _with_context(exposures, contexts)
    quarantined = pd.DataFrame(quarantine, columns=list(QUARANTINE_COLUMNS))
    quarantined["datetime"] = pd.to_datetime(quarantined["datetime"], utc=True)
    quarantined["items"] = quarantined["items"].astype("int64")
    counts["exposures"] = len(exposures)
    counts["accepted"] = int(exposures["accepted"].sum())
    counts["quarantined"] = len(quarantined)
    for reason in REASONS:
        counts.setdefault(f"rejected_{reason}", 0)
    for reason in DROP_REASONS:
        counts.setdefault(f"dropped_context_{reason}", 0)
    return FlattenResult(exposures, quarantined, dict(counts))


def _with_context(exposures: pd.DataFrame, contexts: list[dict]) -> pd.DataFrame:
    """The exposures with one `context_<key>` column per key any request sent (sorted by name)."""
    names_seen = sorted({column for context in contexts for column in context})
    if not names_seen:
        return exposures
    columns = {name: [context.get(name) for context in contexts] for name in names_seen}
    return pd.concat([exposures, pd.DataFrame(columns, index=exposures.index)], axis=1)


@dataclasses.dataclass
class RuntimeWindow:
    """What the flatten of `[start, end)` reads (see :func:`fetch_runtime_window`)."""

    presented: list[dict]
    responses: list[dict]
    orphan_responses: list[dict]
    naive_responses: list[dict]
    earlier_uuids: dict[str, dt.datetime]


def fetch_runtime_window(
    store,
    start: dt.datetime,
    end: dt.datetime,
    response_window: dt.timedelta = dt.timedelta(days=7),
) -> RuntimeWindow:
    """Presented documents of `[start, end)`, their responses, and what the flatten must set aside.

    A response counts when it is logged before `end + response_window` (the attribution
    window): responses are read by date range, one indexed scan, rather than by uuid lists.
    Dates are BSON dates; ISO strings are read too (from a day either side, since an offset can
    move them across midnight) so that naive ones are quarantined rather than lost. Documents
    whose date cannot be read at all are the undated scan's (:func:`find_undated`).
    """
    presented_coll = store.collection(names.PRESENTED)
    responses_coll = store.collection(names.RESPONSES)
    # No projection: on the embedded server a projection costs more than the bytes it saves.
    presented = list(presented_coll.find({"date_log": {"$gte": start, "$lt": end}}))
    presented += list(presented_coll.find({"date_log": _text_window(start, end)}))
    uuids = {str(d["uuid"]) for d in presented if d.get("uuid") not in (None, "")}

    until = end + response_window
    dated: list[tuple[dict, dt.datetime]] = [
        (r, r["date_log"]) for r in responses_coll.find({"date_log": {"$gte": start, "$lt": until}})
    ]
    naive_responses = []
    for response in responses_coll.find({"date_log": _text_window(start, until)}):
        when, bad = parse_utc(response["date_log"])
        if bad:
            naive = _naive_as_utc(response["date_log"])
            if naive is not None and start <= naive < end:
                naive_responses.append(response)
        elif start <= when < until:
            dated.append((response, when))
    responses, candidates = [], []
    for response, when in dated:
        if str(response.get("uuid")) in uuids:
            responses.append(response)
        elif when < end:
            candidates.append(response)
    # Orphans: responses logged in the window whose uuid no presented document has, anywhere
    # (a response to yesterday's request is not an orphan).
    unknown = sorted({str(r.get("uuid")) for r in candidates})
    found: set[str] = set()
    for batch in chunked(unknown, UUID_LOOKUP_BATCH):
        found |= {str(d["uuid"]) for d in presented_coll.find({"uuid": {"$in": list(batch)}}, {"uuid": 1})}
    orphans = [r for r in candidates if str(r.get("uuid")) not in found]
    return RuntimeWindow(presented, responses, orphans, naive_responses, _first_presented_before(
        presented_coll, uuids, start))


def _text_window(start: dt.datetime, end: dt.datetime) -> dict:
    """ISO date strings that may fall in [start, end) once their offset is applied."""
    return {"$gte": (start - dt.timedelta(days=1)).date().isoformat(),
            "$lt": (end + dt.timedelta(days=1)).date().isoformat()}


def _first_presented_before(presented_coll, uuids: set[str], start: dt.datetime) -> dict[str, dt.datetime]:
    """The uuids of `uuids` that some presented document already had before `start` (a request id
    belongs to the day it was first presented on, whichever day is flattened first).

    Either the documents before `start` are scanned (an indexed date range: cheap when few came
    before, as in a backfill from the first day) or the uuids are looked up in small batches
    (cheap when the window is small next to the history, as in the nightly run)."""
    text_before = {"$lt": (start + dt.timedelta(days=1)).date().isoformat()}
    before = [{"date_log": {"$lt": start}}, {"date_log": text_before}]
    if sum(presented_coll.count_documents(q) for q in before) <= SCAN_PER_UUID * len(uuids):
        candidates = (d for q in before for d in presented_coll.find(q, {"uuid": 1, "date_log": 1}))
    else:
        candidates = (
            d for batch in chunked(sorted(uuids), UUID_LOOKUP_BATCH)
            for d in presented_coll.find({"uuid": {"$in": list(batch)}}, {"uuid": 1, "date_log": 1})
        )
    earlier: dict[str, dt.datetime] = {}
    for doc in candidates:
        key = str(doc.get("uuid"))
        if key not in uuids:
            continue
        when, _ = parse_utc(doc.get("date_log"))
        if when is not None and when < start and (key not in earlier or when < earlier[key]):
            earlier[key] = when
    return earlier


def find_undated(store, batch_size: int = 1000) -> Iterable[tuple[str, dict, str]]:
    """(source, document, detail) for every runtime document whose `date_log` cannot be read
    as a date at all (missing, null, not a date or a string, an unparseable string): no day's
    flatten reads them. Date strings, naive or not, belong to a day and are that day's."""
    for source, location in (("presented", names.PRESENTED), ("response", names.RESPONSES)):
        collection = store.collection(location)
        suspects = collection.find({"date_log": {"$not": {"$type": "date"}}}, {"date_log": 1}, batch_size=batch_size)
        bad_ids = []
        for doc in suspects:
            value = doc.get("date_log")
            if isinstance(value, str) and (parse_utc(value)[0] is not None or _naive_as_utc(value) is not None):
                continue
            bad_ids.append(doc["_id"])
        for batch in chunked(bad_ids, UUID_LOOKUP_BATCH):
            for doc in collection.find({"_id": {"$in": list(batch)}}):
                value = doc.get("date_log", "<missing>")
                yield source, doc, f"date_log {value!r} is not a date"
