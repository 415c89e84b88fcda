"""The runtime's embedding collections (SPEC §5), published as one unit through a journal.

Each run's vectors are kept in collections of their own, `<live name>__run_<run_id>`, written
through a slice commit (complete or invisible) and never changed afterwards. Publishing a run makes
the two live collections copies of that run's pair:

1. under the publish lease (one publisher at a time), finish or undo a publish a crash left half
   done (below);
2. check that both of the run's collections are committed and hold the counts they were written with;
3. write down the intent in the journal (`ecosystem_meta.two_tower_publish`: state `publishing`,
   the target run and the run that was live);
4. copy each into a staging collection with a unique index on its key, then rename both stagings
   over the live collections (`renameCollection(dropTarget=True)`);
5. verify the live pair: counts, one run id in both, unit vectors of one width, a unique key;
6. write down the outcome: state `live`, the new live run and the one before it.

If the verification fails, the last verified pair is put back (from its own run collections) and
the publish fails. If anything dies between 3 and 6, the journal still says `publishing`: the next
publish, rollback or `twotower embeddings-status --recover` rolls it forward to the target (its
sources are intact, whatever the crash did to the stagings or the live collections) or, if that
cannot be verified, back to the run that was live. On MongoDB a rename within a database is
atomic and a metadata operation; on the embedded server it copies documents and a crash can leave
the target empty or doubled, which the journal repairs the same way. Between the two renames a
reader of both collections may see the new users with the old offers (milliseconds on MongoDB,
the copy time on the embedded server); every document carries its `run_id` so a ranking can
refuse to mix them, and the journal says which run is live.
"""

from __future__ import annotations

import dataclasses
import io
import re
import uuid

import numpy as np
import pandas as pd
from pymongo import ASCENDING, ReplaceOne

from twotower_pipeline.store import artefacts, leases, names
from twotower_pipeline.store.client import MongoStore
from twotower_pipeline.store.faults import fault_point
from twotower_pipeline.store.frames import INSERT_BATCH, batches
from twotower_pipeline.store.slices import ALL, COMMITS, WRITE_ID_FIELD, SlicedCollection

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

    def __init__(self, message: str, report: "LiveReport | None" = None):
        super().__init__(message)
        self.report = report


def customer_buckets(customer_ids) -> np.ndarray:
    """A stable bucket in 0..BUCKETS-1 per customer id: batch-scoring shards are bucket ranges."""
    hashes = pd.util.hash_pandas_object(pd.Series(customer_ids, dtype=str), index=False).to_numpy()
    return (hashes % np.uint64(BUCKETS)).astype(np.int64)


def snapshot_name(location: str) -> str:
    return f"vectors/{location}"


@artefacts.register_artefact
@dataclasses.dataclass
class VectorSnapshot:
    """A run's vectors of one tower as one file: keys [n] and float32 vectors [n, d] (numpy, no pickle)."""

    artefact_kind = "vector_snapshot"

    keys: list[str]
    vectors: np.ndarray
    write_id: str  # the committed write of the run's collection it copies

    def to_artefact(self) -> tuple[dict, bytes]:
        buffer = io.BytesIO()
        np.savez(buffer, keys=np.asarray(self.keys, dtype=str), vectors=np.asarray(self.vectors, dtype=np.float32))
        return {"write_id": self.write_id, "rows": len(self.keys)}, buffer.getvalue()

    @classmethod
    def from_artefact(cls, config: dict, state: bytes) -> "VectorSnapshot":
        with np.load(io.BytesIO(state), allow_pickle=False) as arrays:
            return cls(arrays["keys"].tolist(), arrays["vectors"], config["write_id"])


def check_run_id(run_id: str) -> str:
    if not isinstance(run_id, str) or not RUN_ID_PATTERN.match(run_id):
        raise ValueError(f"run_id {run_id!r} must be 1-80 letters, digits, '_', '-' or '.' (not '..', not "
                         "ending in '.')")
    return run_id


