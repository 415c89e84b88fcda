"""The embedded server is one process per data directory, whoever asks for it."""

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pymongo

from twotower_pipeline.store import processes
from twotower_pipeline.store.embedded import EmbeddedMongo

ASK_FOR_URI = (
    "import sys; from twotower_pipeline.store.embedded import EmbeddedMongo; print(EmbeddedMongo(sys.argv[1]).uri())"
)


def _uri_from_another_process(data_dir) -> str:
    out = subprocess.run([sys.executable, "-c", ASK_FOR_URI, str(data_dir)], check=True, capture_output=True, text=True)
    return out.stdout.strip()


def test_processes_asking_at_once_share_one_server(tmp_path):
    server = EmbeddedMongo(tmp_path)
    try:
        with ThreadPoolExecutor(3) as pool:
            uris = list(pool.map(lambda _: _uri_from_another_process(tmp_path), range(3)))
        assert len(set(uris)) == 1
        assert uris[0].startswith("mongodb://127.0.0.1:")
        assert server.running_uri() == uris[0]
        # data written through one client is there for the next process's client
        client = pymongo.MongoClient(uris[0], directConnection=True)
        client.probe.items.insert_one({"k": 1})
        assert _uri_from_another_process(tmp_path) == uris[0]
        assert client.probe.items.count_documents({"k": 1}) == 1
    finally:
        assert server.stop() is True
    assert server.running_uri() is None
    assert server.stop() is False


def test_data_survives_a_restart_and_a_stale_state_file_is_replaced(tmp_path):
    server = EmbeddedMongo(tmp_path)
    try:
        first = server.uri()
        pymongo.MongoClient(first, directConnection=True).probe.items.insert_one({"k": "kept"})
        server.stop()
        # a state file left behind by a killed server must not be trusted
        server.state_file.write_text(json.dumps({"pid": 999_999, "port": 1}))
        second = server.uri()
        assert pymongo.MongoClient(second, directConnection=True).probe.items.find_one({"k": "kept"}) is not None
    finally:
        server.stop()


def test_server_binds_to_loopback_only(tmp_path):
    server = EmbeddedMongo(tmp_path)
    try:
        assert server.uri().startswith("mongodb://127.0.0.1:")
        state = json.loads(server.state_file.read_text())
        args = open(f"/proc/{state['pid']}/cmdline").read().split("\0")
        assert args[args.index("--host") + 1] == "127.0.0.1"
    finally:
        server.stop()


def test_a_state_file_whose_pid_and_port_now_belong_to_others_is_not_trusted(tmp_path):
    other = EmbeddedMongo(tmp_path / "other")
    mine = EmbeddedMongo(tmp_path / "mine")
    try:
        other_uri = other.uri()
        other_state = json.loads(other.state_file.read_text())
        pymongo.MongoClient(other_uri, directConnection=True).probe.items.insert_one({"k": "other's"})
        mine.data_dir.mkdir(parents=True)
        # the recorded pid is alive but is another process now (this one), and the recorded port
        # is served by another project's server
        mine.state_file.write_text(json.dumps({**processes.identity(), "port": other_state["port"], "token": "t0"}))
        uri = mine.uri()
        assert uri != other_uri
        assert pymongo.MongoClient(uri, directConnection=True).probe.items.find_one() is None
        # the same when the pid is the other server's own but the token is not ours
        mine.stop()
        mine.state_file.write_text(json.dumps({**other_state, "token": "not-ours"}))
        assert mine.uri() != other_uri
        assert other.running_uri() == other_uri  # and the other server was left alone
    finally:
        mine.stop()
        other.stop()
