"""Batch scoring fanned out the way Dagster fans out partitions: an asset backfill of
`batch_recommendations` (a run per customer shard) and `published_recommendations`, launched
through the workbench's launcher on a real `dagster dev`, whose runs' steps go to two Celery
workers over RabbitMQ that the test starts itself (skipped, saying so, where no broker answers).
The shards' commits, counts, the publish and the workers' share are checked afterwards. The default
executor (processes of the run's machine) is the end-to-end serving test's."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
import yaml

from twotower_pipeline import offline
from twotower_pipeline.defs.assets.offline_scoring import score_shards
from twotower_pipeline.defs.executors import CELERY_BROKER_ENV
from twotower_pipeline.serving.workbench import DagsterJobs
from twotower_pipeline.store.slices import SlicedCollection
from twotower_pipeline_tests.test_automation import OPEN_GATE, _publish, _train_and_gate
from twotower_pipeline_tests.test_serving_e2e import _free_port, _shard, _start, _stop

PROJECT_ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
BROKER = os.environ.get("TWOTOWER_TEST_CELERY_BROKER", "pyamqp://guest:guest@127.0.0.1:5672//")


def _finished(home, backfill_id: str, runs: int) -> bool:
    """Whether the backfill has launched its `runs` runs and every one of them has finished."""
    with dg.DagsterInstance.from_config(str(home)) as instance:
        launched = instance.get_runs(filters=dg.RunsFilter(tags={"dagster/backfill": backfill_id}))
    return len(launched) == runs and all(run.is_finished for run in launched)


def _broker_answers() -> str | None:
    host_port = BROKER.split("@", 1)[-1].split("/", 1)[0]
    host, _, port = host_port.partition(":")
    try:
        socket.create_connection((host, int(port or 5672)), timeout=2).close()
        return None
    except OSError as error:
        return str(error)


def test_celery_workers_score_the_shards_of_a_backfill(tmp_path, trained_slice, store, mongo_uri, database_prefix):
    refused = _broker_answers()
    if refused:
        pytest.skip(f"no Celery broker answers at {BROKER.split('@', 1)[-1]} ({refused}): the Celery fan-out test "
                    "needs RabbitMQ (set TWOTOWER_TEST_CELERY_BROKER)")
    resources, _ = trained_slice
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    with dg.DagsterInstance.from_config(str(home)) as instance:
        _train_and_gate(resources, instance, "run_a", OPEN_GATE)
        _publish(resources, instance, "run_a")
    # dagster-celery's own queue ("dagster"): a task another run left there fails on its own
    name = f"twotower_test_{os.getpid()}_{int(time.time())}"
    env = {**os.environ, "DAGSTER_HOME": str(home), "MONGODB_URI": mongo_uri,
           "TWOTOWER_DATABASE_PREFIX": database_prefix, CELERY_BROKER_ENV: BROKER,
           "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    worker_config = home / "celery.yaml"
    worker_config.write_text(yaml.safe_dump({"execution": {"config": {"broker": BROKER, "backend": "rpc://"}}}))
    logs = [tmp_path / f"worker_{i}.log" for i in range(2)]
    workers = [subprocess.Popen(
        [str(BIN / "dagster-celery"), "worker", "start", "-A", "dagster_celery.app", "-y", str(worker_config),
         "-n", f"{name}_{i}@%h", "-l", "info", "--", "--concurrency", "1", "--logfile", str(log)],
        cwd=PROJECT_ROOT, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        for i, log in enumerate(logs)]
    port = _free_port()
    dagster = _start([str(BIN / "dagster"), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)], env,
                     f"http://127.0.0.1:{port}/server_info", tmp_path / "dagster-dev.log")
    try:
        jobs = DagsterJobs(store, f"http://127.0.0.1:{port}", timeout_s=60)
        job_id = jobs.launch_backfill(
            "batch_score", ["batch_recommendations", "published_recommendations"],
            {"ops": {"batch_recommendations": {"config": {"run_id": "run_a"}},
                     "published_recommendations": {"config": {"run_id": "run_a"}}}},
            run_id="run_a", request={"run_id": "run_a"})
        # the runs are what this test is about: a shard run each and the publish, all finished (the
        # backfill itself is marked complete at the daemon's next 30 s tick; the e2e test reads that)
        deadline = time.monotonic() + 420
        while not _finished(home, job_id, len(score_shards.get_partition_keys()) + 1):
            assert time.monotonic() < deadline, jobs.status(job_id)
            time.sleep(2)
        status = jobs.status(job_id)
    finally:
        _stop(dagster, must_exit=False)
        for worker in workers:
            os.killpg(worker.pid, signal.SIGTERM)
        for worker in workers:
            worker.wait(timeout=60)
    assert status["status"] in ("STARTED", "SUCCESS"), (status, (tmp_path / "dagster-dev.log").read_text()[-3000:])
    shards = score_shards.get_partition_keys()
    n_customers = len(trained_slice[1].logs.customer_features)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        runs = instance.get_runs(filters=dg.RunsFilter(tags={"dagster/backfill": job_id}))
        assert {r.status for r in runs} == {dg.DagsterRunStatus.SUCCESS}
        materialised = {
            _shard(r): instance.all_logs(r.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION)
            for r in runs if _shard(r)}
    assert sorted(materialised) == shards and len(runs) == len(shards) + 1
    location = offline.scores_publisher(store, shards).run_location("scores", "run_a")
    committed = SlicedCollection(store, location).committed_slices()
    rows = {shard: events[0].asset_materialization.metadata["dagster/row_count"].value
            for shard, events in materialised.items()}
    assert {shard: committed[shard]["rows"] for shard in shards} == rows
    assert sum(rows.values()) == n_customers
    assert offline.scores_publisher(store, shards).live_run_id() == "run_a"
    done = {i: [line for line in log.read_text().splitlines() if "execute_plan" in line and "succeeded" in line]
            for i, log in enumerate(logs)}
    # every step of the backfill's runs went through the workers: a shard each, and the publish
    assert sum(map(len, done.values())) >= len(shards) + 1, done
