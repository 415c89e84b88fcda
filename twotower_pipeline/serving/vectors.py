"""One run's customer vectors as the service holds them: keys sorted once, vectors in the same
order, found by binary search. Two numpy arrays, not a dict of a million strings: a lookup is a
few microseconds, the memory is what the arrays take (`bytes_per_customer`), and the garbage
collector has two objects to walk, not millions.

Past a memory budget the arrays are written to `.npy` files and memory-mapped instead: the page
cache holds what requests touch, the process's own memory stays small, and nothing fails for size.

Customers a refresh added or changed since the run was published sit in a second, small pair of
arrays (`refreshed`) that is looked up first, so a refresh never rebuilds the run's own arrays.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import uuid
from pathlib import Path

import numpy as np


def _sorted(keys, vectors) -> tuple[np.ndarray, np.ndarray]:
    keys = np.asarray(keys, dtype=str)
    vectors = np.asarray(vectors, dtype=np.float32)
    if keys.ndim != 1 or vectors.ndim != 2 or len(keys) != len(vectors):
        raise ValueError(f"{keys.shape} keys for vectors of shape {vectors.shape}")
    if len(keys) > 1 and not (keys[1:] > keys[:-1]).all():
        order = np.argsort(keys, kind="stable")
        keys, vectors = keys[order], vectors[order]
        if (keys[1:] == keys[:-1]).any():
            raise ValueError(f"{int((keys[1:] == keys[:-1]).sum())} duplicate keys among the vectors")
    return keys, np.ascontiguousarray(vectors)


def _find(keys: np.ndarray, key: str) -> int:
    """The row of `key` in sorted `keys`, or -1."""
    row = int(keys.searchsorted(key))
    return row if row < len(keys) and keys[row] == key else -1


@dataclasses.dataclass(frozen=True)
class CustomerVectors:
    """Sorted keys [n] and float32 vectors [n, d] of one run, plus its refreshed customers."""

    keys: np.ndarray
    vectors: np.ndarray
    refreshed_keys: np.ndarray
    refreshed_vectors: np.ndarray
    mapped: Path | None = None  # the folder of the memory-mapped files, when past the budget
    added: int = 0  # refreshed customers that are not among the run's own

    @classmethod
    def build(cls, keys, vectors, *, budget_bytes: int | None = None, cache_dir=None) -> "CustomerVectors":
        """From a run's kept vectors (any order); memory-mapped from `cache_dir` when the arrays
        take more than `budget_bytes`."""
        keys, vectors = _sorted(keys, vectors)
        empty_keys, empty_vectors = _sorted([], np.zeros((0, vectors.shape[1]), dtype=np.float32))
        if budget_bytes is None or keys.nbytes + vectors.nbytes <= budget_bytes:
            return cls(keys, vectors, empty_keys, empty_vectors)
        if cache_dir is None:
            raise ValueError(f"{keys.nbytes + vectors.nbytes:,} bytes of customer vectors are over the "
                             f"{budget_bytes:,}-byte budget and no cache folder is set to map them from")
        folder = Path(cache_dir) / uuid.uuid4().hex
        folder.mkdir(parents=True)
        for name, array in (("keys", keys), ("vectors", vectors)):
            np.save(folder / f"{name}.npy", array)
        del keys, vectors  # the in-memory copies go; the mapped files serve from here on
        return cls(np.load(folder / "keys.npy", mmap_mode="r"), np.load(folder / "vectors.npy", mmap_mode="r"),
                   empty_keys, empty_vectors, mapped=folder)

    def with_refreshed(self, keys, vectors) -> "CustomerVectors":
        """The same run's vectors with `keys` (a refresh's new and changed customers) replacing or
        adding to its own; the run's own arrays are shared, not copied."""
        keys, vectors = _sorted(keys, np.asarray(vectors, dtype=np.float32).reshape(len(keys), self.dim))
        rows = np.minimum(self.keys.searchsorted(keys), max(len(self.keys) - 1, 0))
        known = int((self.keys[rows] == keys).sum()) if len(self.keys) else 0
        return dataclasses.replace(self, refreshed_keys=keys, refreshed_vectors=vectors, added=len(keys) - known)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def __len__(self) -> int:
        """Distinct customers (own and refreshed)."""
        return len(self.keys) + self.added

    @property
    def nbytes(self) -> int:
        """Bytes the arrays take (in memory, or in the mapped files)."""
        return sum(int(a.nbytes) for a in (self.keys, self.vectors, self.refreshed_keys, self.refreshed_vectors))

    @property
    def bytes_per_customer(self) -> int:
        return int(self.keys.itemsize + self.vectors.itemsize * self.dim)

    def get(self, customer_id: str) -> np.ndarray | None:
        """The customer's vector [d] (a view, not a copy), or None."""
        row = _find(self.refreshed_keys, customer_id)
        if row >= 0:
            return self.refreshed_vectors[row]
        row = _find(self.keys, customer_id)
        return self.vectors[row] if row >= 0 else None

    def release(self) -> None:
        """Delete the mapped files (the arrays stay readable while mapped; Linux frees the space
        once the last mapping goes)."""
        if self.mapped is not None:
            for name in ("keys.npy", "vectors.npy"):
                try:
                    os.unlink(self.mapped / name)
                except FileNotFoundError:
                    pass
            try:
                self.mapped.rmdir()
            except OSError:
                pass


def clear_cache(cache_dir) -> int:
    """Delete the mapped files a killed process of this service left in `cache_dir` (a folder per
    loaded run); what another process still maps stays readable to it. The folders removed."""
    folder = Path(cache_dir)
    if not folder.is_dir():
        return 0
    removed = 0
    for entry in folder.iterdir():
        if entry.is_dir() and ((entry / "keys.npy").exists() or (entry / "vectors.npy").exists()):
            shutil.rmtree(entry, ignore_errors=True)
            removed += 1
    return removed
