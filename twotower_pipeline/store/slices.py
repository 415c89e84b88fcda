"""Slices of a collection that commit atomically, on a MongoDB with no multi-document transactions.

After Delta Lake's log: a write inserts its rows where readers do not look (tagged with a write id
that is not committed yet, and noted as pending), then makes them visible by one single-document
update of the collection's commit record, then deletes the rows it replaced. Readers fetch the rows
of committed write ids only, so a crash at any moment leaves the old slice or the new one, never
both or a part; what a crashed write left behind is still noted as pending and is deleted by the
next write of those slices.

The write id is not indexed: on the embedded server an index entry costs about what the row
itself costs to insert (measured: an insert into a collection with one secondary index runs at
0.45 to 0.77 of a bare one), and the reads these collections serve are windows of most of their
days (a training window, every committed day of a campaign). So a read, a count or a cleanup of
any number of slices is one pass over the collection with all their write ids at once (`$in`),
never a pass per slice.

Writers of a slice are serialised by a lease in the same commit record (`store.leases`), and the
commit is conditional on still holding it, so a writer that lost its lease cannot commit over the
next one; the second of two writers waits for the first and then replaces its slices whole.

Commit record, one per collection (`ecosystem_meta.slice_commits`):
    {_id: "<database>.<collection>", version: n,
     slices: {<slice key>: {write_id, rows, committed_at, owner}},
     pending: {<write>: {write_ids, keys, since, owner}},
     leases: {<slice key>: {id, owner, since, expires}}}
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from urllib.parse import quote, unquote

import numpy as np
import pandas as pd
from pymongo.collection import Collection

from twotower_pipeline.store import leases, processes
from twotower_pipeline.store.faults import fault_point
from twotower_pipeline.store.frames import (INSERT_BATCH, batches, chunked, documents_to_frame, ensure_indexes,
                                            frame_to_documents)

COMMITS = "ecosystem_meta.slice_commits"
WRITE_ID_FIELD = "_write_id"
#: The one slice of an unpartitioned collection.
ALL = "__all__"
READ_ATTEMPTS = 5
LEASE_SECONDS = leases.LEASE_SECONDS
WAIT_SECONDS = leases.WAIT_SECONDS


def field_name(key: str) -> str:
    """A slice key as a document field name (no `.`, no leading `$`)."""
    return quote(key, safe="-_~:").replace(".", "%2E")


class SlicedCollection:
    """A collection written slice by slice through commits, and read through them."""

    def __init__(self, store, location: str, *, lease_seconds: float = LEASE_SECONDS,
                 wait_seconds: float = WAIT_SECONDS):
        self.location = location
        self.collection: Collection = store.collection(location)
        self.commits: Collection = leases.journaled(store.collection(COMMITS))
        self.lease_seconds = lease_seconds
        self.wait_seconds = wait_seconds

    # -- reading -------------------------------------------------------------------------------

    def record(self) -> dict | None:
        return self.commits.find_one({"_id": self.location})

    def committed_slices(self) -> dict[str, dict]:
        """{slice key: {write_id, rows, committed_at, owner}} of the committed slices."""
        record = self.record() or {}
        return {unquote(k): v for k, v in (record.get("slices") or {}).items()}

    def committed_write_ids(self, keys: Iterable[str] | None = None) -> dict[str, str] | None:
        """{slice key: committed write id}; None when the collection was never written by commits."""
        record = self.record()
        if record is None:
            return None
        slices = {unquote(k): v["write_id"] for k, v in (record.get("slices") or {}).items()}
        if keys is not None:
            slices = {k: slices[k] for k in keys if k in slices}
        return slices

    def read(self, keys: Sequence[str] | None = None, query: dict | None = None,
             columns: Sequence[str] | None = None) -> pd.DataFrame:
        """The committed rows of the slices `keys` (default: all) that match `query`.

        A commit landing while the rows are read could delete rows this read still expected; the
        commit record is read before and after, and the read is repeated if those slices changed.
        A collection that no commit ever wrote (another tool's) is read as it is.
        """
        for _attempt in range(READ_ATTEMPTS):
            every = self.committed_write_ids()
            if every is None:
                projection = {c: 1 for c in columns} if columns else None
                return documents_to_frame(list(self.collection.find(query or {}, projection)), columns)
            chosen = every if keys is None else {k: every[k] for k in keys if k in every}
            documents = self._rows_of(set(chosen.values()), set(every.values()), query, columns)
            if self.committed_write_ids(keys) == chosen:
                return documents_to_frame(documents, columns)
        raise RuntimeError(f"{self.location}: slices kept being rewritten while read ({READ_ATTEMPTS} attempts)")

    def _rows_of(self, chosen: set[str], committed: set[str], query: dict | None,
                 columns: Sequence[str] | None) -> list[dict]:
        """The rows of the write ids `chosen` in one pass. When they are every committed write (a
        read of the whole collection) the server matches `query` alone and the few rows of other
        writes (pending, or left by a crash) are dropped here: the embedded server matches an `$in`
        at about half the speed of the scan itself."""
        if not chosen:
            return []
        projection = {**{c: 1 for c in columns}, WRITE_ID_FIELD: 1} if columns else None
        if chosen != committed:
            return list(self.collection.find(of_writes(chosen, query), projection))
        return [d for d in self.collection.find(query or {}, projection) if d.get(WRITE_ID_FIELD) in chosen]

    def read_batches(self, query: dict | None = None, columns: Sequence[str] | None = None,
                     batch_size: int = INSERT_BATCH, keys: Sequence[str] | None = None) -> Iterator[pd.DataFrame]:
        """The committed rows (of the slices `keys`; default: all) as DataFrames of up to
        `batch_size` rows, streamed, where `read` would hold them all. Nothing re-checks the commits
        while it streams: for collections committed once (a run's own vectors), or with the caller
        comparing `committed_write_ids` before and after."""
        projection = {c: 1 for c in columns} if columns else None
        write_ids = self.committed_write_ids(keys)
        if write_ids == {}:
            return
        selection = (query or {}) if write_ids is None else of_writes(write_ids.values(), query)
        for chunk in batches(self.collection.find(selection, projection, batch_size=batch_size), batch_size):
            yield documents_to_frame(chunk, columns)

    def count(self, keys: Sequence[str] | None = None) -> int:
        """Committed rows of the slices `keys` (default: all), counted on the server."""
        write_ids = self.committed_write_ids(keys)
        if write_ids is None:
            return self.collection.count_documents({})
        return self.collection.count_documents(of_writes(write_ids.values())) if write_ids else 0

    # -- writing -------------------------------------------------------------------------------

    def write(
        self,
        frame: pd.DataFrame,
        keys: Sequence[str] = (ALL,),
        row_slices: np.ndarray | None = None,
        indexes: Iterable[Sequence[str]] = (),
        owner: dict | None = None,
    ) -> dict[str, int]:
        """Make each slice of `keys` exactly its rows of `frame`, all committed by one update.

        `row_slices[i]` is the index in `keys` of row i's slice (default: every row in the first).
        Returns the rows written per slice key.
        """
        keys = list(keys)
        if not isinstance(frame, pd.DataFrame):
            frame = list(frame)  # documents as they are (e.g. nested ones a frame would not hold well)
        if not keys or len(set(keys)) != len(keys):
            raise ValueError(f"{self.location}: a write needs distinct slice keys, got {keys}")
        row_slices = np.zeros(len(frame), dtype=np.int64) if row_slices is None else np.asarray(row_slices)
        rows = np.bincount(row_slices, minlength=len(keys)).tolist() if len(frame) else [0] * len(keys)
        ensure_indexes(self.collection, indexes)
        # The record exists before the first row is written, so a crash during the very first
        # write leaves rows that readers know to skip.
        leases.ensure_record(self.commits, self.location, {"version": 0, "slices": {}, "pending": {}})
        lease = leases.Lease(self.commits, self.location, [field_name(k) for k in keys], owner=owner,
                             what=f"{self.location} slices {_span(keys)}", lease_seconds=self.lease_seconds,
                             wait_seconds=self.wait_seconds)
        write_ids = [f"{lease.id}.{i}" for i in range(len(keys))]
        committed = False
        with lease:
            try:
                intent = {"write_ids": write_ids, "keys": keys, "since": leases.now(), "owner": lease.owner}
                lease.update({"$set": {f"pending.{lease.id}": intent}})
                documents = frame_to_documents(frame) if isinstance(frame, pd.DataFrame) else frame
                tags = np.asarray(write_ids, dtype=object)[row_slices] if len(frame) else []
                for document, tag in zip(documents, tags):
                    document[WRITE_ID_FIELD] = tag
                for batch in chunked(documents, INSERT_BATCH):
                    lease.check()
                    self.collection.insert_many(batch, ordered=False)
                    fault_point("slice.inserted_batch")
                fault_point("slice.before_commit")
                record = self.record() or {}
                replaced = [v["write_id"] for k, v in (record.get("slices") or {}).items() if unquote(k) in keys]
                abandoned = _abandoned(record.get("pending") or {}, keys, lease.id)
                garbage = replaced + [w for entry in abandoned.values() for w in entry["write_ids"]]
                now = leases.now()
                # One update: the new write ids are committed, and this write's pending note now
                # lists what it replaced, so a crash before the cleanup leaves it to the next write.
                lease.update({
                    "$set": {
                        **{f"slices.{field_name(k)}": {"write_id": w, "rows": n, "committed_at": now,
                                                       "owner": lease.owner}
                           for k, w, n in zip(keys, write_ids, rows)},
                        f"pending.{lease.id}.write_ids": garbage,
                    },
                    "$inc": {"version": 1},
                })
                committed = True
                fault_point("slice.after_commit")
                # Still under the lease: nobody else has live rows in these slices.
                if garbage:
                    self.collection.delete_many(of_writes(garbage))
                lease.update({"$unset": {f"pending.{p}": "" for p in [lease.id, *abandoned]}})
                fault_point("slice.after_cleanup")
            except BaseException:
                if not committed:  # what this write added is invisible; remove it if the server lets us
                    with contextlib.suppress(Exception):
                        self.collection.delete_many({WRITE_ID_FIELD: {"$in": write_ids}})
                        lease.update({"$unset": {f"pending.{lease.id}": ""}})
                raise
        return dict(zip(keys, rows))


def of_writes(write_ids: Iterable[str], query: dict | None = None) -> dict:
    """The filter of the rows of `write_ids` (one pass over the collection) within `query`; no
    write ids match no row."""
    distinct = sorted(set(write_ids))
    return {**(query or {}), WRITE_ID_FIELD: distinct[0] if len(distinct) == 1 else {"$in": distinct}}


def _abandoned(pending: dict, keys: Sequence[str], mine: str) -> dict:
    """Pending writes whose rows can go: of slices this writer holds (so their writer lost them),
    or of a process that died on this host."""
    held = set(keys)
    return {
        p: entry for p, entry in pending.items()
        if p != mine and (held & set(entry.get("keys", ())) or processes.is_alive(entry.get("owner") or {}) is False)
    }


def _span(keys: Sequence[str]) -> str:
    return keys[0] if len(keys) == 1 else f"{keys[0]}..{keys[-1]} ({len(keys)} slices)"
