"""The workbench API's data side (SPEC §9): predictors and their date bounds, read on the server,
and training and batch scoring launched as Dagster runs through the webserver's GraphQL API.

A training job is a Dagster run (its id the job id); a batch scoring job is an asset backfill of
`batch_recommendations` (a run per customer shard) and `published_recommendations` (its id, eight
letters, the job id), the way Dagster fans out partitions: the daemon launches the shard runs on the
deployment's run launcher and executor (processes, or Celery workers), then the publish once every
shard is in. `ecosystem_meta.two_tower_jobs` records what each job was asked to do (kind, the
two-tower run id, the request), so its status and result survive a restart of the service. The
status is Dagster's; the result is read from what the runs wrote.

Launches are bounded (`max_concurrent_launches` runs of this service's not finished at once) and
may carry an idempotency key: the key is reserved in MongoDB (a unique index) before the launch,
so a retried request, two identical requests at once, or a retry after a restart start one run
and get the first answer.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import threading
import time
from typing import Callable
from urllib.parse import urlsplit

import httpx
from pymongo.errors import DuplicateKeyError

from twotower_pipeline import experiments, offline
from twotower_pipeline.store import names
from twotower_pipeline.store.client import MongoStore
from twotower_pipeline.store.slices import SlicedCollection, of_writes

#: Dagster run statuses that are final.
FINISHED = {"SUCCESS", "FAILURE", "CANCELED"}
#: Backfill statuses that are final, and the run status each is reported as.
BACKFILL_FINISHED = {"COMPLETED": "SUCCESS", "COMPLETED_SUCCESS": "SUCCESS", "COMPLETED_FAILED": "FAILURE",
                     "FAILED": "FAILURE", "CANCELED": "CANCELED"}
_LAUNCH_BACKFILL = """mutation ($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on RunConfigValidationInvalid { errors { message } }
    ... on Error { message }
  }
}"""
_BACKFILL_STATUS = """query ($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    __typename
    ... on PartitionBackfill { status }
    ... on Error { message }
  }
}"""
#: Idempotency keys of launches: {key, fingerprint, state launching|launched, answer}.
LAUNCH_KEYS = "ecosystem_meta.two_tower_launch_keys"
#: A reservation still `launching` after this long was left by a process that died mid-launch:
#: a retry takes it over (a launch gives up after the client's timeout, 30 s).
STALE_RESERVATION_S = 120.0


class LaunchError(RuntimeError):
    """Dagster could not be reached or refused the launch."""


class TooManyLaunches(RuntimeError):
    """`max_concurrent_launches` runs launched here are not finished yet."""


class KeyReused(ValueError):
    """An idempotency key sent again with a different request."""


class KeyPending(RuntimeError):
    """The launch holding an idempotency key has not answered yet."""


def fingerprint(kind: str, body) -> str:
    """What makes two requests "the same": the endpoint and the parsed body (key order and
    spacing of the JSON do not matter)."""
    text = json.dumps({"kind": kind, "body": body}, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _committed(store: MongoStore) -> dict:
    """The filter of the flatten collection's committed rows (one pass; every row when no commit
    ever wrote it: another tool's)."""
    write_ids = SlicedCollection(store, names.FLATTEN).committed_write_ids()
    if write_ids is None:
        return {}
    return of_writes(write_ids.values())


def predictors(store: MongoStore) -> list[str]:
    """Distinct predictors of the flatten collection's committed rows, sorted."""
    return sorted({str(p) for p in store.collection(names.FLATTEN).distinct("predictor", _committed(store)) if p})


def predictor_date_bounds(store: MongoStore, predictor: str) -> dict:
    """{predictor, min_date, max_date, rows} of one predictor's committed flatten rows, counted and
    sorted on the server."""
    collection = store.collection(names.FLATTEN)
    query = {**_committed(store), "predictor": predictor}
    rows = collection.count_documents(query)
    if not rows:
        return {"predictor": predictor, "min_date": None, "max_date": None, "rows": 0}
    first = collection.find_one(query, {"datetime": 1, "_id": 0}, sort=[("datetime", 1)])["datetime"]
    last = collection.find_one(query, {"datetime": 1, "_id": 0}, sort=[("datetime", -1)])["datetime"]
    return {"predictor": predictor, "min_date": first, "max_date": last, "rows": rows}


