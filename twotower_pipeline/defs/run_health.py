"""Runs executed in a plain Python process (`make demo`, the CLI) have no run worker that Dagster's
run monitoring could watch: if that process is killed, the run would stay STARTED forever. Such
runs carry their process's identity as a tag; a run whose process is gone is marked failed, at the
next demo start and by a sensor while the daemon runs (`make ui`). Runs launched from the UI are
watched by Dagster itself (run monitoring is on in the instance config the Makefile writes)."""

from __future__ import annotations

import json

import dagster as dg

from twotower_pipeline.store import processes

PROCESS_TAG = "twotower/process"


def in_process_tags() -> dict[str, str]:
    """Tags for a run executed in this process."""
    return {PROCESS_TAG: json.dumps(processes.identity(), sort_keys=True)}


def fail_orphaned_runs(instance: dg.DagsterInstance) -> list[str]:
    """Mark failed every started run whose process (on this host) no longer exists; their ids."""
    failed = []
    runs = instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED,
                                                             dg.DagsterRunStatus.STARTING]))
    for run in runs:
        tag = run.tags.get(PROCESS_TAG)
        if not tag:
            continue
        try:
            owner = json.loads(tag)
        except ValueError:
            continue
        if processes.is_alive(owner) is False:
            instance.report_run_failed(
                run, message=f"the process that ran it (pid {owner.get('pid')} on {owner.get('host')}) is gone"
            )
            failed.append(run.run_id)
    return failed


@dg.sensor(minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING,
           description="Marks failed the runs whose Python process was killed (demo and CLI runs).")
def orphaned_runs_sensor(context: dg.SensorEvaluationContext):
    failed = fail_orphaned_runs(context.instance)
    if failed:
        return dg.SkipReason(f"marked {len(failed)} orphaned run(s) failed: {', '.join(failed)}")
    return dg.SkipReason("no started run has lost its process")
