"""What the verbs of publishing share: the live collections' towers, the publish journal
(`ecosystem_meta.two_tower_publish`: what is live, what was, a publish under way) and its lease."""

from __future__ import annotations

import dataclasses
import re

from twotower_pipeline.store import leases, names
from twotower_pipeline.store.client import MongoStore
from twotower_pipeline.store.slices import ALL

JOURNAL = "ecosystem_meta.two_tower_publish"
RUN_MARK = "__run_"
#: Staging collections of a publish: `<live name>__staging_<hex>`, dropped by the next publish.
STAGING_MARK = "__staging_"
#: A live run's refreshed vectors (new or changed keys since it was published):
#: `<live name>__refresh_<run_id>`, one document per key, part of that run's vectors from then on.
REFRESH_MARK = "__refresh_"
NORM_TOLERANCE = 1e-4
KEEP_RUNS = 3
HISTORY = 20
#: Customer buckets (see `customer_buckets`); a shard of batch scoring is a range of them.
BUCKETS = 1024
#: A run id is part of collection names: no "..", no "." at the end (MongoDB refuses both there).
RUN_ID_PATTERN = re.compile(r"^(?!.*\.\.)[A-Za-z0-9_.-]{0,79}[A-Za-z0-9_-]$")


@dataclasses.dataclass(frozen=True)
class Tower:
    """One live collection of a published set: the embedding pair's towers, or the batch scores."""

    name: str  # "user" | "item" | "scores"
    collection: str  # the live collection's name (SPEC §5, §6)
    key_field: str
    vector_field: str | None = "embedding"  # verified finite, unit, one width; None: no vectors
    slices: tuple[str, ...] = (ALL,)  # the run collection's slices that must all be committed


TOWERS = (
    Tower("user", names.USER_EMBEDDINGS, "customer_id"),
    Tower("item", names.ITEM_EMBEDDINGS, "offer"),
)


class PublishError(RuntimeError):
    """A publish (or rollback) that did not go live; the journal says what is live instead."""

    def __init__(self, message: str, report=None):  # report: a verify.LiveReport
        super().__init__(message)
        self.report = report


def check_run_id(run_id: str) -> str:
    if not isinstance(run_id, str) or not RUN_ID_PATTERN.match(run_id):
        raise ValueError(f"run_id {run_id!r} must be 1-80 letters, digits, '_', '-' or '.' (not '..', not "
                         "ending in '.')")
    return run_id


class PublishJournal:
    """One set of live collections in one database (the embedding pair, or the batch scores) and
    the journal document that says which run they hold."""

    def __init__(self, store: MongoStore, database: str = "logging", *, towers: tuple[Tower, ...] = TOWERS,
                 journal_key: str | None = None, keep_runs: int = KEEP_RUNS,
                 lease_seconds: float = leases.LEASE_SECONDS, wait_seconds: float = leases.WAIT_SECONDS):
        self.store = store
        self.database_name = database
        self.database = store.database(database)
        self.towers = towers
        #: the journal document of this set (the embedding pair's is keyed by the database name)
        self.journal_key = journal_key or database
        self.journal = leases.journaled(store.collection(JOURNAL))
        self.keep_runs = keep_runs
        self.lease_seconds = lease_seconds
        self.wait_seconds = wait_seconds

    def tower(self, name: str) -> Tower:
        for candidate in self.towers:
            if candidate.name == name:
                return candidate
        raise ValueError(f"unknown tower {name!r}; expected one of {[t.name for t in self.towers]}")

    def run_location(self, tower_name: str, run_id: str) -> str:
        return f"{self.database_name}.{self.tower(tower_name).collection}{RUN_MARK}{check_run_id(run_id)}"

    def _refreshed(self, spec: Tower, run_id: str):
        """The run's refreshed vectors of one tower (an empty collection until a refresh)."""
        return self.database[f"{spec.collection}{REFRESH_MARK}{check_run_id(run_id)}"]

    def status(self) -> dict:
        return self.journal.find_one({"_id": self.journal_key}, {"leases": 0}) or {
            "_id": self.journal_key, "state": "empty", "live_run_id": None, "previous_run_id": None}

    def live_run_id(self) -> str | None:
        return self.status().get("live_run_id")

    def _lease(self, owner: dict | None) -> leases.Lease:
        leases.ensure_record(self.journal, self.journal_key,
                             {"state": "empty", "live_run_id": None, "previous_run_id": None, "history": []})
        return leases.Lease(self.journal, self.journal_key, ["publish"], owner=owner,
                            what=f"publishing {', '.join(t.collection for t in self.towers)} in {self.database_name}",
                            lease_seconds=self.lease_seconds, wait_seconds=self.wait_seconds)

    def _record_live(self, lease: leases.Lease, run_id: str, previous: str | None, counts: dict, event: str):
        now = leases.now()
        lease.update({
            "$set": {"state": "live", "live_run_id": run_id, "previous_run_id": previous, "published_at": now,
                     "counts": counts, "target_run_id": None, "from_run_id": None},
            "$push": {"history": {"$each": [{"at": now, "event": event, "run_id": run_id}], "$slice": -HISTORY}},
        })
