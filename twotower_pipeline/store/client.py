"""pymongo access shared by the Dagster layer, the CLI and the tests: one client per URI per process."""

from __future__ import annotations

import re
import threading
from urllib.parse import urlsplit, urlunsplit

import pymongo
from bson.codec_options import CodecOptions
from pymongo.collection import Collection
from pymongo.database import Database

from twotower_pipeline.store.embedded import EmbeddedMongo

_clients: dict[str, pymongo.MongoClient] = {}
_clients_lock = threading.Lock()


def redact_uri(uri: str) -> str:
    """The URI with any user name and password replaced, safe to print or log."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return "<unparseable MongoDB URI>"
    if "@" not in parts.netloc:
        return uri
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit((parts.scheme, f"***:***@{host}", parts.path, "", ""))


def redact_text(text: str, uri: str | None) -> str:
    """Remove the URI's credentials from a message (driver errors can echo the URI)."""
    if not uri:
        return text
    text = text.replace(uri, redact_uri(uri))
    parts = urlsplit(uri)
    if parts.password:
        text = text.replace(parts.password, "***")
    return re.sub(r"mongodb(\+srv)?://[^@\s/]+@", "mongodb://***:***@", text)


def get_client(uri: str) -> pymongo.MongoClient:
    """A cached, tz-aware client for the URI (pymongo clients are thread-safe and pooled)."""
    with _clients_lock:
        client = _clients.get(uri)
        if client is None:
            # 20 s to find the server unless the URI says otherwise (`serverSelectionTimeoutMS=...`)
            timeout = {} if "serverselectiontimeoutms" in uri.lower() else {"serverSelectionTimeoutMS": 20_000}
            client = pymongo.MongoClient(uri, tz_aware=True, **timeout)
            _clients[uri] = client
        return client


def close_clients() -> None:
    with _clients_lock:
        for client in _clients.values():
            client.close()
        _clients.clear()


def resolve_uri(uri: str | None, embedded_dir: str | None = None) -> str:
    """The configured URI, or the embedded server's (started on demand) when none is set."""
    if uri:
        return uri
    return EmbeddedMongo(embedded_dir).uri() + "?directConnection=true"


class MongoStore:
    """Names a collection as `database.collection`; the prefix isolates tests and environments."""

    def __init__(self, uri: str, database_prefix: str = ""):
        self.uri = uri
        self.database_prefix = database_prefix
        self.client = get_client(uri)

    def database(self, name: str) -> Database:
        return self.client.get_database(self.database_prefix + name, codec_options=CodecOptions(tz_aware=True))

    def collection(self, location: str) -> Collection:
        database, _, collection = location.partition(".")
        if not database or not collection:
            raise ValueError(f"collection location {location!r} must look like 'database.collection'")
        return self.database(database)[collection]

    def describe(self) -> str:
        return redact_uri(self.uri)
