"""Pruning: the kept vectors of runs that are neither live, previous, nor among the newest are
dropped with their commit records, refreshes and snapshots."""

from __future__ import annotations

from twotower_pipeline.store import artefacts
from twotower_pipeline.store.embeddings.journal import RUN_MARK, PublishJournal
from twotower_pipeline.store.embeddings.run_vectors import snapshot_name
from twotower_pipeline.store.slices import COMMITS, SlicedCollection


class Pruning(PublishJournal):
    """Dropping old runs' vectors."""

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
                self.store.collection(COMMITS).delete_one({"_id": f"{self.database_name}.{name}"})
                artefacts.delete_artefact(self.store, snapshot_name(f"{self.database_name}.{name}"))
            for spec in self.towers:
                self._refreshed(spec, run_id).drop()
