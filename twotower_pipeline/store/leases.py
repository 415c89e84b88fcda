"""Leases kept inside a record document: one writer at a time, without a lock server.

A lease is a sub-document `leases.<field>: {id, owner, since, expires}` of some record (a slice
commit record, the publish journal), taken by one conditional update. The holder renews it in
the background; anything it then does to the record is conditional on still holding it
(:meth:`Lease.held`), so a writer that lost its lease (paused past the expiry, partitioned away)
cannot commit over the next one. A lease whose owner process died on this host is taken over at
once; one held on another host, once it expires.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import threading
import time
import uuid
from collections.abc import Sequence

from pymongo import WriteConcern
from pymongo.collection import Collection
from pymongo.errors import DuplicateKeyError

from twotower_pipeline.store import processes
from twotower_pipeline.store.faults import fault_point

LEASE_SECONDS = 60.0
WAIT_SECONDS = 1800.0


class Busy(TimeoutError):
    """Another writer held the lease for longer than this one would wait."""


class LeaseLost(RuntimeError):
    """The lease expired and was taken over: its holder must not commit."""


def journaled(records: Collection) -> Collection:
    """The collection with writes acknowledged only once in the server's journal. A commit record
    or a publish journal must survive a crash of the server the moment after it was acknowledged;
    the embedded server otherwise loses the last writes before a kill -9, and since its log is
    written in order, a journaled commit also makes every earlier write durable."""
    return records.with_options(write_concern=WriteConcern(j=True))


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def ensure_record(records: Collection, record_id: str, initial: dict) -> None:
    """Create the record document if it does not exist (concurrent creators are fine)."""
    if records.find_one({"_id": record_id}, {"_id": 1}) is None:
        with contextlib.suppress(DuplicateKeyError):
            records.update_one({"_id": record_id}, {"$setOnInsert": {**initial, "leases": {}}}, upsert=True)


class Lease:
    """One holder's lease on `fields` of the record `record_id` in `records`."""

    def __init__(self, records: Collection, record_id: str, fields: Sequence[str], *, what: str,
                 owner: dict | None = None, lease_seconds: float = LEASE_SECONDS,
                 wait_seconds: float = WAIT_SECONDS):
        self.records = records
        self.record_id = record_id
        self.fields = list(fields)
        self.what = what
        self.id = uuid.uuid4().hex
        self.owner = {**processes.identity(), **(owner or {})}
        self.lease_seconds = lease_seconds
        self.wait_seconds = wait_seconds
        self._lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def held(self) -> dict:
        """A filter that matches the record only while this lease holds every field."""
        return {"_id": self.record_id, **{f"leases.{f}.id": self.id for f in self.fields}}

    def __enter__(self) -> "Lease":
        self.acquire()
        self._thread = threading.Thread(target=self._beat, name=f"lease {self.what}", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with contextlib.suppress(Exception):
            self.records.update_one(self.held(), {"$unset": {f"leases.{f}": "" for f in self.fields}})

    def acquire(self) -> None:
        deadline = time.monotonic() + self.wait_seconds
        delay = 0.05
        dead: set[str] = set()
        while True:
            taken_at = now()
            free = [
                {"$or": [{f"leases.{f}": {"$exists": False}}, {f"leases.{f}.expires": {"$lt": taken_at}},
                         {f"leases.{f}.id": {"$in": sorted(dead)}}]}
                for f in self.fields
            ]
            lease = {"id": self.id, "owner": self.owner, "since": taken_at,
                     "expires": taken_at + dt.timedelta(seconds=self.lease_seconds)}
            taken = self.records.update_one({"_id": self.record_id, "$and": free},
                                            {"$set": {f"leases.{f}": lease for f in self.fields}})
            if taken.matched_count == 1:
                return
            holders = self.holders()
            newly_dead = {h["id"] for h in holders if processes.is_alive(h.get("owner") or {}) is False}
            if newly_dead - dead:
                dead |= newly_dead
                continue
            fault_point("lease.waiting")
            if time.monotonic() >= deadline:
                who = "; ".join(describe(h) for h in holders) or "an unknown writer"
                raise Busy(f"{self.what} is held by {who}; gave up after {self.wait_seconds:.0f}s")
            time.sleep(delay)
            delay = min(delay * 2, 1.0)

    def holders(self) -> list[dict]:
        """The other leases on these fields now."""
        record = self.records.find_one({"_id": self.record_id}, {"leases": 1}) or {}
        leases = record.get("leases") or {}
        found = {leases[f]["id"]: leases[f] for f in self.fields if f in leases and leases[f].get("id") != self.id}
        return list(found.values())

    def _beat(self) -> None:
        while not self._stop.wait(self.lease_seconds / 4):
            try:
                expires = now() + dt.timedelta(seconds=self.lease_seconds)
                renewed = self.records.update_one(
                    self.held(), {"$set": {f"leases.{f}.expires": expires for f in self.fields}}
                )
            except Exception:  # a server that is briefly away: the expiry leaves room to retry
                continue
            if renewed.matched_count != 1:
                self._lost.set()
                return

    def check(self) -> None:
        """Raise :class:`LeaseLost` if the heartbeat found the lease taken over."""
        if self._lost.is_set():
            raise LeaseLost(f"the lease on {self.what} expired and was taken over")

    def update(self, update: dict) -> None:
        """Apply `update` to the record only if this lease still holds; else :class:`LeaseLost`."""
        self.check()
        if self.records.update_one(self.held(), update).matched_count != 1:
            raise LeaseLost(f"the lease on {self.what} was taken over; the update was not applied")


def describe(lease: dict) -> str:
    owner = lease.get("owner") or {}
    run = f"Dagster run {owner['dagster_run_id']} " if owner.get("dagster_run_id") else ""
    since = lease.get("since")
    when = f", since {since.isoformat(timespec='seconds')}" if since else ""
    return f"{run}(pid {owner.get('pid')} on {owner.get('host')}{when})"
