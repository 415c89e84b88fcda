"""The embedded MongoDB default: one SecantusDB server process per data directory.

SecantusDB (GPL-2.0) speaks the MongoDB wire protocol on WiredTiger. It is started as a separate
process and reached with pymongo only. Dagster runs every run and step in its own process, so the
server is shared: a file lock serialises start-up and a state file records the port of the server
that owns the directory. The server outlives the process that started it; `stop()` ends it.
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
from pathlib import Path

import pymongo

HOST = "127.0.0.1"
SERVER_COMMAND = "secantusd-py"
START_TIMEOUT_S = 60.0


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
            with contextlib.suppress(ProcessLookupError):
                os.kill(state["pid"], signal.SIGTERM)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and _pid_alive(state["pid"]):
                time.sleep(0.1)
            if _pid_alive(state["pid"]):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(state["pid"], signal.SIGKILL)
            self.state_file.unlink(missing_ok=True)
            return True

    @contextlib.contextmanager
    def _locked(self):
        with open(self.lock_file, "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _live_state(self) -> dict | None:
        try:
            state = json.loads(self.state_file.read_text())
        except (FileNotFoundError, ValueError):
            return None
        if _pid_alive(state.get("pid", -1)) and _ping(state["port"], timeout_ms=2000):
            return state
        return None

    def _start(self) -> dict:
        executable = _server_executable()
        self.storage_path.mkdir(parents=True, exist_ok=True)
        # An empty config file stops the server from auto-discovering a stray secantusd.toml.
        config = self.data_dir / "secantusd.toml"
        if not config.exists():
            config.write_text("# settings come from the command line\n")
        last_error = ""
        for _attempt in range(3):
            port = _free_port()
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
                    state = {"pid": process.pid, "port": port, "storage_path": str(self.storage_path)}
                    self.state_file.write_text(json.dumps(state))
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


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a server this process started and that has exited lingers as a zombie until reaped
        reaped, _ = os.waitpid(pid, os.WNOHANG)
        return reaped == 0
    except ChildProcessError:
        pass
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _ping(port: int, timeout_ms: int) -> bool:
    client = pymongo.MongoClient(
        HOST, port, serverSelectionTimeoutMS=timeout_ms, connectTimeoutMS=timeout_ms, directConnection=True
    )
    try:
        client.admin.command("ping")
        return True
    except pymongo.errors.PyMongoError:
        return False
    finally:
        client.close()
