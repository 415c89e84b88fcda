"""Named fault points in the storage code, for the fault-injection tests.

A crash is only worth testing at the moments that matter (half a slice inserted, staging done but
not swapped, between the two renames of a publish, a refresh kept but not yet applied). The code
calls :func:`fault_point` at those moments; it does nothing unless `TWOTOWER_FAULT` names that
point, so a test can kill the process or the server exactly there instead of guessing with sleeps:

    TWOTOWER_FAULT="<point>:<action>[:<hit>]"   several separated by ","

Actions: `kill` (SIGKILL this process), `kill-server` (SIGKILL the embedded server, then carry
on, so the next command fails as it would on a real crash), `kill-server-during` (SIGKILL it from
another thread `$TWOTOWER_FAULT_DELAY_S` seconds later, in the middle of what comes next), `pause`
(write this pid to `$TWOTOWER_FAULT_DIR/<point>.reached` and wait until `<point>.go` exists there),
`mark` (only write the `.reached` file, as every action does first when `$TWOTOWER_FAULT_DIR` is
set) and `fail` (raise :class:`InjectedFault`).
`<hit>` (default 1) is which call of the point triggers it.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

ENV = "TWOTOWER_FAULT"
DIR_ENV = "TWOTOWER_FAULT_DIR"
_hits: dict[str, int] = {}


class InjectedFault(RuntimeError):
    """Raised at a fault point whose action is `fail`."""


def _plan() -> dict[str, tuple[str, int]]:
    plan = {}
    for item in filter(None, (part.strip() for part in os.environ.get(ENV, "").split(","))):
        point, action, *hit = item.split(":")
        plan[point] = (action, int(hit[0]) if hit else 1)
    return plan


def fault_point(name: str) -> None:
    """Act here if the test asked for a fault at `name` (see the module docstring)."""
    if ENV not in os.environ:
        return
    wanted = _plan().get(name)
    if wanted is None:
        return
    _hits[name] = _hits.get(name, 0) + 1
    action, hit = wanted
    if _hits[name] != hit:
        return
    if DIR_ENV in os.environ:  # the test can tell the point was reached, whatever the action
        reached = Path(os.environ[DIR_ENV]) / f"{name}.reached"
        written = reached.with_name(f"{reached.name}.{os.getpid()}")
        written.write_text(str(os.getpid()))
        os.replace(written, reached)  # whole: a watcher never reads it empty
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "kill-server":
        kill_embedded_server()
    elif action == "kill-server-during":
        delay = float(os.environ.get("TWOTOWER_FAULT_DELAY_S", "0.5"))
        threading.Timer(delay, kill_embedded_server).start()
    elif action == "pause":
        while not (Path(os.environ[DIR_ENV]) / f"{name}.go").exists():
            time.sleep(0.02)
    elif action == "mark":
        pass
    elif action == "fail":
        raise InjectedFault(f"fault injected at {name}")
    else:
        raise ValueError(f"{ENV}: unknown action {action!r} at {name}")


def kill_embedded_server() -> None:
    """SIGKILL the embedded server of this process's data directory and wait until it is gone."""
    from twotower_pipeline.store.embedded import EmbeddedMongo

    EmbeddedMongo().kill()
