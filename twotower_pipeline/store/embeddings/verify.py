"""Verifying: what the live collections hold read back against a run (counts and run ids on the
server, vectors in batches), and the one check of vectors before anything is written."""

from __future__ import annotations

import dataclasses

import numpy as np

from twotower_pipeline.store.embeddings.journal import NORM_TOLERANCE, PublishError, PublishJournal
from twotower_pipeline.store.frames import INSERT_BATCH, batches


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


def vector_problems(keys, matrix, embedding_dim: int | None = None) -> list[str]:
    """What keeps vectors out of a run's or a live collection: counts, width (`embedding_dim`, or
    one width for all when None), finiteness, unit length, duplicate keys. The one check of vectors:
    every write of a run's vectors and every refresh goes through it."""
    matrix = np.asarray(matrix, dtype=np.float64)
    if len(keys) != len(matrix):
        return [f"{len(keys)} keys but {len(matrix)} vectors"]
    if not len(keys):
        return []
    if matrix.ndim != 2 or not matrix.shape[1] or (embedding_dim is not None and matrix.shape[1] != embedding_dim):
        return [f"vectors of shape {matrix.shape}, expected (n, {embedding_dim or 'd'})"]
    found = []
    finite = np.isfinite(matrix).all(axis=1)
    if not finite.all():
        found.append(f"{int((~finite).sum())} vectors are not finite")
    off = int((np.abs(np.linalg.norm(matrix[finite], axis=1) - 1.0) > NORM_TOLERANCE).sum())
    if off:
        found.append(f"{off} vectors are not unit length")
    distinct = len(set(map(str, keys)))
    if distinct != len(keys):
        found.append(f"{len(keys) - distinct} duplicate keys")
    return found


class Verification(PublishJournal):
    """Reading the live collections back."""

    def verify(self, run_id: str | None = None, embedding_dim: int | None = None,
               read_vectors: bool = True) -> LiveReport:
        """Check the live pair against a run (default: the journal's live run); `read_vectors`
        False: counts and the key index only."""
        run_id = run_id or self.live_run_id()
        if not run_id:
            raise PublishError(f"nothing has been published to {self.database_name}")
        expected = self.run_counts(run_id)
        return self._verify(run_id, expected, embedding_dim, read_vectors=read_vectors)

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
