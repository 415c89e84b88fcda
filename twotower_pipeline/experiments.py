"""Champion and challenger: an experiment serves a run that passed the publish gate (the
challenger) beside the live run (the champion) to a share of one campaign's customers, until it is
stopped or the challenger is promoted.

Which arm a customer sees is a stable hash of the experiment's name and the customer id: the same
customer sees the same run for the whole experiment, in every process of the runtime, and another
experiment draws its own split. The records live in `ecosystem_meta.two_tower_experiments`, one
document per experiment (its name the `_id`); a unique index on `running_campaign`, set only while
an experiment runs, keeps one experiment per campaign at a time, however many launch at once.

No Dagster here: the jobs, the sensor, `online_metrics` and the runtime all call these functions.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import re
import uuid

from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError

from twotower_pipeline import offline, publishing
from twotower_pipeline.store.client import MongoStore, redact_text

EXPERIMENTS = "ecosystem_meta.two_tower_experiments"
CHAMPION, CHALLENGER = "champion", "challenger"
#: The arm of an exposure served outside any experiment.
LIVE = "live"
RUNNING, PROMOTING, STOPPED, PROMOTED = "running", "promoting", "stopped", "promoted"
#: Experiment names: they are hashed into the split and shown in the UI.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,79}$")
HISTORY = 50
#: A promotion whose process died before it recorded the outcome may be taken over (by another
#: promotion, or stopped) after this long: past what a live one can take, a publish waiting for
#: its lease (`leases.WAIT_SECONDS`, 30 minutes) and then publishing.
PROMOTION_STALE_S = 3600


class ExperimentError(RuntimeError):
    """An experiment that cannot be started, stopped or promoted as asked; nothing was changed."""


def arm_of(experiment: str, customer_id: str, share: float) -> str:
    """`challenger` for the `share` of customers whose hash of (experiment, customer) falls below
    it, `champion` for the rest: a pure function of its arguments (the same in every process)."""
    digest = hashlib.blake2b(f"{experiment}\x00{customer_id}".encode(), digest_size=8).digest()
    return CHALLENGER if int.from_bytes(digest, "big") / 2.0 ** 64 < share else CHAMPION


@dataclasses.dataclass(frozen=True)
class Experiment:
    """A running experiment as the runtime needs it."""

    name: str
    campaign: str
    challenger_run_id: str
    share: float
    champion_run_id: str | None = None  # live when it started (the champion arm serves whatever is live)

    def arm_of(self, customer_id: str) -> str:
        return arm_of(self.name, customer_id, self.share)


def _collection(store: MongoStore, *, writing: bool = False):
    """The records; a writer makes sure of the index that keeps one experiment per campaign (readers,
    the runtime's reload among them, leave the server alone)."""
    collection = store.collection(EXPERIMENTS)
    if writing:
        collection.create_index("running_campaign", unique=True, sparse=True)
    return collection


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _event(event: str, **fields) -> dict:
    return {"$push": {"history": {"$each": [{"at": _now(), "event": event, **fields}], "$slice": -HISTORY}}}


def start(store: MongoStore, name: str, campaign: str, challenger_run_id: str, share: float = 0.5, *,
          promote_on_win: bool = False, owner: dict | None = None) -> dict:
    """Record a running experiment: `challenger_run_id` (a run that passed the publish gate and is
    not the live one) served to `share` of `campaign`'s customers. Refused, with the reason and
    nothing recorded, for a bad name or share, an ungated or live challenger, a name used before,
    or a campaign that already runs an experiment."""
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise ExperimentError(f"experiment name {name!r} must be 1-80 letters, digits, '_', '-' or '.', starting "
                              "with a letter or digit")
    if not campaign or not isinstance(campaign, str):
        raise ExperimentError("an experiment needs the campaign (predictor) it runs on")
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0.0 < share < 1.0:
        raise ExperimentError(f"share {share!r} must lie strictly between 0 and 1 (the challenger's share of "
                              "customers)")
    try:
        offline.require_gate(store, challenger_run_id)
    except offline.GateError as error:
        raise ExperimentError(f"run {challenger_run_id} cannot be a challenger: {error}") from None
    live = publishing.live_run_id(store)
    if live is None:
        raise ExperimentError("no run is live: a challenger is compared with the live run, publish one first")
    if live == challenger_run_id:
        raise ExperimentError(f"run {challenger_run_id} is the live run already: it cannot challenge itself")
    collection = _collection(store, writing=True)
    now = _now()
    document = {"_id": name, "campaign": campaign, "running_campaign": campaign, "state": RUNNING,
                "challenger_run_id": challenger_run_id, "champion_run_id": live, "share": float(share),
                "promote_on_win": bool(promote_on_win), "started_at": now, "started_day": now.date().isoformat(),
                "ended_at": None, "reason": None, "verdicts": {},
                "history": [{"at": now, "event": "started", **({"owner": owner} if owner else {})}]}
    try:
        collection.insert_one(document)
    except DuplicateKeyError:
        if collection.find_one({"_id": name}, {"_id": 1}) is not None:
            raise ExperimentError(f"an experiment named {name!r} exists already (its records are kept): choose "
                                  "another name") from None
        holder = campaign_holder(store, campaign)
        which = f"experiment {holder!r}" if holder else "another experiment"
        raise ExperimentError(f"campaign {campaign!r} already runs {which}: stop or promote it first (one "
                              "experiment per campaign)") from None
    return document


def get(store: MongoStore, name: str) -> dict:
    """The experiment's record; ExperimentError naming it when there is none."""
    found = _collection(store).find_one({"_id": name})
    if found is None:
        raise ExperimentError(f"no experiment named {name!r}")
    return found


def campaign_holder(store: MongoStore, campaign: str) -> str | None:
    """The experiment running (or being promoted) on `campaign`: the one the unique index lets hold it."""
    found = _collection(store).find_one({"running_campaign": campaign}, {"_id": 1})
    return None if found is None else found["_id"]


def running(store: MongoStore) -> list[Experiment]:
    """The experiments serving a challenger now (read on the `running_campaign` index)."""
    return [Experiment(d["_id"], d["campaign"], d["challenger_run_id"], d["share"], d.get("champion_run_id"))
            for d in _collection(store).find({"running_campaign": {"$exists": True}, "state": RUNNING})]


def _stale_promotion() -> dict:
    return {"state": PROMOTING, "$or": [
        {"promotion.started_at": {"$lt": _now() - dt.timedelta(seconds=PROMOTION_STALE_S)}},
        {"promotion.started_at": {"$exists": False}}]}


def stop(store: MongoStore, name: str, reason: str, *, owner: dict | None = None) -> dict:
    """End a running experiment (or one whose promotion was abandoned): the live run serves
    everyone again. The reason is recorded."""
    if not reason or not str(reason).strip():
        raise ExperimentError("stopping an experiment needs a reason (it is recorded)")
    reason = str(reason)
    record = _collection(store).find_one({"_id": name, "state": PROMOTING}, {"challenger_run_id": 1})
    if record is not None and publishing.live_run_id(store) == record["challenger_run_id"]:
        reason += f" (the abandoned promotion had published run {record['challenger_run_id']}: it is live)"
    ended = _collection(store).find_one_and_update(
        {"_id": name, "$or": [{"state": RUNNING}, _stale_promotion()]},
        {"$set": {"state": STOPPED, "ended_at": _now(), "reason": reason}, "$unset": {"running_campaign": ""},
         **_event("stopped", reason=reason, **({"owner": owner} if owner else {}))},
        return_document=ReturnDocument.AFTER)
    if ended is None:
        state = get(store, name)["state"]
        why = (f": its challenger is being published; let the promotion finish (one abandoned can be stopped "
               f"after {PROMOTION_STALE_S} s)") if state == PROMOTING else ""
        raise ExperimentError(f"experiment {name!r} is not running (it is {state}){why}")
    return ended


def begin_promotion(store: MongoStore, name: str, *, owner: dict | None = None) -> tuple[dict, str]:
    """Mark a running experiment as being promoted by this caller: (its record, the promotion's
    token). A promotion left unfinished (its process died) is taken over after `PROMOTION_STALE_S`;
    one under way is refused, so two promotions never publish at once."""
    token, now = uuid.uuid4().hex, _now()
    marked = _collection(store).find_one_and_update(
        {"_id": name, "$or": [{"state": RUNNING}, _stale_promotion()]},
        {"$set": {"state": PROMOTING, "promotion": {"token": token, "started_at": now, "owner": owner}},
         **_event("promoting", **({"owner": owner} if owner else {}))},
        return_document=ReturnDocument.AFTER)
    if marked is None:
        record = get(store, name)
        if record["state"] == PROMOTING:
            promotion = record.get("promotion") or {}
            by = f" by {promotion['owner']}" if promotion.get("owner") else ""
            raise ExperimentError(f"experiment {name!r} is being promoted already (since "
                                  f"{promotion.get('started_at')}{by}); a promotion left unfinished is taken over "
                                  f"after {PROMOTION_STALE_S} s")
        raise ExperimentError(f"experiment {name!r} is not running (it is {record['state']}): only a running "
                              "experiment's challenger is promoted")
    return marked, token


def end_promotion(store: MongoStore, name: str, token: str, published: bool, reason: str) -> dict:
    """After the publish: `promoted` (the challenger is live, the experiment over) or back to
    `running` (the publish failed; the champion is still live). Refused when another caller took
    the promotion over meanwhile."""
    if published:
        update = {"$set": {"state": PROMOTED, "ended_at": _now(), "reason": reason},
                  "$unset": {"running_campaign": "", "promotion": ""}, **_event("promoted", reason=reason)}
    else:
        update = {"$set": {"state": RUNNING}, "$unset": {"promotion": ""}, **_event("promotion_failed", reason=reason)}
    ended = _collection(store).find_one_and_update({"_id": name, "state": PROMOTING, "promotion.token": token},
                                                   update, return_document=ReturnDocument.AFTER)
    if ended is None:
        raise ExperimentError(f"experiment {name!r}: this promotion was taken over by another (it ran past "
                              f"{PROMOTION_STALE_S} s); its record is that one's to finish")
    return ended


def promote(store: MongoStore, name: str, *, owner: dict | None = None) -> dict:
    """Publish the challenger through the publish path (both towers as one unit, verified; a
    challenger an unfinished promotion already published is published again) and end the
    experiment; when the publish fails the experiment keeps running and the error is raised."""
    experiment, token = begin_promotion(store, name, owner=owner)
    run_id = experiment["challenger_run_id"]
    try:
        outcome = publishing.publish_run(store, run_id, owner=owner)
    except Exception as error:
        try:
            end_promotion(store, name, token, False, f"{type(error).__name__}: {redact_text(str(error), store.uri)}")
        except ExperimentError:
            pass  # taken over meanwhile: that promotion records the outcome; the publish's error is this one's
        raise
    try:
        end_promotion(store, name, token, True, f"run {run_id} published (was {outcome.get('previous_run_id')})")
    except ExperimentError as error:
        raise ExperimentError(f"run {run_id} is live, but {error}") from None
    return outcome


def record_verdict(store: MongoStore, name: str, day: str, verdict: dict) -> None:
    """Keep `online_metrics`' verdict of one day (a day re-computed replaces its own only)."""
    _collection(store).update_one({"_id": name}, {"$set": {f"verdicts.{day}": verdict}})


def latest_verdict(experiment: dict) -> tuple[str, dict] | None:
    """(day, verdict) of the newest day with a verdict, or None."""
    verdicts = experiment.get("verdicts") or {}
    return max(verdicts.items()) if verdicts else None


def records(store: MongoStore, *, campaign: str | None = None, state: str | None = None,
            limit: int = 50) -> list[dict]:
    """The newest experiments (of a campaign, in a state), for the workbench and the sensor."""
    query = {**({"campaign": campaign} if campaign else {}), **({"state": state} if state else {})}
    return list(_collection(store).find(query, {"history": 0}).sort("started_at", -1).limit(limit))


def serving_between(store: MongoStore, start: dt.datetime, end: dt.datetime) -> list[dict]:
    """Every experiment that served some time in [start, end): started before its end, not ended
    before its start."""
    query = {"started_at": {"$lt": end}, "$or": [{"ended_at": None}, {"ended_at": {"$gte": start}}]}
    return list(_collection(store).find(query, {"history": 0}))
