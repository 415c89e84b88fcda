"""The workbench API's data side (SPEC §9): predictors and their date bounds, read on the server,
and training and batch scoring launched as Dagster runs through the webserver's GraphQL API.

A job id is the Dagster run id; `ecosystem_meta.two_tower_jobs` records what each job was asked
to do (kind, the two-tower run id, the request), so its status and result survive a restart of
the service. The status is Dagster's; the result is read from what the run wrote.
"""

from __future__ import annotations

import datetime as dt
from urllib.parse import urlsplit

from twotower_pipeline import offline
from twotower_pipeline.store import names
from twotower_pipeline.store.client import MongoStore
from twotower_pipeline.store.slices import WRITE_ID_FIELD, SlicedCollection

#: Dagster run statuses that are final.
FINISHED = {"SUCCESS", "FAILURE", "CANCELED"}


class LaunchError(RuntimeError):
    """Dagster could not be reached or refused the launch."""


def _committed(store: MongoStore) -> list[tuple[str, dict]]:
    """(slice key, filter) of each committed flatten slice (a day), in key order; one filter of
    the whole collection when no commit ever wrote it (another tool's)."""
    write_ids = SlicedCollection(store, names.FLATTEN).committed_write_ids()
    if write_ids is None:
        return [("", {})]
    return [(key, {WRITE_ID_FIELD: write_ids[key]}) for key in sorted(write_ids)]


def predictors(store: MongoStore) -> list[str]:
    """Distinct predictors of the flatten collection's committed rows, sorted."""
    collection = store.collection(names.FLATTEN)
    found = set()
    for _, selection in _committed(store):
        found |= {str(p) for p in collection.distinct("predictor", selection) if p}
    return sorted(found)


def predictor_date_bounds(store: MongoStore, predictor: str) -> dict:
    """{predictor, min_date, max_date, rows} of one predictor's committed flatten rows: each day's
    slice is read on the write-id index (the query every read of a day makes), the first and the
    last day holding the predictor give the dates."""
    collection = store.collection(names.FLATTEN)
    rows, first, last = 0, None, None
    for _, selection in _committed(store):
        query = {**selection, "predictor": predictor}
        count = collection.count_documents(query)
        if not count:
            continue
        rows += count
        earliest = collection.find_one(query, {"datetime": 1, "_id": 0}, sort=[("datetime", 1)])["datetime"]
        latest = collection.find_one(query, {"datetime": 1, "_id": 0}, sort=[("datetime", -1)])["datetime"]
        first = earliest if first is None else min(first, earliest)
        last = latest if last is None else max(last, latest)
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

    @property
    def client(self):
        if self._client is None:
            from dagster_graphql import DagsterGraphQLClient
            self._client = DagsterGraphQLClient(**self._client_args)
        return self._client

    def launch(self, kind: str, job_name: str, run_config: dict, *, run_id: str, request: dict) -> str:
        """Submit `job_name` and record it; the Dagster run id (the job id)."""
        from dagster_graphql import DagsterGraphQLClientError
        try:
            job_id = self.client.submit_job_execution(job_name, run_config=run_config,
                                                      tags={"twotower/job_kind": kind, "twotower/run_id": run_id})
        except (DagsterGraphQLClientError, OSError) as error:
            raise LaunchError(f"Dagster at {self.url} did not launch {job_name}: {error}") from None
        except Exception as error:  # requests' connection errors and gql transport errors
            raise LaunchError(f"Dagster at {self.url} could not be reached to launch {job_name}: "
                              f"{type(error).__name__}") from None
        self.records.create_index("job_id", unique=True)
        self.records.insert_one({"job_id": job_id, "kind": kind, "job_name": job_name, "run_id": run_id,
                                 "request": request, "created_at": dt.datetime.now(dt.timezone.utc)})
        return job_id

    def status(self, job_id: str) -> dict | None:
        """{job_id, kind, job_name, run_id, status, result} or None for an unknown job id."""
        record = self.records.find_one({"job_id": job_id}, {"_id": 0, "request": 0})
        if record is None:
            return None
        try:
            status = self.client.get_run_status(job_id).value
        except Exception as error:  # the run's record is ours; its status is Dagster's
            raise LaunchError(f"Dagster at {self.url} could not be asked for run {job_id}: "
                              f"{type(error).__name__}") from None
        answer = {**record, "status": status, "result": None}
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
        scores = self.store.database(offline.DATABASE)[names.SCORES]
        return {"run_id": run_id, "scores_collection": names.SCORES,
                "customers": scores.count_documents({"run_id": run_id})}