@dataclasses.dataclass
class LiveReport:
    """What a verification of the collections found, per tower."""

    run_id: str
    embedding_dim: int
    documents: dict[str, int]
    expected: dict[str, int]
    other_runs: dict[str, int]  # documents whose run_id is not `run_id`
    unique_key: dict[str, bool]
    wrong_length: dict[str, int]
    not_finite: dict[str, int]
    not_unit: dict[str, int]

    def problems(self) -> list[str]:
        found = []
        for name in self.documents:
            label = f"{name} vectors"
            if self.documents[name] != self.expected[name]:
                found.append(f"{label}: {self.documents[name]} documents, expected {self.expected[name]}")
            if self.other_runs[name]:
                found.append(f"{label}: {self.other_runs[name]} documents of another run than {self.run_id}")
            if not self.unique_key[name]:
                found.append(f"{label}: no unique index on the key")
            for what, counts in (("not of length " + str(self.embedding_dim), self.wrong_length),
                                 ("not finite", self.not_finite), ("not unit length", self.not_unit)):
                if counts[name]:
                    found.append(f"{label}: {counts[name]} {what}")
        return found


def _vector_problems(keys, matrix, embedding_dim: int) -> list[str]:
    """What keeps vectors out of a live collection: counts, width, finiteness, unit length, duplicates."""
    matrix = np.asarray(matrix, dtype=np.float64)
    if len(keys) != len(matrix):
        return [f"{len(keys)} keys but {len(matrix)} vectors"]
    if not len(keys):
        return []
    if matrix.ndim != 2 or matrix.shape[1] != embedding_dim:
        return [f"vectors of shape {matrix.shape}, the live run's are {embedding_dim} wide"]
    found = []
    finite = np.isfinite(matrix).all(axis=1)
    if not finite.all():
        found.append(f"{int((~finite).sum())} vectors not finite")
    if (np.abs(np.linalg.norm(matrix[finite], axis=1) - 1.0) > NORM_TOLERANCE).any():
        found.append("vectors not of unit length")
    if len(set(map(str, keys))) != len(keys):
        found.append("duplicate keys")
    return found


