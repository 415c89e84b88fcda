"""The runtime's log writes, off the request path: documents are queued in memory and a writer
thread inserts them in batches (`insert_many`, unordered). A failed batch is retried, never
dropped; `close()` writes what is queued before it returns, so a clean shutdown loses no rows.
Writes are journaled: a document once written survives a crash of the server."""

from __future__ import annotations

import logging
import queue
import threading
import time

from pymongo.errors import PyMongoError

from twotower_pipeline.store.client import MongoStore
from twotower_pipeline.store.leases import journaled

log = logging.getLogger("twotower.serving")
_STOP = object()


class LogWriter:
    """Batched, asynchronous inserts into `location`s (`database.collection`)."""

    def __init__(self, store: MongoStore, *, batch_size: int = 500, linger_s: float = 0.05, retry_s: float = 1.0):
        self.store = store
        self.batch_size = batch_size
        self.linger_s = linger_s
        self.retry_s = retry_s
        self.written = 0
        self.failures = 0
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="twotower-log-writer", daemon=True)
        self._thread.start()

    def write(self, location: str, document: dict) -> None:
        """Queue one document; returns at once."""
        self._queue.put((location, document))

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    def close(self, timeout_s: float = 30.0) -> None:
        """Write everything queued, then stop the writer."""
        self._queue.put(_STOP)
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            log.error("the log writer did not finish in %.0f s: %d documents still queued", timeout_s, self.pending)

    def _run(self) -> None:
        stopping = False
        while not stopping:
            batch: dict[str, list[dict]] = {}
            first = self._queue.get()
            deadline = time.monotonic() + self.linger_s
            item, count = first, 0
            while True:
                if item is _STOP:
                    stopping = True
                else:
                    batch.setdefault(item[0], []).append(item[1])
                    count += 1
                if count >= self.batch_size:
                    break
                try:
                    # while stopping, take what is queued without waiting
                    item = self._queue.get(timeout=max(0.0, deadline - time.monotonic())) if not stopping \
                        else self._queue.get_nowait()
                except queue.Empty:
                    break
            for location, documents in batch.items():
                self._insert(location, documents)

    def _insert(self, location: str, documents: list[dict]) -> None:
        while True:
            try:
                # journaled: an acknowledged log document survives a kill -9 of the server (measured:
                # the embedded server otherwise loses the last ones); unordered: a duplicate `_id`
                # (a retried batch that had partly landed) does not stop the rest
                journaled(self.store.collection(location)).insert_many(documents, ordered=False)
                self.written += len(documents)
                return
            except PyMongoError as error:
                landed = _inserted_before(error)
                if landed is not None:
                    self.written += len(documents)  # only duplicates of documents already written failed
                    return
                self.failures += 1
                log.warning("writing %d log documents to %s failed (%s): retrying in %.1f s", len(documents),
                            location, type(error).__name__, self.retry_s)
                time.sleep(self.retry_s)


def _inserted_before(error: PyMongoError) -> bool | None:
    """True when a bulk write failed only on duplicate keys: each document is in the collection."""
    details = getattr(error, "details", None) or {}
    write_errors = details.get("writeErrors") if isinstance(details, dict) else None
    if write_errors and all(e.get("code") == 11000 for e in write_errors) and not details.get("writeConcernErrors"):
        return True
    return None
