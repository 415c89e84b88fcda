"""The embedded MongoDB default: one SecantusDB server process per data directory.

SecantusDB (GPL-2.0) speaks the MongoDB wire protocol on WiredTiger. It is started as a separate
process and reached with pymongo only. Dagster runs every run and step in its own process, so the
server is shared: a file lock serialises start-up and a state file records the port of the server
that owns the directory. The server outlives the process that started it; `stop()` ends it.

The state file is not trusted on its word: a pid can be reused by another process and a port by
another server. A server is "ours" only if the pid is still the process that was started (same
start time), and the server on the port holds the identity token written when it was started.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pymongo

from twotower_pipeline.store import processes

HOST = "127.0.0.1"
SERVER_COMMAND = "secantusd-py"
START_TIMEOUT_S = 60.0
#: Where a started server records the token that proves which server it is.
IDENTITY_DATABASE = "twotower_embedded"


def default_data_dir() -> Path:
    """`TWOTOWER_EMBEDDED_DIR`, else `.twotower/mongodb` under the project root (or cwd)."""
    configured = os.environ.get("TWOTOWER_EMBEDDED_DIR")
    if configured:
        return Path(configured).expanduser().resolve()
    package_root = Path(__file__).resolve().parents[2]
    base = package_root if (package_root / "pyproject.toml").exists() else Path.cwd()
    return base / ".twotower" / "mongodb"


class EmbeddedMongo:
    """Start (or find) the server for one data directory and hand out its URI."""

    def __init__(self, data_dir: str | os.PathLike | None = None):
        self.data_dir = Path(data_dir).expanduser().resolve() if data_dir else default_data_dir()
        self.state_file = self.data_dir / "server.json"
        self.lock_file = self.data_dir / "server.lock"
        self.log_file = self.data_dir / "server.log"

    @property
    def storage_path(self) -> Path:
        return self.data_dir / "wiredtiger"

    def uri(self) -> str:
        """The URI of the running server, starting it if no live one owns the directory."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with self._locked():
            state = self._live_state()
            if state is None:
                state = self._start()
        return f"mongodb://{HOST}:{state['port']}/"

    def running_uri(self) -> str | None:
        """The URI of a live server, or None; never starts one."""
        if not self.state_file.exists():
            return None
        with self._locked():
            state = self._live_state()
        return f"mongodb://{HOST}:{state['port']}/" if state else None

    def stop(self) -> bool:
        """Stop the server that owns the directory; True if one was running."""
        if not self.data_dir.exists():
            return False
        with self._locked():
            state = self._live_state()
            if state is None:
                self.state_file.unlink(missing_ok=True)
                return False
            _signal_and_wait(state, signal.SIGTERM, 20)
            if processes.is_alive(_owner(state)):
                _signal_and_wait(state, signal.SIGKILL, 20)
            self.state_file.unlink(missing_ok=True)
            return True

    def kill(self) -> bool:
        """SIGKILL the server (a crash, for the fault-injection tests); the state file stays, as a
        real crash would leave it. True if one was running."""
        try:
            state = json.loads(self.state_file.read_text())
        except (FileNotFoundError, ValueError):
            return False
        if not processes.is_alive(_owner(state)):
            return False
        _signal_and_wait(state, signal.SIGKILL, 20)
        return True

    @contextlib.contextmanager
    def _locked(self):
        with open(self.lock_file, "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _state(self) -> dict | None:
        try:
            return json.loads(self.state_file.read_text())
        except (FileNotFoundError, ValueError):
            return None

    def _live_state(self) -> dict | None:
        """The recorded server if it is still that server: same process, and the token it was
        given at start-up is what the server on the port holds."""
        state = self._state()
        if not state or not processes.is_alive(_owner(state)):
            return None
        if "token" not in state:  # written before tokens: adopt the server if it is ours by its command line
            return self._adopt(state)
        if _identity_token(state.get("port", 0), timeout_ms=2000) != state["token"]:
            return None
        return state

    def _adopt(self, state: dict) -> dict | None:
        try:
            arguments = Path(f"/proc/{state['pid']}/cmdline").read_text().split("\0")
        except OSError:
            return None
        if str(self.storage_path) not in arguments or not _ping(state.get("port", 0), timeout_ms=2000):
            return None
        state = {**processes.identity(state["pid"]), "port": state["port"], "token": uuid.uuid4().hex,
                 "storage_path": str(self.storage_path)}
        _write_identity(state["port"], state["token"])
        self._save(state)
        return state

    def _save(self, state: dict) -> None:
        temporary = self.state_file.with_suffix(".tmp")
        temporary.write_text(json.dumps(state))
        temporary.replace(self.state_file)

    def _previous_port(self) -> int | None:
        """The port the last server of this directory had (its state file outlives a crash)."""
        try:
            port = json.loads(self.state_file.read_text()).get("port")
        except (FileNotFoundError, ValueError, AttributeError):
            return None
        return port if isinstance(port, int) and 0 < port < 65536 else None

    def _start(self) -> dict:
        executable = _server_executable()
        self.storage_path.mkdir(parents=True, exist_ok=True)
        # An empty config file stops the server from auto-discovering a stray secantusd.toml.
        config = self.data_dir / "secantusd.toml"
        if not config.exists():
            config.write_text("# settings come from the command line\n")
        last_error = ""
        # a server that crashed comes back on its old port when that is free, so the clients of a
        # running service (`twotower serve`, a `dagster dev`) find it again without a restart
        previous = self._previous_port()
        for attempt in range(3):
            port = previous if attempt == 0 and previous and _port_free(previous) else _free_port()
            with open(self.log_file, "ab") as log:
                process = subprocess.Popen(
                    [
                        executable,
                        "--config",
                        str(config),
                        "--host",
                        HOST,
                        "--port",
                        str(port),
                        "--storage-path",
                        str(self.storage_path),
                        "--log-level",
                        "WARNING",
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                    cwd=self.data_dir,
                )
            deadline = time.monotonic() + START_TIMEOUT_S
            while time.monotonic() < deadline:
                if process.poll() is not None:
                    last_error = f"exited with code {process.returncode}"
                    break
                if _ping(port, timeout_ms=500):
                    state = {**processes.identity(process.pid), "port": port, "token": uuid.uuid4().hex,
                             "storage_path": str(self.storage_path)}
                    _write_identity(port, state["token"])
                    self._save(state)
                    return state
                time.sleep(0.1)
            else:
                process.kill()
                last_error = f"did not answer within {START_TIMEOUT_S:.0f}s"
        raise RuntimeError(f"the embedded MongoDB server ({executable}) {last_error}; see {self.log_file}")


def _server_executable() -> str:
    beside_python = Path(sys.executable).parent / SERVER_COMMAND
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which(SERVER_COMMAND)
    if not found:
        raise RuntimeError(
            f"`{SERVER_COMMAND}` was not found: install the project (it depends on SecantusDB) "
            "or set MONGODB_URI to use an existing MongoDB"
        )
    return found


def _port_free(port: int) -> bool:
    """Nothing listens on it (connections of a killed server left in TIME_WAIT do not count: the
    server binds with SO_REUSEADDR too)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
        return True


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _owner(state: dict) -> dict:
    """The server's process as `processes.is_alive` takes it (this host: the server is local)."""
    return {"host": socket.gethostname(), "pid": state.get("pid", -1), "started": state.get("started")}


def _signal_and_wait(state: dict, signum: int, timeout_s: float) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(state["pid"], signum)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and processes.is_alive(_owner(state)):
        time.sleep(0.05)


def _client(port: int, timeout_ms: int) -> pymongo.MongoClient:
    return pymongo.MongoClient(
        HOST, port, serverSelectionTimeoutMS=timeout_ms, connectTimeoutMS=timeout_ms, directConnection=True
    )


def _write_identity(port: int, token: str) -> None:
    client = _client(port, 5000)
    try:
        client[IDENTITY_DATABASE]["server"].replace_one({"_id": "identity"}, {"token": token}, upsert=True)
    finally:
        client.close()


def _identity_token(port: int, timeout_ms: int) -> str | None:
    """The token of the server answering on `port`; None if none answers or it has none."""
    client = _client(port, timeout_ms)
    try:
        document = client[IDENTITY_DATABASE]["server"].find_one({"_id": "identity"})
        return document.get("token") if document else None
    except pymongo.errors.PyMongoError:
        return None
    finally:
        client.close()


def _ping(port: int, timeout_ms: int) -> bool:
    client = _client(port, timeout_ms)
    try:
        client.admin.command("ping")
        return True
    except pymongo.errors.PyMongoError:
        return False
    finally:
        client.close()