class Publisher:
    """Publishes runs' vector pairs to the live collections of one database, through the journal."""

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

    # -- a run's own vectors ------------------------------------------------------------------

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

    def write_run(self, tower_name: str, run_id: str, keys: list[str], vectors: np.ndarray,
                  owner: dict | None = None) -> int:
        """Keep a run's vectors for one tower (committed whole, or not at all)."""
        spec = self.tower(tower_name)
        if len(keys) != len(vectors):
            raise ValueError(f"{len(keys)} keys but {len(vectors)} vectors for the {tower_name} tower")
        if not keys:
            raise ValueError(f"no {tower_name} vectors to keep for run {run_id}")
        frame = pd.DataFrame({"run_id": run_id, spec.key_field: keys,
                              "embedding": np.asarray(vectors, dtype=np.float64).tolist()})
        sliced = SlicedCollection(self.store, self.run_location(tower_name, run_id),
                                  lease_seconds=self.lease_seconds, wait_seconds=self.wait_seconds)
        written = sliced.write(frame, owner=owner)[ALL]
        # a binary copy, tied to that very write, serves reads of the run's vectors at file speed
        # (offline and batch scoring; lookups of the live run use the live collection's key index)
        write_id = sliced.committed_slices()[ALL]["write_id"]
        artefacts.replace_artefact(self.store, snapshot_name(sliced.location), VectorSnapshot(
            list(map(str, keys)), np.asarray(vectors, dtype=np.float32), write_id))
        return written

    def run_snapshot(self, tower_name: str, run_id: str) -> "VectorSnapshot | None":
        """The run's vectors as one binary copy, if it is there and matches the committed collection."""
        location = self.run_location(tower_name, run_id)
        committed = SlicedCollection(self.store, location).committed_slices().get(ALL)
        try:
            snapshot = artefacts.load_artefact(self.store, snapshot_name(location))
        except LookupError:
            return None
        return snapshot if committed and snapshot.write_id == committed["write_id"] else None

    def refreshed_vectors(self, tower_name: str, run_id: str) -> tuple[list[str], np.ndarray]:
        """(keys, vectors [n, d]) a refresh of the run added or changed since it was published, read in
        batches; empty when nothing was refreshed."""
        spec = self.tower(tower_name)
        keys, vectors = [], []
        projection = {"_id": 0, spec.key_field: 1, spec.vector_field: 1}
        for document in self._refreshed(spec, run_id).find({}, projection, batch_size=INSERT_BATCH):
            keys.append(str(document[spec.key_field]))
            vectors.append(document[spec.vector_field])
        return keys, np.asarray(vectors, dtype=np.float32).reshape(len(keys), len(vectors[0]) if vectors else 0)

    def run_counts(self, run_id: str) -> dict[str, int]:
        """{tower: documents} of a run whose collections are committed and whole (every slice the
        tower needs); else PublishError."""
        counts = {}
        for spec in self.towers:
            sliced = SlicedCollection(self.store, self.run_location(spec.name, run_id))
            committed = sliced.committed_slices()
            missing = [key for key in spec.slices if key not in committed]
            if missing:
                what = "never committed" if len(missing) == len(spec.slices) else f"lacks slices {missing}"
                raise PublishError(f"run {run_id} has no complete {spec.name} documents "
                                   f"({sliced.location} {what}); materialise them first")
            stored = 0
            for key in spec.slices:
                found = sliced.collection.count_documents({WRITE_ID_FIELD: committed[key]["write_id"]})
                if found != committed[key]["rows"]:
                    raise PublishError(f"{sliced.location} slice {key} holds {found} committed documents, "
                                       f"{committed[key]['rows']} were written")
                stored += found
            # keys a refresh added (changed ones replace a document of the run's own)
            counts[spec.name] = stored + self._refreshed(spec, run_id).count_documents({"new": True})
        return counts

    # -- the live pair ------------------------------------------------------------------------

    def status(self) -> dict:
        return self.journal.find_one({"_id": self.journal_key}, {"leases": 0}) or {
            "_id": self.journal_key, "state": "empty", "live_run_id": None, "previous_run_id": None}

    def live_run_id(self) -> str | None:
        return self.status().get("live_run_id")

    def publish(self, run_id: str, owner: dict | None = None) -> dict:
        """Make `run_id`'s pair live. Returns {run_id, previous_run_id, users, items, recovered}."""
        check_run_id(run_id)
        with self._lease(owner) as lease:
            recovered = self._recover(lease)
            return {**self._go_live(lease, run_id), "recovered": recovered}

    def rollback(self, owner: dict | None = None) -> dict:
        """Put the run that was live before the current one back, both towers together."""
        with self._lease(owner) as lease:
            recovered = self._recover(lease)
            previous = self.status().get("previous_run_id")
            if not previous:
                raise PublishError(f"no earlier run to roll back to in {self.database_name}")
            return {**self._go_live(lease, previous), "recovered": recovered}

    def recover(self, owner: dict | None = None) -> str | None:
        """Finish or undo a publish that a crash interrupted; what was done, or None."""
        with self._lease(owner) as lease:
            return self._recover(lease)

    def refresh(self, run_id: str, vectors: dict[str, tuple[list[str], np.ndarray]],
                owner: dict | None = None) -> dict:
        """Upsert new or changed keys' vectors {tower: (keys, vectors)}, computed with the live
        run's own towers, into the live collections, and keep them with that run (a later publish
        or rollback of it restores them). Refused unless `run_id` is the live run: two runs are
        never mixed. The vectors are checked before anything is written; the intent is journaled
        (state `refreshing`), so a refresh cut short is finished by the next publisher call."""
        check_run_id(run_id)
        with self._lease(owner) as lease:
            recovered = self._recover(lease)
            live = self.status().get("live_run_id")
            if live != run_id:
                raise PublishError(f"run {run_id} is not the live run ({live or 'nothing'} is): a refresh only "
                                   "adds to the live run's vectors, never mixes two runs")
            dim = self._live_width()
            for name, (keys, matrix) in vectors.items():
                problems = _vector_problems(keys, matrix, dim)
                if problems:
                    raise ValueError(f"not refreshing the {name} vectors of run {run_id}: {'; '.join(problems)}")
            lease.update({"$set": {"state": "refreshing", "target_run_id": run_id, "from_run_id": run_id,
                                   "started_at": leases.now()}})
            refreshed = {}
            for name, (keys, matrix) in vectors.items():
                spec = self.tower(name)
                refreshed[name] = self._keep_refreshed(spec, run_id, list(map(str, keys)), matrix)
                fault_point(f"refresh.kept.{name}")
                self._apply_refreshed(spec, run_id, list(map(str, keys)))
            counts = self.run_counts(run_id)
            # the refreshed vectors were checked before they were written, and every document
            # written carries the live run's id: counts and the unique index are what can go wrong
            report = self._verify(run_id, counts, dim, read_vectors=False)
            if report.problems():  # the journal still says `refreshing`: the next call re-applies it
                raise PublishError(f"the refreshed live collections of run {run_id} failed verification: "
                                   f"{'; '.join(report.problems())}", report)
            previous = self.status().get("previous_run_id")
            self._record_live(lease, run_id, previous, counts,
                              "refreshed " + ", ".join(f"{n} {t}" for t, n in refreshed.items()))
            return {"run_id": run_id, "refreshed": refreshed, "counts": counts, "report": report,
                    "recovered": recovered}

    def _keep_refreshed(self, spec: Tower, run_id: str, keys: list[str], matrix: np.ndarray) -> dict:
        """Upsert into the run's refresh collection; `new`: the key is not among the run's own
        vectors (so it adds one to the live count). {"vectors", "new"} written."""
        refreshed = self._refreshed(spec, run_id)
        refreshed.create_index([(spec.key_field, ASCENDING)], unique=True)
        live = self.database[spec.collection]
        added = 0
        for start in range(0, len(keys), INSERT_BATCH):
            batch = keys[start:start + INSERT_BATCH]
            earlier = {d[spec.key_field]: d["new"] for d in refreshed.find(
                {spec.key_field: {"$in": batch}}, {spec.key_field: 1, "new": 1, "_id": 0})}
            # the live collection is the run's vectors (own + refreshed): a key it lacks is new
            found = live.find({spec.key_field: {"$in": batch}}, {spec.key_field: 1, "_id": 0})
            present = {d[spec.key_field] for d in found}
            now = leases.now()
            operations = []
            for i, key in enumerate(batch):
                new = earlier.get(key, key not in present)
                added += bool(new and key not in earlier)
                operations.append(ReplaceOne({spec.key_field: key}, {
                    "run_id": run_id, spec.key_field: key, spec.vector_field: [float(v) for v in matrix[start + i]],
                    "new": bool(new), "refreshed_at": now}, upsert=True))
            refreshed.bulk_write(operations, ordered=False)
        return {"vectors": len(keys), "new": added}

    def _apply_refreshed(self, spec: Tower, run_id: str, keys: list[str] | None = None) -> None:
        """Upsert the run's refreshed vectors (those of `keys`, or all) into the live collection."""
        refreshed, live = self._refreshed(spec, run_id), self.database[spec.collection]
        queries = ([{}] if keys is None else
                   [{spec.key_field: {"$in": keys[i:i + INSERT_BATCH]}} for i in range(0, len(keys), INSERT_BATCH)])
        for query in queries:
            documents = refreshed.find(query, {"_id": 0, "new": 0, "refreshed_at": 0}, batch_size=INSERT_BATCH)
            for batch in batches(documents, INSERT_BATCH):
                live.bulk_write([ReplaceOne({spec.key_field: d[spec.key_field]}, d, upsert=True) for d in batch],
                                ordered=False)
                fault_point("refresh.applied_batch")

    def verify(self, run_id: str | None = None, embedding_dim: int | None = None,
               read_vectors: bool = True) -> LiveReport:
        """Check the live pair against a run (default: the journal's live run); `read_vectors`
        False: counts and the key index only."""
        run_id = run_id or self.live_run_id()
        if not run_id:
            raise PublishError(f"nothing has been published to {self.database_name}")
        expected = self.run_counts(run_id)
        return self._verify(run_id, expected, embedding_dim, read_vectors=read_vectors)

    # -- steps --------------------------------------------------------------------------------

    def _lease(self, owner: dict | None) -> leases.Lease:
        leases.ensure_record(self.journal, self.journal_key,
                             {"state": "empty", "live_run_id": None, "previous_run_id": None, "history": []})
        return leases.Lease(self.journal, self.journal_key, ["publish"], owner=owner,
                            what=f"publishing {', '.join(t.collection for t in self.towers)} in {self.database_name}",
                            lease_seconds=self.lease_seconds, wait_seconds=self.wait_seconds)

    def _go_live(self, lease: leases.Lease, run_id: str) -> dict:
        journal = self.status()
        was_live = journal.get("live_run_id")
        counts = self.run_counts(run_id)  # both sources committed and whole, before anything moves
        lease.update({"$set": {"state": "publishing", "target_run_id": run_id, "from_run_id": was_live,
                               "started_at": leases.now()}})
        fault_point("publish.journal_written")
        report = self._swap_all(run_id, counts)
        if report.problems():
            restored = self._restore(lease, was_live) if was_live and was_live != run_id else None
            raise PublishError(
                f"run {run_id} failed verification after the swap: {'; '.join(report.problems())}; "
                + (f"run {restored} is live again" if restored else "no earlier verified run to put back"),
                report,
            )
        previous = journal.get("previous_run_id") if was_live == run_id else was_live
        self._record_live(lease, run_id, previous, counts, "published")
        self._prune(keep={run_id, previous})
        return {"run_id": run_id, "previous_run_id": previous, "counts": counts, "report": report,
                "users": counts.get("user"), "items": counts.get("item")}

    def _recover(self, lease: leases.Lease) -> str | None:
        journal = self.status()
        if journal.get("state") == "refreshing":  # the live run stays; its kept refresh is applied again
            run_id = journal.get("target_run_id")
            for spec in self.towers:
                self._apply_refreshed(spec, run_id)
            counts = self.run_counts(run_id)
            report = self._verify(run_id, counts)
            if report.problems():  # rebuilt whole from the run's own and refreshed vectors instead
                report = self._swap_all(run_id, counts)
            if report.problems():
                raise PublishError(f"an interrupted refresh of run {run_id} could not be finished: "
                                   f"{'; '.join(report.problems())}", report)
            self._record_live(lease, run_id, journal.get("previous_run_id"), counts, "recovered: refresh finished")
            return f"an interrupted refresh of run {run_id} was finished"
        if journal.get("state") != "publishing":
            return None
        target, was_live = journal.get("target_run_id"), journal.get("from_run_id")
        for run_id, verb in ((target, "rolled forward to"), (was_live, "rolled back to")):
            if not run_id:
                continue
            try:
                counts = self.run_counts(run_id)
            except PublishError:
                continue
            report = self._swap_all(run_id, counts)
            if not report.problems():
                previous = was_live if run_id == target else journal.get("previous_run_id")
                self._record_live(lease, run_id, previous, counts, f"recovered: {verb}")
                return f"an interrupted publish of {target} was {verb} {run_id}"
        raise PublishError(f"an interrupted publish of {target} could not be finished or undone: "
                           f"neither {target} nor {was_live} has complete vectors to restore")

    def _restore(self, lease: leases.Lease, run_id: str) -> str:
        counts = self.run_counts(run_id)
        report = self._swap_all(run_id, counts)
        if report.problems():
            raise PublishError(f"putting back run {run_id} failed too: {'; '.join(report.problems())}", report)
        journal = self.status()
        self._record_live(lease, run_id, journal.get("previous_run_id"), counts, "restored after a failed publish")
        return run_id

    def _record_live(self, lease: leases.Lease, run_id: str, previous: str | None, counts: dict, event: str):
        now = leases.now()
        lease.update({
            "$set": {"state": "live", "live_run_id": run_id, "previous_run_id": previous, "published_at": now,
                     "counts": counts, "target_run_id": None, "from_run_id": None},
            "$push": {"history": {"$each": [{"at": now, "event": event, "run_id": run_id}], "$slice": -HISTORY}},
        })

    def _swap_all(self, run_id: str, counts: dict[str, int]) -> LiveReport:
        """Stage every tower from the run's own collections, rename them over the live ones, verify."""
        stagings = {spec.name: self._stage(spec, run_id, counts[spec.name]) for spec in self.towers}
        for spec in self.towers:
            self._clear_leftovers(spec.collection)
            fault_point(f"publish.before_rename.{spec.name}")
            stagings[spec.name].rename(spec.collection, dropTarget=True)
            fault_point(f"publish.after_rename.{spec.name}")
        return self._verify(run_id, counts)

    def _clear_leftovers(self, name: str) -> None:
        """A rename the embedded server was killed in can leave documents stored under a name that
        no longer exists; they would reappear in the next collection of that name. Creating and
        dropping it first deletes them (on MongoDB there are none, and this costs nothing)."""
        if name not in self.database.list_collection_names():
            self.database.create_collection(name)
            self.database.drop_collection(name)

    def _stage(self, spec: Tower, run_id: str, expected: int):
        for name in self.database.list_collection_names():
            if name.startswith(spec.collection + STAGING_MARK):
                self.database.drop_collection(name)  # left by a killed publish
        staging = self.database[f"{spec.collection}{STAGING_MARK}{uuid.uuid4().hex[:12]}"]
        source = SlicedCollection(self.store, self.run_location(spec.name, run_id))
        committed = source.committed_write_ids()
        # every slice in one query: one pass over the run's collection, indexed on the write id or not
        selection = {WRITE_ID_FIELD: {"$in": [committed[key] for key in spec.slices]}}
        documents = source.collection.find(selection, {WRITE_ID_FIELD: 0}, batch_size=INSERT_BATCH)
        for batch in batches(documents, INSERT_BATCH):
            staging.insert_many(batch, ordered=False)
            fault_point("publish.staged_batch")
        staging.create_index([(spec.key_field, ASCENDING)], unique=True)
        # the run's refreshed vectors replace or add to its own (the unique index makes it per key)
        refreshed = self._refreshed(spec, run_id).find({}, {"_id": 0, "new": 0, "refreshed_at": 0},
                                                       batch_size=INSERT_BATCH)
        for batch in batches(refreshed, INSERT_BATCH):
            staging.bulk_write([ReplaceOne({spec.key_field: d[spec.key_field]}, d, upsert=True) for d in batch],
                               ordered=False)
        staged = staging.count_documents({})
        if staged != expected:
            raise PublishError(f"staging {staging.name} holds {staged} vectors of run {run_id}, expected {expected}")
        return staging

    def _live_width(self) -> int:
        """The width of the live vectors (of the first tower that has one)."""
        for spec in self.towers:
            if spec.vector_field:
                document = self.database[spec.collection].find_one({}, {spec.vector_field: 1, "_id": 0})
                if document:
                    return len(document.get(spec.vector_field) or [])
        return 0

    def _verify(self, run_id: str, expected: dict[str, int], embedding_dim: int | None = None,
                read_vectors: bool = True) -> LiveReport:
        """Read the live collections back: counts and run ids on the server, vectors in batches
        (`read_vectors` False: counts and the key index only)."""
        report = LiveReport(run_id, embedding_dim or 0, {}, dict(expected), {}, {}, {}, {}, {})
        for spec in self.towers:
            live = self.database[spec.collection]
            report.documents[spec.name] = live.count_documents({})
            report.other_runs[spec.name] = live.count_documents({"run_id": {"$ne": run_id}}) if read_vectors else 0
            report.unique_key[spec.name] = any(
                index.get("unique") and [k for k, _ in index["key"]] == [spec.key_field]
                for index in live.index_information().values()
            )
            wrong = not_finite = not_unit = 0
            vectors_of = live.find({}, {spec.vector_field: 1, "_id": 0}, batch_size=INSERT_BATCH) \
                if spec.vector_field and read_vectors else []
            for chunk in batches(vectors_of, INSERT_BATCH):
                vectors = [d.get(spec.vector_field) or [] for d in chunk]
                if not report.embedding_dim and vectors:
                    report.embedding_dim = len(vectors[0])
                sized = [v for v in vectors if len(v) == report.embedding_dim]
                wrong += len(vectors) - len(sized)
                matrix = np.asarray(sized, dtype=np.float64).reshape(-1, report.embedding_dim)
                finite = np.isfinite(matrix).all(axis=1)
                not_finite += int((~finite).sum())
                not_unit += int((np.abs(np.linalg.norm(matrix[finite], axis=1) - 1.0) > NORM_TOLERANCE).sum())
            report.wrong_length[spec.name] = wrong
            report.not_finite[spec.name] = not_finite
            report.not_unit[spec.name] = not_unit
        return report

    def _prune(self, keep: set) -> None:
        """Drop the run collections of runs that are neither live, previous, nor among the newest."""
        commits = {}
        for spec in self.towers:
            prefix = spec.collection + RUN_MARK
            for name in self.database.list_collection_names():
                if name.startswith(prefix):
                    committed = SlicedCollection(self.store, f"{self.database_name}.{name}").committed_slices()
                    run_id = name[len(prefix):]
                    when = max((c["committed_at"] for c in committed.values()), default=None)
                    commits.setdefault(run_id, []).append((name, when))
        finished = sorted((r for r, found in commits.items() if all(w for _, w in found)),
                          key=lambda r: max(w for _, w in commits[r]), reverse=True)
        for run_id in finished[self.keep_runs:]:
            if run_id in keep:
                continue
            for name, _ in commits[run_id]:
                self.database.drop_collection(name)
            for spec in self.towers:
                self._refreshed(spec, run_id).drop()
                self.store.collection(COMMITS).delete_one({"_id": f"{self.database_name}.{name}"})
                artefacts.delete_artefact(self.store, snapshot_name(f"{self.database_name}.{name}"))
