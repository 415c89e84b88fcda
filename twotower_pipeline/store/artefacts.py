"""Model artefacts in GridFS: binary state plus a JSON config, never a pickled module.

An artefact class registers under a kind name and knows how to split itself into
(config, state bytes) and back; loading looks the kind up in the registry, so no stored
bytes can name arbitrary code to run.
"""

from __future__ import annotations

import json
from typing import Protocol

import gridfs
from bson import ObjectId

from twotower_pipeline.store.client import MongoStore

ARTEFACT_DATABASE = "ecosystem_meta"
ARTEFACT_BUCKET = "two_tower_artefacts"
_registry: dict[str, type] = {}


class Artefact(Protocol):
    artefact_kind: str

    def to_artefact(self) -> tuple[dict, bytes]: ...

    @classmethod
    def from_artefact(cls, config: dict, state: bytes) -> "Artefact": ...


def register_artefact(cls: type) -> type:
    """Class decorator: make `cls` storable under its `artefact_kind`."""
    kind = getattr(cls, "artefact_kind", None)
    if not kind:
        raise TypeError(f"{cls.__name__} needs an `artefact_kind` to be registered")
    _registry[kind] = cls
    return cls


def _bucket(store: MongoStore) -> gridfs.GridFSBucket:
    return gridfs.GridFSBucket(store.database(ARTEFACT_DATABASE), bucket_name=ARTEFACT_BUCKET)


def save_artefact(store: MongoStore, name: str, artefact, extra: dict | None = None) -> str:
    """Store a new version of `name`; earlier versions stay for rollback. Returns the file id."""
    kind = getattr(artefact, "artefact_kind", None)
    if kind not in _registry:
        raise TypeError(f"{type(artefact).__name__} is not a registered artefact kind (got {kind!r})")
    config, state = artefact.to_artefact()
    searchable = artefact.artefact_metadata() if hasattr(artefact, "artefact_metadata") else {}
    # key order is kept: a config may rely on it (e.g. the order of feature columns)
    metadata = {"kind": kind, "config": json.dumps(config), **searchable, **(extra or {})}
    file_id = _bucket(store).upload_from_stream(name, state, metadata=metadata)
    return str(file_id)


def load_artefact(store: MongoStore, name: str, file_id: str | None = None, **metadata):
    """The version `file_id` of `name`, or its latest version whose metadata has the given values,
    rebuilt by its class."""
    bucket = _bucket(store)
    query = {"filename": name, **{f"metadata.{k}": v for k, v in metadata.items()}}
    if file_id is not None:
        query["_id"] = ObjectId(file_id)
    latest = next(iter(bucket.find(query).sort("uploadDate", -1).limit(1)), None)
    if latest is None:
        wanted = "".join(f" with {k}={v!r}" for k, v in ({"file_id": file_id} if file_id else metadata).items())
        raise LookupError(f"no artefact named {name!r}{wanted} in {ARTEFACT_DATABASE}.{ARTEFACT_BUCKET}")
    kind = latest.metadata.get("kind")
    cls = _registry.get(kind)
    if cls is None:
        raise LookupError(f"artefact {name!r} has kind {kind!r}, which no loaded module registers")
    state = bucket.open_download_stream(latest._id).read()
    return cls.from_artefact(json.loads(latest.metadata["config"]), state)


def artefact_versions(store: MongoStore, name: str) -> int:
    return store.database(ARTEFACT_DATABASE)[f"{ARTEFACT_BUCKET}.files"].count_documents({"filename": name})


def replace_artefact(store: MongoStore, name: str, artefact, extra: dict | None = None) -> str:
    """Store `artefact` as the only version of `name` (older versions are deleted once it is stored)."""
    file_id = save_artefact(store, name, artefact, extra)
    delete_artefact(store, name, keep=file_id)
    return file_id


def delete_artefact(store: MongoStore, name: str, keep: str | None = None) -> None:
    """Delete every version of `name` but `keep`."""
    bucket = _bucket(store)
    for stored in bucket.find({"filename": name}):
        if keep is None or str(stored._id) != keep:
            bucket.delete(stored._id)
