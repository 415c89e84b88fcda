"""Keeping a run's own vectors: `<live name>__run_<run_id>`, written through a slice commit
(complete or invisible) after the one vector check, never changed afterwards, with a binary
snapshot of the same write; read back whole (the snapshot) or as a refresh added them."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pandas as pd

from twotower_pipeline.store import artefacts
from twotower_pipeline.store.embeddings.journal import BUCKETS, PublishError, PublishJournal
from twotower_pipeline.store.embeddings.verify import vector_problems
from twotower_pipeline.store.frames import INSERT_BATCH
from twotower_pipeline.store.slices import ALL, WRITE_ID_FIELD, SlicedCollection


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


class RunVectors(PublishJournal):
    """A run's own vectors of each tower."""

    def write_run(self, tower_name: str, run_id: str, keys: list[str], vectors: np.ndarray,
                  owner: dict | None = None, embedding_dim: int | None = None) -> int:
        """Keep a run's vectors for one tower (committed whole, or not at all), once they pass the
        one vector check (`vector_problems`: counts, width, finite, unit length, distinct keys):
        ValueError naming what is wrong, and nothing written."""
        spec = self.tower(tower_name)
        if not len(keys):
            raise ValueError(f"no {tower_name} vectors to keep for run {run_id}")
        problems = vector_problems(keys, vectors, embedding_dim) if spec.vector_field else []
        if problems:
            raise ValueError(f"not keeping the {tower_name} vectors of run {run_id}: {'; '.join(problems)}")
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
