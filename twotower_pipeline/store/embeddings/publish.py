"""Publishing, rolling back and recovering: the live pair made a copy of one run's kept vectors
under the journal's lease (stage with a unique index, rename over the live collections, verify,
record), and a publish a crash cut short rolled forward or back."""

from __future__ import annotations

import uuid

from pymongo import ASCENDING, ReplaceOne

from twotower_pipeline.store import leases
from twotower_pipeline.store.embeddings.journal import STAGING_MARK, PublishError, Tower, check_run_id
from twotower_pipeline.store.embeddings.prune import Pruning
from twotower_pipeline.store.embeddings.refresh import Refreshing
from twotower_pipeline.store.embeddings.verify import LiveReport
from twotower_pipeline.store.faults import fault_point
from twotower_pipeline.store.frames import INSERT_BATCH, batches
from twotower_pipeline.store.slices import WRITE_ID_FIELD, SlicedCollection


class Publishing(Refreshing, Pruning):
    """Making a run live, putting the previous one back, finishing what a crash interrupted."""

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
