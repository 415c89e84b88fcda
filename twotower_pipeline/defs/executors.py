"""How a run's steps get their processes. Dagster's multiprocess executor starts each step in a
fresh interpreter ("spawn") by default, and importing this project (torch, pandas, Dagster) costs
several seconds per step; a forkserver that has imported the definitions once forks each step from
that warm process instead. Nothing opens a connection or a thread at import (the MongoDB resource
connects on first use), so forking after the import is safe."""

import os

import dagster as dg

#: A Celery broker URL (e.g. pyamqp://guest:guest@127.0.0.1:5672//): every run's steps go to
#: Celery workers (`dagster-celery worker start`); unset: to processes of the run's own machine.
CELERY_BROKER_ENV = "TWOTOWER_CELERY_BROKER"

step_processes = dg.multiprocess_executor.configured(
    {"start_method": {"forkserver": {"preload_modules": ["twotower_pipeline.definitions"]}}},
    name="multiprocess_forkserver",
)


def step_executor() -> dg.ExecutorDefinition:
    """The Definitions' executor: Celery workers when TWOTOWER_CELERY_BROKER names a broker (a
    batch-scoring backfill's shard runs then score on the workers), else the run's own processes."""
    if os.environ.get(CELERY_BROKER_ENV):
        from dagster_celery import celery_executor
        return celery_executor.configured({"broker": {"env": CELERY_BROKER_ENV}, "backend": "rpc://"})
    return step_processes
