"""Which process is which: a pid alone is not an identity, since the kernel reuses pids.

A process is named by host, pid and its start time (clock ticks since boot, from /proc), so a
lease or a server state file left by a killed process is recognised as dead even when a new
process got the same pid.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path


def start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot; None if there is no such process."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] == "Z":  # exited, not yet reaped
        return None
    return int(fields[19])


def identity(pid: int | None = None) -> dict:
    """`{host, pid, started}` of this process (or of `pid`)."""
    pid = os.getpid() if pid is None else pid
    return {"host": socket.gethostname(), "pid": pid, "started": start_ticks(pid)}


def is_alive(owner: dict) -> bool | None:
    """True/False for a process of this host; None when it lives elsewhere (cannot be told)."""
    if owner.get("host") != socket.gethostname():
        return None
    pid = owner.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    _reap(pid)
    started = start_ticks(pid)
    if started is None:
        return False
    return owner.get("started") in (None, started)


def _reap(pid: int) -> None:
    """A child of ours that exited lingers as a zombie until waited for."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
