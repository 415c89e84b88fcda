"""The runtime's log documents, durable before a request is answered: each is appended to a local
journal (one `os.write`: it survives a kill -9 of the service; with `fsync`, a group commit, a crash
of the machine) and a shipper thread moves them to MongoDB in batches, idempotently (each document
carries its `_id`), then trims what was shipped. A MongoDB outage fills the disk up to a cap, then
`append` raises :class:`JournalFull` (the service answers 503), instead of growing memory unbounded.

On disk: `segment-<sequence>.log` files of records `length u32, crc32 u32, appended_at f64,
location length u16, location, BSON`; `shipped.json`, the position shipped up to (replaced
atomically; a stale one only reships, which the `_id`s make harmless); `rejected-<sequence>.bson`,
documents the server refused for good (set aside, so they do not block what follows).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import errno
import fcntl
import json
import logging
import math
import os
import re
import struct
import threading
import time
import zlib
from pathlib import Path

import bson
import pymongo
from bson.codec_options import CodecOptions
from bson.errors import BSONError
from bson.raw_bson import RawBSONDocument
from pymongo.errors import BulkWriteError

from twotower_pipeline.store.client import MongoStore, redact_text
from twotower_pipeline.store.leases import journaled

log = logging.getLogger("twotower.serving")

_HEADER = struct.Struct("<II")  # body length, crc32 of the body
_META = struct.Struct("<dH")  # appended_at (epoch seconds), location length
_MIN_BODY = _META.size + 3 + 5  # 'a.b' and the smallest BSON document
#: The server's largest document (maxBsonObjectSize); a bigger one could never be shipped.
MAX_DOCUMENT_BYTES = 16 << 20
_MAX_BODY = _META.size + 0xFFFF + MAX_DOCUMENT_BYTES
_SEGMENT = re.compile(r"segment-(\d{20})\.log")
POSITION = "shipped.json"
LOCK = "lock"
#: Tries of a document the server refuses (a write error other than a duplicate key) before it is set aside.
REJECT_AFTER = 3
_DECODE = CodecOptions(tz_aware=True)


class JournalFull(RuntimeError):
    """The journal holds `cap_bytes` not yet shipped: the caller should answer 503 with Retry-After."""

    def __init__(self, message: str, retry_after_s: int):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class JournalInUse(RuntimeError):
    """Another journal (this process or another) holds the directory: two shippers would race."""


class _Abandoned(Exception):
    """The journal was closed while the shipper was still at work: it must not touch the directory."""


@dataclasses.dataclass(slots=True)
class _Record:
    seq: int
    offset: int
    end: int
    appended_at: float
    location: str
    raw: bytes
    done: bool = False
    tries: int = 0
    rejected: bool = False


@dataclasses.dataclass(slots=True)
class _Batch:
    records: list[_Record]
    end: tuple[int, int]  # the position shipped up to once every record is done


class LogJournal:
    """Append-then-ship log documents for `location`s (`database.collection`) of `store`."""

    def __init__(self, store: MongoStore, directory, *, cap_bytes: int = 1 << 30, segment_bytes: int = 16 << 20,
                 batch_size: int = 500, linger_s: float = 0.05, retry_s: float = 1.0, fsync: bool = False):
        self.store = store
        self.directory = Path(directory)
        self.cap_bytes = cap_bytes
        self.segment_bytes = segment_bytes
        self.batch_size = batch_size
        self.linger_s = linger_s
        self.retry_s = retry_s
        self.fsync = fsync
        self._lock = threading.Lock()  # appends, the segment being written, the counters
        self._cond = threading.Condition(self._lock)  # wakes the shipper
        self._sync_cond = threading.Condition(self._lock)  # group commit
        self._dir_lock = threading.Lock()  # the shipper's changes to the directory, against close()
        self._state = "new"
        self._locations: dict[str, bytes] = {}
        self._lock_fd: int | None = None
        self._dir_fd: int | None = None
        self._fd: int | None = None
        self._seq = 0
        self._offset = 0
        self._sealed: dict[int, int] = {}  # sealed segment -> its size
        self._ship_pos = (0, 0)
        self._pending_bytes = 0
        self._pending_docs = 0
        self._oldest_at: float | None = None
        self._waiting = 0  # 1: the shipper waits for a record, 2: for a full batch
        self._stopping = False
        self._deadline = math.inf
        # group commit (fsync=True): appends counted, synced through, fds sealed but not yet synced
        self._written = 0
        self._synced = 0
        self._syncing = False
        self._unsynced: list[int] = []
        self._dir_dirty = False
        self._thread: threading.Thread | None = None
        self.shipped = 0
        self.rejected = 0
        self.refused_full = 0
        self.torn = 0
        self.torn_bytes = 0
        self.failures = 0
        self.last_error: str | None = None
        self.last_error_at: str | None = None

    # --- open -----------------------------------------------------------------------------------
    def open(self) -> list[tuple[str, dict]]:
        """Take the directory, recover it, start the shipper; the records not yet shipped, oldest first."""
        if self._state != "new":
            raise RuntimeError("a LogJournal is opened once")
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._take_lock()
        try:
            pending = self._recover()
            self._dir_fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
            self._fd = self._create_segment(self._seq)
            if self.fsync:
                os.fsync(self._dir_fd)
        except BaseException:
            self._release()
            raise
        self._state = "open"
        self._thread = threading.Thread(target=self._run, name="twotower-log-journal", daemon=True)
        self._thread.start()
        if pending:
            log.info("log journal %s: %d documents (%d bytes) from before are shipped first", self.directory,
                     len(pending), self._pending_bytes)
        return [(location, bson.decode(raw, codec_options=_DECODE)) for location, raw in pending]

    def _take_lock(self) -> None:
        fd = os.open(self.directory / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise JournalInUse(f"the log journal {self.directory} is in use by another journal (pid {holder}): "
                               f"each service process needs its own journal directory") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def _release(self) -> None:
        for name in ("_fd", "_dir_fd", "_lock_fd"):  # closing the lock file releases the flock
            fd = getattr(self, name)
            if fd is not None:
                os.close(fd)
                setattr(self, name, None)

    def _recover(self) -> list[tuple[str, bytes]]:
        """Read what is not yet shipped, truncate a torn tail, drop what was shipped; set the counters."""
        segments = sorted(int(m.group(1)) for m in map(_SEGMENT.fullmatch, os.listdir(self.directory)) if m)
        (self.directory / (POSITION + ".tmp")).unlink(missing_ok=True)
        position = self._read_position()
        for seq in [s for s in segments if position and s < position[0]]:  # a trim cut short
            self._segment_path(seq).unlink()
            segments.remove(seq)
        pending: list[tuple[str, bytes]] = []
        ship_pos = None
        for seq in segments:
            path = self._segment_path(seq)
            size = path.stat().st_size
            start = 0
            if position and seq == position[0]:
                start = position[1]
                if start > size:  # the machine lost what had been shipped: nothing of it is pending
                    log.warning("log journal %s: %s is shorter (%d bytes) than what was shipped of it (%d)",
                                self.directory, path.name, size, start)
                    start = size
            end = start
            with open(path, "rb") as file:
                file.seek(start)
                while (record := _read_record(file, seq, end)) is not None:
                    pending.append((record.location, record.raw))
                    if self._oldest_at is None:
                        self._oldest_at = record.appended_at
                    end = record.end
            if end < size:
                self.torn += 1
                self.torn_bytes += size - end
                log.warning("log journal %s: %s ends in %d bytes that are not a whole record (a torn write): "
                            "truncated", self.directory, path.name, size - end)
                os.truncate(path, end)
            self._sealed[seq] = end
            self._pending_bytes += end - start
            if ship_pos is None:
                ship_pos = (seq, start)
        self._pending_docs = len(pending)
        self._seq = max([*segments, position[0] if position else -1]) + 1
        self._ship_pos = ship_pos or (self._seq, 0)
        self._skip_shipped_segments()
        if self._ship_pos != position:
            self._write_position(self._ship_pos)
        return pending

    def _skip_shipped_segments(self) -> None:
        """Delete the sealed segments before the shipped position, and the one it ends, moving past it."""
        seq, offset = self._ship_pos
        for sealed in sorted(self._sealed):
            if sealed < seq or (sealed == seq and offset >= self._sealed[sealed]):
                self._segment_path(sealed).unlink(missing_ok=True)
                del self._sealed[sealed]
                if sealed == seq:
                    later = [s for s in self._sealed if s > seq]
                    seq, offset = (min(later), 0) if later else (self._seq, 0)
        self._ship_pos = (seq, offset)

    def _read_position(self) -> tuple[int, int] | None:
        try:
            saved = json.loads((self.directory / POSITION).read_text())
            return int(saved["segment"]), int(saved["offset"])
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as error:  # reshipping from the start is only slower
            log.warning("log journal %s: %s unreadable (%s): shipping from the first segment", self.directory,
                        POSITION, error)
            return None

    def _write_position(self, position: tuple[int, int]) -> None:
        tmp = self.directory / (POSITION + ".tmp")
        with open(tmp, "w") as file:
            json.dump({"segment": position[0], "offset": position[1]}, file)
            if self.fsync:
                file.flush()
                os.fsync(file.fileno())
        os.replace(tmp, self.directory / POSITION)

    def _segment_path(self, seq: int) -> Path:
        return self.directory / f"segment-{seq:020d}.log"

    def _create_segment(self, seq: int) -> int:
        # O_APPEND: after a short write is truncated away, the next record starts where it did
        return os.open(self._segment_path(seq), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)

    # --- append ---------------------------------------------------------------------------------
    def append(self, location: str, document: dict) -> bytes:
        """Write one document durably (see the module docstring) and return its BSON (a caller that
        keeps the document need not encode it again); JournalFull past the cap."""
        prefix = self._locations.get(location) or self._location_prefix(location)
        try:
            has_id = "_id" in document
            payload = bson.encode(document)
        except (BSONError, OverflowError, TypeError, ValueError) as error:
            raise ValueError(f"a log document for {location} cannot be encoded as BSON: {error}") from None
        if not has_id:
            raise ValueError(f"a log document for {location} has no _id: the journal ships by _id, so that a "
                             f"document shipped twice is not written twice")
        if len(payload) > MAX_DOCUMENT_BYTES:
            raise ValueError(f"a log document for {location} is {len(payload)} bytes of BSON, more than MongoDB "
                             f"takes ({MAX_DOCUMENT_BYTES})")
        meta = _META.pack(time.time(), len(prefix))
        crc = zlib.crc32(payload, zlib.crc32(prefix, zlib.crc32(meta)))
        size = _HEADER.size + len(meta) + len(prefix) + len(payload)
        record = b"".join((_HEADER.pack(size - _HEADER.size, crc), meta, prefix, payload))
        with self._lock:
            if self._state != "open":
                raise RuntimeError(f"the log journal {self.directory} is {self._state}, not open")
            if self._pending_bytes + size > self.cap_bytes:
                self.refused_full += 1
                raise JournalFull(
                    f"the log journal {self.directory} holds {self._pending_bytes} bytes not yet shipped "
                    f"(cap {self.cap_bytes}); last shipping error: {self.last_error or 'none'}",
                    self._retry_after_s())
            if self._offset and self._offset + size > self.segment_bytes:
                self._roll()
            self._write(record)
            if self._pending_docs == 0:
                self._oldest_at = time.time()
            self._pending_bytes += size
            self._pending_docs += 1
            if self._waiting == 1 or (self._waiting == 2 and self._pending_docs >= self.batch_size):
                self._waiting = 0
                self._cond.notify()
            if self.fsync:
                self._written += 1
                self._sync_through(self._written)
        return payload

    def _location_prefix(self, location: str) -> bytes:
        database, _, collection = location.partition(".") if isinstance(location, str) else ("", "", "")
        if not database or not collection or "\x00" in location:
            raise ValueError(f"log location {location!r} must look like 'database.collection'")
        encoded = location.encode()
        if len(encoded) > 0xFFFF:
            raise ValueError(f"log location {location[:40]!r}... is too long")
        self._locations[location] = encoded
        return encoded

    def _write(self, record: bytes) -> None:
        """One os.write; a short or failed one (a full disk) is cut off, so the file holds whole records."""
        try:
            written = os.write(self._fd, record)
        except OSError:
            self._cut()
            raise
        if written != len(record):
            self._cut()
            raise OSError(errno.ENOSPC, f"the log journal {self.directory} wrote {written} of {len(record)} bytes")
        self._offset += written

    def _cut(self) -> None:
        try:
            os.ftruncate(self._fd, self._offset)
        except OSError as error:  # the recovery at the next open() drops a torn record
            log.error("log journal %s: cutting a short write failed: %s", self.directory, error)

    def _roll(self) -> None:
        """Seal the segment being written and start the next (under the lock)."""
        fd = self._create_segment(self._seq + 1)
        self._sealed[self._seq] = self._offset
        if self.fsync:
            self._unsynced.append(self._fd)  # the next group commit syncs and closes it
            self._dir_dirty = True
        else:
            os.close(self._fd)
        self._fd, self._seq, self._offset = fd, self._seq + 1, 0

    def _sync_through(self, number: int) -> None:
        """Group commit (under the lock): one appender syncs for every append written before it started;
        the others wait for it, and the next leader takes whoever came in the meantime."""
        while self._synced < number:
            if self._syncing:
                self._sync_cond.wait()
                continue
            self._syncing = True
            target, current, sealed, directory = self._written, self._fd, self._unsynced, self._dir_dirty
            self._unsynced, self._dir_dirty = [], False
            self._lock.release()
            error = None
            try:
                for fd in [*sealed, current]:
                    os.fdatasync(fd)
                if directory:
                    os.fsync(self._dir_fd)
            except OSError as failed:  # not acknowledged; the records stay and ship, but may not survive a crash
                error = failed
                self._failed(failed)
            finally:
                for fd in sealed:
                    os.close(fd)
                self._lock.acquire()
                self._syncing = False
                self._sync_cond.notify_all()
            if error is not None:
                raise error
            self._synced = max(self._synced, target)

    def _retry_after_s(self) -> int:
        return max(1, math.ceil(self._backoff_s())) if self.failures else 1

    # --- what it holds ----------------------------------------------------------------------------
    def stats(self) -> dict:
        with self._lock:
            oldest = self._oldest_at if self._pending_docs else None
            return {
                "bytes": self._pending_bytes, "documents_pending": self._pending_docs,
                "oldest_pending_age_s": None if oldest is None else round(max(0.0, time.time() - oldest), 3),
                "shipped": self.shipped, "rejected": self.rejected, "refused_full": self.refused_full,
                "torn": self.torn, "last_error": self.last_error, "last_error_at": self.last_error_at,
                "shipper_alive": self._thread is not None and self._thread.is_alive(), "cap_bytes": self.cap_bytes,
                "segments": len(self._sealed) + (self._state == "open"),
            }

    @property
    def healthy(self) -> bool:
        """The shipper runs: without it the journal fills up and every request is refused."""
        return self._state == "open" and self._thread is not None and self._thread.is_alive()

    # --- close ----------------------------------------------------------------------------------
    def close(self, timeout_s: float = 30.0) -> None:
        """Ship what is pending while MongoDB answers within `timeout_s`, then stop; the rest waits on disk."""
        with self._lock:
            if self._state != "open":
                return
            self._stopping = True
            self._deadline = time.monotonic() + timeout_s
            self._cond.notify_all()
        self._thread.join(timeout_s + 5.0)
        if self._thread.is_alive():
            log.error("log journal %s: the shipper did not stop in %.0f s; it is left behind, its work redone at "
                      "the next open()", self.directory, timeout_s)
        with self._dir_lock, self._lock:
            while self._syncing:
                self._sync_cond.wait()
            self._state = "closed"
            for fd in [*self._unsynced, self._fd]:  # a clean shutdown is durable whatever `fsync` says
                try:
                    os.fdatasync(fd)
                except OSError as error:
                    log.error("log journal %s: syncing a segment at close failed: %s", self.directory, error)
            for fd in self._unsynced:
                os.close(fd)
            self._unsynced = []
            self._synced = self._written
            self._sync_cond.notify_all()
            if self._pending_docs == 0:  # every record shipped (or set aside): no segment is needed
                for seq in [*self._sealed, self._seq]:
                    self._segment_path(seq).unlink(missing_ok=True)
                self._sealed = {}
            else:
                self._sealed[self._seq] = self._offset
            self._release()
        pending = self.stats()
        if pending["documents_pending"]:
            log.warning("log journal %s: %d documents (%d bytes) not shipped; they ship at the next open()",
                        self.directory, pending["documents_pending"], pending["bytes"])

    # --- the shipper ------------------------------------------------------------------------------
    def _run(self) -> None:
        batch: _Batch | None = None
        while True:
            try:
                if batch is None:
                    batch = self._next_batch()
                    if batch is None:
                        return
                elif self._stopping and time.monotonic() >= self._deadline:
                    return
                self._ship(batch)
                self._commit(batch)
                batch = None
            except _Abandoned:
                return
            except Exception as error:  # noqa: BLE001 - whatever it is, the shipper retries, never dies
                self._failed(error)
                if not self._pause():
                    return

    def _next_batch(self) -> _Batch | None:
        """Wait for a record, linger for a fuller batch, read it from the segments."""
        with self._lock:
            while not self._pending_docs:
                if self._stopping:
                    return None
                self._waiting = 1
                self._cond.wait()
            deadline = time.monotonic() + self.linger_s
            while self._pending_docs < self.batch_size and not self._stopping:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._waiting = 2
                self._cond.wait(remaining)
            self._waiting = 0
            if self._stopping and time.monotonic() >= self._deadline:
                return None
            current, current_end, sealed = self._seq, self._offset, dict(self._sealed)
        seq, offset = self._ship_pos
        records: list[_Record] = []
        while len(records) < self.batch_size:
            end = current_end if seq == current else sealed.get(seq, 0)
            if offset >= end:
                if seq == current:
                    break
                later = [s for s in sealed if s > seq]
                seq, offset = (min(later), 0) if later else (current, 0)
                continue
            with open(self._segment_path(seq), "rb") as file:
                file.seek(offset)
                while offset < end and len(records) < self.batch_size:
                    record = _read_record(file, seq, offset)
                    if record is None or record.end > end:
                        raise OSError(errno.EIO, f"{self._segment_path(seq).name} holds no whole record at {offset}")
                    records.append(record)
                    offset = record.end
        if not records:  # the counters say there is something: never spin on a mismatch
            raise RuntimeError(f"{self._pending_docs} documents pending but none found from {self._ship_pos}")
        with self._lock:
            self._oldest_at = records[0].appended_at
        return _Batch(records, (seq, offset))

    def _ship(self, batch: _Batch) -> None:
        """Insert what of the batch is not in yet, per location; raise when something is left to retry."""
        by_location: dict[str, list[_Record]] = {}
        for record in batch.records:
            if not record.done:
                by_location.setdefault(record.location, []).append(record)
        refused: list[tuple[_Record, dict]] = []
        for location, records in by_location.items():
            collection = journaled(self.store.collection(location))
            try:
                with self._time_limit():
                    # journaled: what is trimmed here is durable on the server; unordered: a document
                    # already there (a batch shipped twice) fails alone, on its duplicate `_id`
                    collection.insert_many([RawBSONDocument(r.raw) for r in records], ordered=False)
            except BulkWriteError as error:
                details = error.details or {}
                if details.get("writeConcernErrors"):
                    raise
                failed = {e.get("index"): e for e in details.get("writeErrors") or [] if e.get("code") != 11000}
                for index, record in enumerate(records):
                    if index in failed:
                        record.tries += 1
                        refused.append((record, failed[index]))
                    else:
                        record.done = True  # inserted, or there already (11000)
                continue
            for record in records:
                record.done = True
        if refused:
            given_up = [(record, error) for record, error in refused if record.tries >= REJECT_AFTER]
            if given_up:
                self._reject(given_up)
            if len(given_up) < len(refused):
                record, error = refused[0]
                raise RuntimeError(f"the server refused {len(refused)} documents of {record.location} "
                                   f"(code {error.get('code')}: {str(error.get('errmsg'))[:200]})")

    def _time_limit(self):
        """While closing, what is left of close()'s timeout; else the client's own timeouts (a pymongo
        timeout would replace its serverSelectionTimeoutMS, so an unreachable server would hold a batch
        that long)."""
        if not self._stopping:
            return contextlib.nullcontext()
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("closing: no time left to ship")
        return pymongo.timeout(remaining)

    def _reject(self, refused: list[tuple[_Record, dict]]) -> None:
        """Set documents the server keeps refusing aside, beside the segments, and go on."""
        with self._dir_lock:
            if self._state == "closed":
                raise _Abandoned()
            for record, error in refused:
                entry = bson.encode({
                    "location": record.location, "segment": record.seq, "offset": record.offset,
                    "rejected_at": dt.datetime.now(dt.timezone.utc), "code": error.get("code"),
                    "errmsg": str(error.get("errmsg"))[:1000], "document": RawBSONDocument(record.raw)})
                path = self.directory / f"rejected-{record.seq:020d}.bson"
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                try:
                    os.write(fd, entry)
                    if self.fsync:
                        os.fsync(fd)
                finally:
                    os.close(fd)
                record.done = record.rejected = True
                log.error("log journal %s: the server refused a document for %s %d times (code %s: %s); set "
                          "aside in %s", self.directory, record.location, record.tries, error.get("code"),
                          str(error.get("errmsg"))[:200], path.name)
        with self._lock:
            self.rejected += len(refused)

    def _commit(self, batch: _Batch) -> None:
        """Persist the shipped position, trim the segments wholly shipped, update the counters."""
        with self._dir_lock:
            if self._state == "closed":
                raise _Abandoned()
            self._ship_pos = batch.end
            self._write_position(batch.end)
            with self._lock:
                trim = [s for s, size in self._sealed.items()
                        if s < batch.end[0] or (s == batch.end[0] and batch.end[1] >= size)]
                for seq in trim:
                    del self._sealed[seq]
            for seq in trim:
                self._segment_path(seq).unlink(missing_ok=True)
        with self._lock:
            self._pending_bytes -= sum(r.end - r.offset for r in batch.records)
            self._pending_docs -= len(batch.records)
            self.shipped += sum(not r.rejected for r in batch.records)
            if self._pending_docs and batch.records:  # at most one linger older than the next record
                self._oldest_at = batch.records[-1].appended_at
            self.failures = 0

    def _failed(self, error: BaseException) -> None:
        text = redact_text(f"{type(error).__name__}: {error}", getattr(self.store, "uri", None))[:300]
        with self._lock:
            self.failures += 1
            self.last_error = text
            self.last_error_at = dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")
            failures = self.failures
        log.warning("log journal %s: shipping failed (%s); try %d, again in %.1f s", self.directory, text,
                    failures, self._backoff_s())

    def _backoff_s(self) -> float:
        return min(self.retry_s * 2 ** min(max(self.failures - 1, 0), 16), max(self.retry_s, 30.0))

    def _pause(self) -> bool:
        """Wait before a retry (close() cuts it short); False when closing and out of time."""
        with self._lock:
            delay = self._backoff_s()
            if self._stopping:
                remaining = self._deadline - time.monotonic()
                if remaining <= 0:
                    return False
                delay = min(delay, remaining)
            stopping = self._stopping
            self._cond.wait_for(lambda: self._stopping != stopping, timeout=delay)
        return True


def _read_record(file, seq: int, offset: int) -> _Record | None:
    """The whole, intact record at `offset` of an open segment, or None (its end, or a torn record)."""
    header = file.read(_HEADER.size)
    if len(header) < _HEADER.size:
        return None
    length, crc = _HEADER.unpack(header)
    if not _MIN_BODY <= length <= _MAX_BODY:  # a zeroed tail (crc32 of nothing is 0) is not a record
        return None
    body = file.read(length)
    if len(body) < length or zlib.crc32(body) != crc:
        return None
    appended_at, location_length = _META.unpack_from(body)
    raw = body[_META.size + location_length:]
    if len(raw) < 5 or int.from_bytes(raw[:4], "little") != len(raw):
        return None
    try:
        location = body[_META.size:_META.size + location_length].decode()
    except UnicodeDecodeError:
        return None
    return _Record(seq, offset, offset + _HEADER.size + length, appended_at, location, raw)
