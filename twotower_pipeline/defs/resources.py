"""MongoDB as a Dagster resource; which server is decided in one place (`mongo_from_environment`)."""

import os
from typing import Optional

import dagster as dg
from pydantic import PrivateAttr

from twotower_pipeline.store.client import MongoStore, redact_text, resolve_uri


class MongoResource(dg.ConfigurableResource):
    """A MongoDB server: `uri` (a secret, set from the MONGODB_URI environment variable) or,
    when it is empty, the embedded server for `embedded_dir`. `database_prefix` isolates an
    environment (tests, staging) by prefixing every database name."""

    uri: Optional[str] = None
    embedded_dir: Optional[str] = None
    database_prefix: str = ""
    _store: Optional[MongoStore] = PrivateAttr(default=None)

    def store(self) -> MongoStore:
        if self._store is None:
            try:
                self._store = MongoStore(resolve_uri(self.uri, self.embedded_dir), self.database_prefix)
            except Exception as error:  # never let a driver message carry the credentials out
                raise RuntimeError(redact_text(str(error), self.uri)) from None
        return self._store


def mongo_from_environment() -> MongoResource:
    """MONGODB_URI set: that server, read through dg.EnvVar so the UI never shows it.
    Unset: the embedded server (TWOTOWER_EMBEDDED_DIR, default `.twotower/mongodb`)."""
    prefix = os.environ.get("TWOTOWER_DATABASE_PREFIX", "")
    if os.environ.get("MONGODB_URI"):
        return MongoResource(uri=dg.EnvVar("MONGODB_URI"), database_prefix=prefix)
    return MongoResource(embedded_dir=os.environ.get("TWOTOWER_EMBEDDED_DIR"), database_prefix=prefix)
