"""The Dagster UI's server shows the assets with their partitions, metadata and checks.

A real `dagster-webserver` process loads `workspace.yaml` against an instance in which the flatten
asset was materialised; the test asks it what the UI asks it, over its GraphQL endpoint.
"""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import dagster as dg
import pytest

from twotower_pipeline.definitions import build_resources, defs
from twotower_pipeline.store import names
from twotower_pipeline.store.slices import SlicedCollection
from twotower_pipeline_tests.runtime_docs import presented, response

PROJECT_ROOT = Path(__file__).resolve().parents[1]

QUERY = """
query ($path: [String!]!) {
  assetNodeOrError(assetKey: {path: $path}) {
    ... on AssetNode {
      description
      groupName
      partitionDefinition { description }
      partitionKeysByDimension { partitionKeys }
      assetMaterializations(limit: 5) {
        partition
        metadataEntries { label ... on IntMetadataEntry { intValue } ... on FloatMetadataEntry { floatValue } }
      }
      assetChecksOrError { ... on AssetChecks { checks { name } } }
    }
  }
}
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _graphql(port: int, query: str, variables: dict) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query, "variables": variables}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as reply:
        return json.loads(reply.read())


@pytest.fixture
def webserver(tmp_path, mongo_uri, database_prefix, mongo, store):
    (tmp_path / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    store.collection(names.PRESENTED).insert_many([presented("r1"), presented("r2", customer="c2")])
    store.collection(names.RESPONSES).insert_one(response("r1", accepted=("b",)))
    instance = dg.DagsterInstance.from_config(str(tmp_path))
    result = dg.materialize(
        list(defs.assets),
        instance=instance,
        resources=build_resources(mongo),
        partition_key="2024-03-05",
        selection=[
            dg.AssetKey(["logging", "ecosystemruntime_flatten"]),
            dg.AssetKey(["logging", "ecosystemruntime_flatten_quarantine"]),
        ],
    )
    assert result.success
    port = _free_port()
    env = {
        **os.environ,
        "DAGSTER_HOME": str(tmp_path),
        "MONGODB_URI": mongo_uri,
        "TWOTOWER_DATABASE_PREFIX": database_prefix,
    }
    process = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "dagster-webserver"),
            "-w",
            "workspace.yaml",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=5)
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"dagster-webserver did not start: {process.stderr.read().decode()[-2000:]}")
            time.sleep(0.5)
    yield port
    process.terminate()
    process.wait(timeout=30)


def test_ui_shows_flatten_partitions_metadata_and_checks(webserver):
    reply = _graphql(webserver, QUERY, {"path": ["logging", "ecosystemruntime_flatten"]})
    node = reply["data"]["assetNodeOrError"]
    assert node["groupName"] == "runtime_logs"
    assert "Daily" in node["partitionDefinition"]["description"]
    keys = node["partitionKeysByDimension"][0]["partitionKeys"]
    assert keys[0] == "1997-09-01" and "2024-03-05" in keys
    [materialization] = node["assetMaterializations"]
    assert materialization["partition"] == "2024-03-05"
    metadata = {e["label"]: e.get("intValue", e.get("floatValue")) for e in materialization["metadataEntries"]}
    assert metadata["exposures"] == 6 and metadata["accepted"] == 1
    assert {c["name"] for c in node["assetChecksOrError"]["checks"]} == {
        "schema",
        "no_null_keys",
        "has_accepts",
        "rejected_share_below_threshold",
    }


LAUNCH = """
mutation ($params: ExecutionParams!) {
  launchPipelineExecution(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
  }
}
"""
LOCATION = "{ workspaceOrError { ... on Workspace { locationEntries { name } } } }"
STATUS = "query ($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }"


def _wait(what, timeout=180):
    deadline = time.monotonic() + timeout
    while not (found := what()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)
    return found


@contextlib.contextmanager
def dagster_dev(tmp_path, mongo_uri, database_prefix, **extra_env):
    """`dagster dev` on the project's instance config with MONGODB_URI set (the UI's path to an
    existing MongoDB); yields (port, code location name) once the workspace has loaded."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text((PROJECT_ROOT / "twotower_pipeline/instance/dagster.yaml").read_text())
    port = _free_port()
    env = {**os.environ, "DAGSTER_HOME": str(home), "MONGODB_URI": mongo_uri,
           "TWOTOWER_DATABASE_PREFIX": database_prefix, **extra_env}
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "dagster"), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p",
         str(port)], cwd=PROJECT_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    try:
        def location():
            try:
                entries = _graphql(port, LOCATION, {})["data"]["workspaceOrError"]["locationEntries"]
            except OSError:
                return None
            return entries[0]["name"] if entries else None

        yield port, _wait(location)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:  # a loaded machine: its shutdown is not what a test checks
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=60)


def test_a_run_launched_from_the_ui_and_killed_is_marked_failed(tmp_path, mongo_uri, database_prefix, store):
    """`dagster dev` on the project's instance config, with MONGODB_URI set (the UI's path to an
    existing MongoDB): a run launched from the UI is killed with SIGKILL mid-write; Dagster marks it
    failed, and the slice it was writing is untouched."""
    store.collection(names.PRESENTED).insert_many([presented("r1"), presented("r2", customer="c2")])
    with dagster_dev(tmp_path, mongo_uri, database_prefix, TWOTOWER_FAULT="slice.inserted_batch:pause",
                     TWOTOWER_FAULT_DIR=str(tmp_path)) as (port, name):
        params = {"selector": {"repositoryLocationName": name, "repositoryName": "__repository__",
                               "jobName": "flatten_job"},
                  "runConfigData": {}, "mode": "default",
                  "executionMetadata": {"tags": [{"key": "dagster/partition", "value": "2024-03-05"}]}}
        launched = _graphql(port, LAUNCH, {"params": params})["data"]["launchPipelineExecution"]
        assert launched["__typename"] == "LaunchRunSuccess", launched
        run_id = launched["run"]["runId"]
        reached = tmp_path / "slice.inserted_batch.reached"
        _wait(reached.exists)
        step = int(reached.read_text())
        worker = int(Path(f"/proc/{step}/stat").read_text().rsplit(")", 1)[1].split()[1])  # the step's parent
        os.kill(worker, signal.SIGKILL)
        os.kill(step, signal.SIGKILL)

        def ended():
            status = _graphql(port, STATUS, {"id": run_id})["data"]["runOrError"]["status"]
            return status if status in ("SUCCESS", "FAILURE", "CANCELED") else None

        assert _wait(ended) == "FAILURE"
        record = SlicedCollection(store, names.FLATTEN).record() or {}
        assert record.get("slices", {}) == {}  # nothing of the killed write was committed
        assert SlicedCollection(store, names.FLATTEN).read().empty
