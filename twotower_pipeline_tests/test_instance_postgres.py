"""The production instance: Dagster's run, event-log and schedule storage on PostgreSQL, selected
by TWOTOWER_DAGSTER_POSTGRES_URL, used by the command line as an operator would. Needs a
PostgreSQL server (TWOTOWER_TEST_POSTGRES_URL, default the local one with trust auth); the test is
skipped, saying so, where none answers."""

import os
import subprocess
import sys
import uuid
from pathlib import Path

import dagster as dg
import pytest

from twotower_pipeline.store import names
from twotower_pipeline.store.slices import SlicedCollection
from twotower_pipeline_tests.runtime_docs import presented, response

psycopg2 = pytest.importorskip("psycopg2")

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SERVER_URL = os.environ.get("TWOTOWER_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


@pytest.fixture
def postgres_url():
    """A fresh database on the server, dropped afterwards; its URL."""
    try:
        admin = psycopg2.connect(SERVER_URL, connect_timeout=3)
    except psycopg2.OperationalError as error:
        pytest.skip(f"PostgreSQL does not answer at {SERVER_URL.rsplit('@', 1)[-1]} ({str(error).strip()}): "
                    "the production-instance test needs one (set TWOTOWER_TEST_POSTGRES_URL)")
    admin.autocommit = True
    name = f"twotower_test_{uuid.uuid4().hex[:10]}"
    with admin.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}"')
    try:
        yield SERVER_URL.rsplit("/", 1)[0] + "/" + name
    finally:
        with admin.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.close()


def _dagster(home, env, *args):
    return subprocess.run([str(Path(sys.executable).parent / "dagster"), *args, "-m", "twotower_pipeline.definitions"],
                          cwd=PROJECT_ROOT, env={**os.environ, "DAGSTER_HOME": str(home), **env},
                          capture_output=True, text=True, timeout=300)


def test_runs_events_and_schedules_are_stored_in_postgres(tmp_path, postgres_url, mongo_uri, database_prefix, store,
                                                          monkeypatch):
    store.collection(names.PRESENTED).insert_many([presented("r1"), presented("r2", customer="c2")])
    store.collection(names.RESPONSES).insert_one(response("r1", accepted=("b",)))
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text((PROJECT_ROOT / "twotower_pipeline/instance/dagster_postgres.yaml").read_text())
    # SQLAlchemy's form of the URL, with the driver dagster-postgres installs (psycopg2)
    dagster_url = postgres_url.replace("postgresql://", "postgresql+psycopg2://", 1)
    env = {"TWOTOWER_DAGSTER_POSTGRES_URL": dagster_url, "MONGODB_URI": mongo_uri,
           "TWOTOWER_DATABASE_PREFIX": database_prefix}

    ran = _dagster(home, env, "asset", "materialize", "--select",
                   "logging/ecosystemruntime_flatten,logging/ecosystemruntime_flatten_quarantine",
                   "--partition", "2024-03-05")
    assert ran.returncode == 0, ran.stderr[-3000:]
    started = _dagster(home, env, "schedule", "start", "weekly_retrain_schedule")
    assert started.returncode == 0, started.stderr[-3000:]
    assert len(SlicedCollection(store, names.FLATTEN).read()) == 6

    monkeypatch.setenv("TWOTOWER_DAGSTER_POSTGRES_URL", dagster_url)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert [type(s).__name__ for s in (instance.run_storage, instance.event_log_storage,
                                           instance.schedule_storage)] == [
            "PostgresRunStorage", "PostgresEventLogStorage", "PostgresScheduleStorage"]
        [run] = instance.get_runs()
        assert run.status == dg.DagsterRunStatus.SUCCESS and run.tags["dagster/partition"] == "2024-03-05"
        event = instance.get_latest_materialization_event(dg.AssetKey(["logging", "ecosystemruntime_flatten"]))
        assert event.run_id == run.run_id and event.asset_materialization.metadata["exposures"].value == 6
        states = {s.instigator_name: s.status.value for s in instance.all_instigator_state()}
        assert states == {"weekly_retrain_schedule": "RUNNING"}
    # and it is PostgreSQL that holds them, not a file beside the instance config
    with psycopg2.connect(postgres_url) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM runs")
        assert cursor.fetchone()[0] == 1
        cursor.execute("SELECT count(*) FROM event_logs WHERE dagster_event_type = 'ASSET_MATERIALIZATION'")
        assert cursor.fetchone()[0] >= 1
    assert not list(home.rglob("*.db"))
