"""Refreshing the live run between retrains: new and changed keys' vectors, computed with its own
towers and checked, kept with the run and upserted into the live collections; never two runs mixed."""

from __future__ import annotations

import numpy as np
from pymongo import ASCENDING, ReplaceOne

from twotower_pipeline.store import leases
from twotower_pipeline.store.embeddings.journal import PublishError, Tower, check_run_id
from twotower_pipeline.store.embeddings.run_vectors import RunVectors
from twotower_pipeline.store.embeddings.verify import Verification, vector_problems
from twotower_pipeline.store.faults import fault_point
from twotower_pipeline.store.frames import INSERT_BATCH, batches


class Refreshing(RunVectors, Verification):
    """Adding to the live run's vectors."""

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
                problems = vector_problems(keys, matrix, dim)
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
