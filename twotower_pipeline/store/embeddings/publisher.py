"""`Publisher`: the verbs of publishing over one journal (see the package's docstring)."""

from __future__ import annotations

from twotower_pipeline.store.embeddings.publish import Publishing


class Publisher(Publishing):
    """Publishes runs' vector pairs to the live collections of one database, through the journal:
    keep a run's vectors (`write_run`), `publish`, `rollback`, `recover`, `refresh`, `verify`."""
