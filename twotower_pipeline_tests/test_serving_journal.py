"""The runtime's log journal against the real server: every appended document reaches MongoDB exactly
once, across a stale shipped position, a kill -9 of the appending process, a torn tail, an outage
that fills the journal to its cap, a shipper that meets a non-driver exception, concurrent appenders
and a document the server refuses for good; the directory is one journal's at a time."""

import datetime as dt
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import bson
import pytest
from bson.codec_options import CodecOptions

from twotower_pipeline.serving.journal import POSITION, JournalFull, JournalInUse, LogJournal
from twotower_pipeline.store.client import MongoStore

PRESENTED = "logging.ecosystemruntime"
RESPONSES = "logging.ecosystemruntime_response"


@pytest.fixture(scope="module")
def unreachable_uri() -> str:
    """A MongoDB URI on a port nobody listens on (credentials in it, which no error may show)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return (f"mongodb://journal:s3cret-pw@127.0.0.1:{port}/?directConnection=true&serverSelectionTimeoutMS=100"
            f"&connectTimeoutMS=100")


@pytest.fixture
def unreachable(unreachable_uri, database_prefix) -> MongoStore:
    return MongoStore(unreachable_uri, database_prefix)


@pytest.fixture
def journals():
    """LogJournal(...), closed at the end of the test even when it fails (a shipper left running would
    hold its connections to the session's server)."""
    made: list[LogJournal] = []

    def make(*args, **kwargs) -> LogJournal:
        made.append(LogJournal(*args, **kwargs))
        return made[-1]

    yield make
    for journal in made:
        journal.close(timeout_s=1.0)


def wait_for(predicate, timeout_s: float = 15.0, what: str = "the condition"):
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"{what} did not happen in {timeout_s} s"
        time.sleep(0.005)


def document(n: int, run: str = "r") -> dict:
    return {"_id": f"{run}-{n:04d}", "uuid": f"{run}-{n:04d}", "n": n, "predictor": "p",
            "date_log": dt.datetime(2024, 1, 1, 12, tzinfo=dt.timezone.utc) + dt.timedelta(seconds=n),
            "final_result": [{"rank": 1, "result": {"offer": "o1", "score": 0.5}}]}


def segments(directory) -> list[str]:
    return sorted(name for name in os.listdir(directory) if name.startswith("segment-"))


def numbers(store: MongoStore, location: str = PRESENTED) -> list[int]:
    return sorted(d["n"] for d in store.collection(location).find({}, {"n": 1}))


def test_appends_ship_exactly_once_and_shipped_segments_are_trimmed(journals, store, tmp_path):
    journal = journals(store, tmp_path / "j", segment_bytes=4096, linger_s=0.01)
    assert journal.open() == []
    for n in range(300):
        journal.append(PRESENTED, document(n))
        if n % 3 == 0:
            journal.append(RESPONSES, {**document(n), "response": {"offers_accepted": []}})
    wait_for(lambda: journal.stats()["shipped"] == 400, what="400 documents shipped")
    assert numbers(store) == list(range(300))
    assert numbers(store, RESPONSES) == list(range(0, 300, 3))
    assert store.collection(PRESENTED).find_one({"_id": "r-0007"}) == document(7)  # BSON types kept as appended
    stats = journal.stats()
    assert (stats["bytes"], stats["documents_pending"], stats["oldest_pending_age_s"]) == (0, 0, None)
    assert (stats["rejected"], stats["torn"], stats["last_error"], stats["shipper_alive"]) == (0, 0, None, True)
    # 400 records of about 200 bytes in 4 KiB segments: it rolled many times; only the one being written is left
    left = segments(tmp_path / "j")
    assert len(left) == 1 and left[0] != "segment-00000000000000000000.log" and journal.healthy
    journal.close()
    assert segments(tmp_path / "j") == [] and not journal.healthy and not journal.stats()["shipper_alive"]

    again = journals(store, tmp_path / "j")
    assert again.open() == []
    again.append(PRESENTED, document(300))
    wait_for(lambda: again.stats()["shipped"] == 1)
    again.close()
    assert numbers(store) == list(range(301)) and segments(tmp_path / "j") == []


def test_a_stale_or_lost_shipped_position_reships_without_a_duplicate(journals, store, unreachable, tmp_path):
    live, before_ship, no_position = tmp_path / "live", tmp_path / "before_ship", tmp_path / "no_position"
    offline = journals(unreachable, live, retry_s=0.05)
    offline.open()
    for n in range(50):
        offline.append(PRESENTED, document(n))
    offline.close(timeout_s=0.3)
    assert offline.stats()["documents_pending"] == 50
    shutil.copytree(live, before_ship)  # its shipped position says nothing is shipped

    journal = journals(store, live, linger_s=0.01)
    assert [d["n"] for _, d in journal.open()] == list(range(50))
    for n in range(50, 70):
        journal.append(PRESENTED, document(n))
    wait_for(lambda: journal.stats()["shipped"] == 70)
    shutil.copytree(live, no_position)  # shipped up to the end of the segment being written
    (no_position / POSITION).unlink()
    journal.close()
    assert numbers(store) == list(range(70))

    stale = journals(store, before_ship)
    assert len(stale.open()) == 50
    wait_for(lambda: stale.stats()["shipped"] == 50, what="the stale copy reshipped")
    stale.close()
    lost = journals(store, no_position)
    assert [d["n"] for _, d in lost.open()] == list(range(50, 70))
    wait_for(lambda: lost.stats()["shipped"] == 20, what="the copy without a position reshipped")
    lost.close()
    assert numbers(store) == list(range(70))  # 140 documents shipped again, not one written twice
    assert segments(before_ship) == [] and segments(no_position) == []


CHILD = r"""
import sys
from twotower_pipeline.serving.journal import LogJournal
from twotower_pipeline.store.client import MongoStore

journal = LogJournal(MongoStore(sys.argv[1], sys.argv[2]), sys.argv[3], segment_bytes=8192, retry_s=0.05)
journal.open()
n = 0
while True:
    journal.append("logging.ecosystemruntime", {"_id": f"k{n}", "n": n, "pad": "x" * 100})
    sys.stdout.write(f"k{n}\n")
    sys.stdout.flush()
    n += 1
"""


def test_every_append_acknowledged_before_a_kill_9_ships_exactly_once(journals, store, unreachable_uri,
                                                                      database_prefix, tmp_path):
    directory, errors = tmp_path / "j", tmp_path / "child.stderr"
    with open(errors, "wb") as stderr:
        child = subprocess.Popen([sys.executable, "-c", CHILD, unreachable_uri, database_prefix, str(directory)],
                                 stdout=subprocess.PIPE, stderr=stderr)
    try:
        printed = []
        while len(printed) < 400:
            line = child.stdout.readline()
            assert line, f"the child stopped: {errors.read_text()[-2000:]}"
            printed.append(line.decode().strip())
        with pytest.raises(JournalInUse, match=f"{directory}.*pid {child.pid}"):
            journals(store, directory).open()
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL
    # what the pipe still held, whole lines only: their append had returned
    printed += child.stdout.read().decode().split("\n")[:-1]
    child.stdout.close()
    assert printed == [f"k{n}" for n in range(len(printed))]

    journal = journals(store, directory, linger_s=0.01)
    recovered = journal.open()
    # every acknowledged append, and at most the one that was written but not yet acknowledged
    assert len(recovered) in (len(printed), len(printed) + 1) and journal.stats()["torn"] == 0
    assert [d["_id"] for _, d in recovered] == [f"k{n}" for n in range(len(recovered))]
    wait_for(lambda: journal.stats()["shipped"] == len(recovered))
    journal.close()
    assert numbers(store) == list(range(len(recovered)))
    assert store.collection(PRESENTED).count_documents({"_id": {"$in": printed}}) == len(printed)


def test_a_torn_tail_is_cut_off_and_the_whole_records_ship(journals, store, unreachable, tmp_path):
    directory = tmp_path / "j"
    offline = journals(unreachable, directory, retry_s=0.05)
    offline.open()
    for n in range(10):
        offline.append(PRESENTED, document(n))
    record = offline.stats()["bytes"] // 10
    offline.close(timeout_s=0.2)
    [last] = segments(directory)
    with open(directory / last, "r+b") as file:  # the last record's end never reached the disk...
        file.truncate(10 * record - 40)
        file.seek(0, os.SEEK_END)
        file.write(b"\0" * 64)  # ...and the file was extended with zeros (a machine crash on ext4)

    journal = journals(store, directory, linger_s=0.01)
    assert [d["n"] for _, d in journal.open()] == list(range(9))
    assert journal.stats()["torn"] == 1 and journal.stats()["bytes"] == 9 * record
    assert os.path.getsize(directory / last) == 9 * record
    wait_for(lambda: journal.stats()["shipped"] == 9)
    journal.close()
    assert numbers(store) == list(range(9))


def test_past_the_cap_appends_are_refused_whole_then_everything_drains(journals, store, unreachable, tmp_path):
    directory = tmp_path / "j"
    offline = journals(unreachable, directory, cap_bytes=4000, segment_bytes=1500, retry_s=0.05)
    offline.open()
    offline.append(PRESENTED, document(0))
    record = offline.stats()["bytes"]
    accepted = 4000 // record
    for n in range(1, accepted):
        offline.append(PRESENTED, document(n))
    for n in range(accepted, accepted + 3):
        with pytest.raises(JournalFull, match="not yet shipped") as refused:
            offline.append(PRESENTED, document(n))
        assert isinstance(refused.value.retry_after_s, int) and refused.value.retry_after_s >= 1
    wait_for(lambda: offline.stats()["last_error"] is not None)
    stats = offline.stats()
    assert (stats["bytes"], stats["documents_pending"], stats["refused_full"]) == (accepted * record, accepted, 3)
    assert stats["oldest_pending_age_s"] > 0 and stats["shipper_alive"] and stats["cap_bytes"] == 4000
    assert stats["last_error"].startswith("ServerSelectionTimeoutError") and "s3cret-pw" not in stats["last_error"]
    # nothing of a refused record was written, across the segments it rolled through
    assert sum(os.path.getsize(directory / name) for name in segments(directory)) == accepted * record
    assert len(segments(directory)) == stats["segments"] > 1
    offline.close(timeout_s=0.3)

    journal = journals(store, directory, linger_s=0.01)
    assert len(journal.open()) == accepted
    wait_for(lambda: journal.stats()["shipped"] == accepted)
    journal.append(PRESENTED, document(accepted))
    wait_for(lambda: journal.stats()["shipped"] == accepted + 1)
    journal.close()
    assert numbers(store) == list(range(accepted + 1)) and segments(directory) == []


class FlakyStore(MongoStore):
    """The real store, but its first `failures` collection() calls raise a plain RuntimeError."""

    def __init__(self, uri: str, database_prefix: str, failures: int):
        super().__init__(uri, database_prefix)
        self.failures = failures
        self.calls = 0

    def collection(self, location: str):
        self.calls += 1
        if self.calls <= self.failures:
            raise RuntimeError(f"injected failure {self.calls}, not a PyMongoError")
        return super().collection(location)


def test_a_non_driver_exception_is_retried_and_the_shipper_lives_on(journals, store, mongo_uri, database_prefix,
                                                                    tmp_path):
    flaky = FlakyStore(mongo_uri, database_prefix, failures=3)
    journal = journals(flaky, tmp_path / "j", retry_s=0.01)
    journal.open()
    for n in range(20):
        journal.append(PRESENTED, document(n))
    wait_for(lambda: journal.stats()["shipped"] == 20)
    stats = journal.stats()
    assert stats["last_error"] == "RuntimeError: injected failure 3, not a PyMongoError" and stats["last_error_at"]
    assert stats["shipper_alive"] and journal.healthy and flaky.calls >= 4
    journal.append(PRESENTED, document(20))
    wait_for(lambda: journal.stats()["shipped"] == 21)
    journal.close()
    assert numbers(store) == list(range(21))


@pytest.mark.parametrize("fsync", [False, True], ids=["page-cache", "fsync"])
def test_concurrent_appenders_ship_every_document_once(journals, store, tmp_path, fsync):
    journal = journals(store, tmp_path / "j", segment_bytes=8192, linger_s=0.01, fsync=fsync)
    journal.open()
    start = threading.Barrier(4)
    errors = []

    def appender(thread: int) -> None:
        start.wait()
        try:
            for n in range(thread, 1000, 4):
                journal.append(PRESENTED if n % 5 else RESPONSES, document(n))
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=appender, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    wait_for(lambda: journal.stats()["shipped"] == 1000)
    journal.close()
    assert numbers(store) == [n for n in range(1000) if n % 5]
    assert numbers(store, RESPONSES) == list(range(0, 1000, 5))
    assert segments(tmp_path / "j") == []


def test_a_document_the_server_refuses_for_good_is_set_aside(journals, store, tmp_path):
    store.database("logging").create_collection("ecosystemruntime", validator={
        "$jsonSchema": {"bsonType": "object", "properties": {"n": {"bsonType": "int"}}}})
    journal = journals(store, tmp_path / "j", linger_s=0.2, retry_s=0.01)
    journal.open()
    journal.append(PRESENTED, document(0))
    journal.append(PRESENTED, {**document(1), "n": "one"})
    journal.append(PRESENTED, document(2))
    wait_for(lambda: journal.stats()["shipped"] == 2 and journal.stats()["rejected"] == 1)
    assert journal.stats()["documents_pending"] == 0
    journal.append(PRESENTED, document(3))  # what comes after is not held up
    wait_for(lambda: journal.stats()["shipped"] == 3)
    journal.close()
    assert numbers(store) == [0, 2, 3]
    [name] = [name for name in os.listdir(tmp_path / "j") if name.startswith("rejected-")]
    with open(tmp_path / "j" / name, "rb") as file:
        [entry] = list(bson.decode_file_iter(file, codec_options=CodecOptions(tz_aware=True)))
    assert (entry["location"], entry["code"], entry["document"]) == (PRESENTED, 121, {**document(1), "n": "one"})


def test_documents_that_cannot_be_shipped_are_refused_at_append(journals, store, tmp_path):
    journal = journals(store, tmp_path / "j")
    journal.open()
    with pytest.raises(ValueError, match="cannot be encoded as BSON.*8-byte ints"):
        journal.append(PRESENTED, {"_id": "big", "n": 2 ** 64})
    with pytest.raises(ValueError, match="has no _id"):
        journal.append(PRESENTED, {"n": 1})
    with pytest.raises(ValueError, match="cannot be encoded as BSON"):
        journal.append(PRESENTED, {"_id": "set", "n": {1, 2}})
    with pytest.raises(ValueError, match="'database.collection'"):
        journal.append("ecosystemruntime", document(1))
    assert journal.stats()["bytes"] == 0
    assert os.path.getsize(tmp_path / "j" / segments(tmp_path / "j")[0]) == 0
    journal.close()
    assert numbers(store) == []


def test_a_second_journal_on_the_same_directory_is_refused(journals, store, tmp_path):
    first = journals(store, tmp_path / "j")
    first.open()
    with pytest.raises(JournalInUse, match=f"log journal {tmp_path / 'j'} is in use by another journal "
                                           f"\\(pid {os.getpid()}\\)"):
        journals(store, tmp_path / "j").open()
    first.append(PRESENTED, document(0))
    wait_for(lambda: first.stats()["shipped"] == 1)
    first.close()
    second = journals(store, tmp_path / "j")
    assert second.open() == []
    second.close()
    assert numbers(store) == [0]