class DagsterJobs:
    """Runs launched on a Dagster webserver (`dagster dev` / `dagster-webserver`) at `url`."""

    def __init__(self, store: MongoStore, url: str, timeout_s: int = 30):
        parts = urlsplit(url if "://" in url else f"http://{url}")
        self.url = f"{parts.scheme}://{parts.hostname}:{parts.port or 80}{parts.path.rstrip('/')}"
        self.store = store
        self._client_args = dict(hostname=parts.hostname, port_number=parts.port, use_https=parts.scheme == "https",
                                 timeout=timeout_s, path_prefix=parts.path.rstrip("/"))
        self._client = None
        self.records = store.collection(names.JOBS)
        self.keys = store.collection(LAUNCH_KEYS)
        # the cap is checked and a run launched as one step: two requests at once cannot both pass
        self._launching = threading.Lock()
        self._indexed = False

    @property
    def client(self):
        if self._client is None:
            from dagster_graphql import DagsterGraphQLClient
            self._client = DagsterGraphQLClient(**self._client_args)
        return self._client

    def _indexes(self) -> None:
        if not self._indexed:
            self.records.create_index("job_id", unique=True)
            self.keys.create_index("key", unique=True)
            self._indexed = True

    def launch(self, kind: str, job_name: str, run_config: dict, *, run_id: str, request: dict,
               max_active: int = 2) -> str:
        """Submit `job_name` and record it; the Dagster run id (the job id). TooManyLaunches when
        `max_active` jobs launched here are not finished."""
        return self._capped(max_active, lambda: self._submit(kind, job_name, run_config, run_id=run_id,
                                                             request=request))

    def launch_backfill(self, kind: str, assets: list[str], run_config: dict, *, run_id: str, request: dict,
                        max_active: int = 2) -> str:
        """Submit an asset backfill of every partition of `assets` and record it; its id (the job
        id). TooManyLaunches as for `launch`."""
        return self._capped(max_active, lambda: self._submit_backfill(kind, assets, run_config, run_id=run_id,
                                                                      request=request))

    def _capped(self, max_active: int, submit: Callable[[], str]) -> str:
        self._indexes()
        with self._launching:
            active = self.active()
            if active >= max_active:
                raise TooManyLaunches(f"{active} runs launched through this service are not finished "
                                      f"(max_concurrent_launches {max_active}): try again once one is")
            return submit()

    def active(self) -> int:
        """Jobs launched here that Dagster does not report finished; a finished one is marked so,
        and never asked about again."""
        count = 0
        for record in self.records.find({"finished": {"$ne": True}}, {"job_id": 1, "backfill": 1}):
            status = self._run_status(record)
            if status in FINISHED or status == "NOT_FOUND":
                self.records.update_one({"_id": record["_id"]}, {"$set": {"finished": True}})
            else:
                count += 1
        return count

    def launch_once(self, key: str | None, print_: str, launch: Callable[[], dict],
                    wait_s: float = 40.0) -> tuple[dict, bool]:
        """(answer, replayed): `launch()`'s answer, or with a key already used for the same request
        the first answer, without launching. The key is reserved before the launch (a unique
        index: of two requests at once one launches, the other waits for its answer) and released
        when the launch fails, so that a retry can launch."""
        if key is None:
            return launch(), False
        self._indexes()
        deadline = time.monotonic() + wait_s
        while True:
            now = dt.datetime.now(dt.timezone.utc)
            try:
                reservation = self.keys.insert_one({"key": key, "fingerprint": print_, "state": "launching",
                                                    "reserved_at": now}).inserted_id
                break
            except DuplicateKeyError:
                found = self.keys.find_one({"key": key})
            if found is None:
                continue  # released in between: reserve it again
            if found["fingerprint"] != print_:
                raise KeyReused(f"Idempotency-Key {key!r} was sent before with a different request: a key "
                                "names one request; use a new key for a new one")
            if found["state"] == "launched":
                return found["answer"], True
            stale = now - found["reserved_at"].replace(tzinfo=dt.timezone.utc) > dt.timedelta(
                seconds=STALE_RESERVATION_S)
            if stale and self.keys.find_one_and_update(
                    {"_id": found["_id"], "state": "launching", "reserved_at": found["reserved_at"]},
                    {"$set": {"reserved_at": now}}) is not None:
                reservation = found["_id"]
                break
            if time.monotonic() > deadline:
                raise KeyPending(f"the request with Idempotency-Key {key!r} is still being launched: "
                                 "ask again in a moment")
            time.sleep(0.05)
        try:
            answer = launch()
        except BaseException:
            self.keys.delete_one({"_id": reservation, "state": "launching"})
            raise
        self.keys.update_one({"_id": reservation}, {"$set": {
            "state": "launched", "answer": answer, "job_id": answer.get("job_id"),
            "launched_at": dt.datetime.now(dt.timezone.utc)}})
        return answer, False

    def _submit(self, kind: str, job_name: str, run_config: dict, *, run_id: str, request: dict) -> str:
        from dagster_graphql import DagsterGraphQLClientError
        try:
            job_id = self.client.submit_job_execution(job_name, run_config=run_config,
                                                      tags={"twotower/job_kind": kind, "twotower/run_id": run_id})
        except (DagsterGraphQLClientError, OSError) as error:
            raise LaunchError(f"Dagster at {self.url} did not launch {job_name}: {error}") from None
        except Exception as error:  # requests' connection errors and gql transport errors
            raise LaunchError(f"Dagster at {self.url} could not be reached to launch {job_name}: "
                              f"{type(error).__name__}") from None
        self.records.insert_one({"job_id": job_id, "kind": kind, "job_name": job_name, "run_id": run_id,
                                 "request": request, "created_at": dt.datetime.now(dt.timezone.utc)})
        return job_id

    def _submit_backfill(self, kind: str, assets: list[str], run_config: dict, *, run_id: str,
                         request: dict) -> str:
        params = {"assetSelection": [{"path": [asset]} for asset in assets], "allPartitions": True,
                  "runConfigData": run_config, "title": f"{kind} {run_id}",
                  "tags": [{"key": "twotower/job_kind", "value": kind}, {"key": "twotower/run_id", "value": run_id}]}
        answer = self._graphql(_LAUNCH_BACKFILL, {"params": params}, f"launch a backfill of {', '.join(assets)}")
        result = answer["launchPartitionBackfill"]
        if result["__typename"] != "LaunchBackfillSuccess":
            why = result.get("message") or "; ".join(e["message"] for e in result.get("errors") or [])
            raise LaunchError(f"Dagster at {self.url} refused the backfill of {', '.join(assets)}: "
                              f"{result['__typename']}: {why}")
        job_id = result["backfillId"]
        self.records.insert_one({"job_id": job_id, "kind": kind, "backfill": True, "assets": assets,
                                 "run_id": run_id, "request": request,
                                 "created_at": dt.datetime.now(dt.timezone.utc)})
        return job_id

    def _graphql(self, query: str, variables: dict, doing: str) -> dict:
        """The `data` of a GraphQL request to the webserver; LaunchError when it cannot be had."""
        try:
            answer = httpx.post(f"{self.url}/graphql", json={"query": query, "variables": variables},
                                timeout=self._client_args["timeout"])
            body = answer.json() if answer.headers.get("content-type", "").startswith("application/json") else {}
        except (httpx.HTTPError, ValueError) as error:
            raise LaunchError(f"Dagster at {self.url} could not be reached to {doing}: {type(error).__name__}") \
                from None
        if answer.status_code != 200 and not body.get("errors"):
            raise LaunchError(f"Dagster at {self.url} answered {answer.status_code} when asked to {doing}")
        if body.get("errors"):
            raise LaunchError(f"Dagster at {self.url} could not {doing}: {body['errors'][0].get('message')}")
        return body["data"]

    def _run_status(self, record: dict) -> str:
        """Dagster's status of a job: its run's, or for a backfill the run status its state means
        (STARTED until it is final); NOT_FOUND when Dagster no longer knows it."""
        from dagster_graphql import DagsterGraphQLClientError
        job_id = record["job_id"]
        if record.get("backfill"):
            found = self._graphql(_BACKFILL_STATUS, {"id": job_id}, f"be asked for backfill {job_id}")
            backfill = found["partitionBackfillOrError"]
            if backfill["__typename"] == "BackfillNotFoundError":
                return "NOT_FOUND"
            if backfill["__typename"] != "PartitionBackfill":
                raise LaunchError(f"Dagster at {self.url} could not be asked for backfill {job_id}: "
                                  f"{backfill.get('message')}")
            status = backfill["status"]
            return BACKFILL_FINISHED.get(status) or ("CANCELING" if status == "CANCELING" else "STARTED")
        try:
            return self.client.get_run_status(job_id).value
        except DagsterGraphQLClientError as error:
            if str(error.args[0] if error.args else "").endswith("NotFoundError"):
                return "NOT_FOUND"  # a run Dagster no longer knows runs nothing
            raise LaunchError(f"Dagster at {self.url} could not be asked for run {job_id}: {error}") from None
        except Exception as error:
            raise LaunchError(f"Dagster at {self.url} could not be asked for run {job_id}: "
                              f"{type(error).__name__}") from None

    def status(self, job_id: str) -> dict | None:
        """{job_id, kind, job_name, run_id, status, result} or None for an unknown job id."""
        record = self.records.find_one({"job_id": job_id}, {"_id": 0, "finished": 0})
        if record is None:
            return None
        status = self._run_status(record)
        answer = {**{k: v for k, v in record.items() if k not in ("backfill", "request")}, "status": status,
                  "result": None}
        if status == "SUCCESS":
            answer["result"] = self._result(record)
        return answer

    def _result(self, record: dict) -> dict:
        run_id = record["run_id"]
        if record["kind"] == "train":
            run = self.store.collection(names.RUNS).find_one({"run_id": run_id}, {"_id": 0}) or {}
            verdict = offline.offline_metrics(self.store, run_id) or {}
            return {"run_id": run_id, "user_model_id": run.get("user_model_id"),
                    "item_model_id": run.get("item_model_id"), "user_auc": run.get("user_auc"),
                    "item_auc": run.get("item_auc"), "n_rows": run.get("n_rows"),
                    "gate_passed": bool((verdict.get("gate") or {}).get("passed"))}
        if record["kind"].startswith("experiment_"):
            name = (record.get("request") or {}).get("experiment")
            found = self.store.collection(experiments.EXPERIMENTS).find_one({"_id": name}, {"history": 0}) or {}
            return {"run_id": run_id, "experiment": name, "state": found.get("state"), "reason": found.get("reason")}
        scores = self.store.database(offline.DATABASE)[names.SCORES]
        return {"run_id": run_id, "scores_collection": names.SCORES,
                "customers": scores.count_documents({"run_id": run_id})}
