"""The Dagster UI's server shows the assets with their partitions, metadata and checks.

A real `dagster-webserver` process loads `workspace.yaml` against an instance in which the flatten
asset was materialised; the test asks it what the UI asks it, over its GraphQL endpoint.
"""

import json
import os
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
        "accept_rate_between_0_and_1",
        "rejected_share_below_threshold",
    }
