"""`make demo` on an existing MongoDB (MONGODB_URI set), the README's own path."""

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg

from twotower_pipeline.store import embeddings


def test_the_demo_runs_end_to_end_on_the_server_named_by_mongodb_uri(tmp_path, mongo_uri, database_prefix, store):
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {**os.environ, "MONGODB_URI": mongo_uri, "TWOTOWER_DATABASE_PREFIX": database_prefix,
           "TWOTOWER_DATA_DIR": str(tmp_path / "no-public-data"), "TWOTOWER_DEMO_REQUESTS": "1500",
           "DAGSTER_HOME": str(home), "TWOTOWER_EMBEDDED_DIR": str(tmp_path / "never-started")}
    demo = subprocess.run([str(Path(sys.executable).parent / "twotower"), "demo"], env=env, capture_output=True,
                          text=True, timeout=600)
    assert demo.returncode == 0, demo.stderr[-3000:]
    assert f"MongoDB at {mongo_uri}" in demo.stdout
    assert "summary" in demo.stdout and "embeddings:" in demo.stdout and "recommendations:" in demo.stdout
    assert "publish gate passed" in demo.stdout
    assert not (tmp_path / "never-started").exists()  # no embedded server was started
    live = embeddings.Publisher(store).status()["live_run_id"]
    assert live and embeddings.Publisher(store).verify().problems() == []
    with dg.DagsterInstance.from_config(str(home)) as instance:
        runs = instance.get_runs()
        assert len(runs) == 4 and {r.status for r in runs} == {dg.DagsterRunStatus.SUCCESS}
