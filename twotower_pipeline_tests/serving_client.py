"""Clients of the serving app for tests: the service is closed by default (a key per group of
endpoints, a Host allowlist), so a test's client sends each request's key unless it names one."""

from __future__ import annotations

import tempfile

from fastapi.testclient import TestClient

from twotower_pipeline.serving.guard import RUNTIME, WORKBENCH, key_group
from twotower_pipeline.serving.settings import ServeSettings

RUNTIME_KEY = "test-runtime-key"
WORKBENCH_KEY = "test-workbench-key"
KEYS = {RUNTIME: RUNTIME_KEY, WORKBENCH: WORKBENCH_KEY}
#: The Host header of fastapi's TestClient.
TEST_HOST = "testserver"


def keyed_settings(**settings) -> ServeSettings:
    """ServeSettings with the tests' keys and TestClient's host allowed, and a log journal of the
    app's own (the default one in the working directory would carry one test's unshipped documents
    into the next test's database); `settings` override them."""
    if "journal_dir" not in settings:
        settings["journal_dir"] = tempfile.mkdtemp(prefix="twotower-test-journal-")
    return ServeSettings(**{"runtime_key": RUNTIME_KEY, "workbench_key": WORKBENCH_KEY,
                            "allowed_hosts": (TEST_HOST, "127.0.0.1", "localhost"), **settings})


def keyed_client(app, **kwargs) -> TestClient:
    """A TestClient that sends the key of each request's group, unless the request sends its own."""
    def add_key(request):
        group = key_group(request.method, request.url.path)
        if group is not None and "x-api-key" not in request.headers:
            request.headers["X-API-Key"] = KEYS[group]

    client = TestClient(app, **kwargs)
    client.event_hooks = {"request": [add_key], "response": []}
    return client
