"""Backfills of flatten partitions from the command line, as an operator runs them: a range in one
run, single days one run each, a day re-run after late responses, a range of quiet days; exact
counts afterwards, on the real server and a real Dagster instance."""

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg

from twotower_pipeline.store import names
from twotower_pipeline.store.slices import SlicedCollection
from twotower_pipeline_tests.runtime_docs import DAY, presented, response

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SELECT = "logging/ecosystemruntime_flatten,logging/ecosystemruntime_flatten_quarantine"


def _cli(home: Path, mongo_uri: str, database_prefix: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DAGSTER_HOME": str(home), "MONGODB_URI": mongo_uri,
           "TWOTOWER_DATABASE_PREFIX": database_prefix}
    return subprocess.run([str(Path(sys.executable).parent / "dagster"), "asset", "materialize", "-m",
                           "twotower_pipeline.definitions", "--select", SELECT, *args],
                          cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_cli_backfills_a_range_in_one_run_rewrites_a_day_and_materialises_quiet_days_empty(
        tmp_path, mongo_uri, database_prefix, store):
    second = DAY + dt.timedelta(days=1, hours=8)
    store.collection(names.PRESENTED).insert_many([
        presented("r1", offers=("a", "b", "c")), presented("r2", customer="c2", offers=("b", "c")),
        presented("r3", offers=("a", "c"), when=second)])
    store.collection(names.RESPONSES).insert_many([response("r1", accepted=("b",))])
    home = tmp_path / "home"
    home.mkdir()

    ran = _cli(home, mongo_uri, database_prefix, "--partition-range", "2024-03-04...2024-03-06")
    assert ran.returncode == 0, ran.stderr[-3000:]
    flatten = SlicedCollection(store, names.FLATTEN)
    slices = flatten.record()["slices"]
    assert {day: slices[day]["rows"] for day in ("2024-03-04", "2024-03-05", "2024-03-06")} == {
        "2024-03-04": 0, "2024-03-05": 5, "2024-03-06": 2}
    with dg.DagsterInstance.from_config(str(home)) as instance:
        runs = instance.get_runs()
        assert len(runs) == 1 and runs[0].status == dg.DagsterRunStatus.SUCCESS
        assert runs[0].tags["dagster/asset_partition_range_start"] == "2024-03-04"

    # late responses for the second day: that day alone is run again, twice, and rewritten whole
    store.collection(names.RESPONSES).insert_one(response("r3", accepted=("a", "c"), when=second))
    for _ in range(2):
        again = _cli(home, mongo_uri, database_prefix, "--partition", "2024-03-06")
        assert again.returncode == 0, again.stderr[-3000:]
    frame = flatten.read()
    assert len(frame) == 7 and frame.duplicated(["uuid", "offer"]).sum() == 0
    assert frame.groupby("uuid")["accepted"].sum().to_dict() == {"r1": 1, "r2": 0, "r3": 2}

    # a range of days without any logs materialises, empty
    quiet = _cli(home, mongo_uri, database_prefix, "--partition-range", "2024-03-10...2024-03-12")
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    slices = flatten.record()["slices"]
    assert [slices[d]["rows"] for d in ("2024-03-10", "2024-03-11", "2024-03-12")] == [0, 0, 0]
    assert len(flatten.read()) == 7
    with dg.DagsterInstance.from_config(str(home)) as instance:
        statuses = [r.status for r in instance.get_runs()]
        assert statuses == [dg.DagsterRunStatus.SUCCESS] * 4
