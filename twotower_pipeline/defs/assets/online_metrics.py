"""Online evaluation: what customers did with each run's offers, one day at a time, and for each
experiment the challenger against the champion (`twotower_pipeline.online`)."""

import base64

import dagster as dg
import pandas as pd
from pydantic import Field

from twotower_pipeline import experiments, online
from twotower_pipeline.defs.assets import OWNERS
from twotower_pipeline.defs.assets.runtime_logs import FLATTEN_KEY
from twotower_pipeline.defs.partitions import daily_partitions
from twotower_pipeline.defs.resources import MongoResource
from twotower_pipeline.model import sequential
from twotower_pipeline.model.plots import experiment_png
from twotower_pipeline.store import names
from twotower_pipeline.store.slices import SlicedCollection

GROUP = "online_evaluation"
ONLINE_METRICS = "ecosystem_meta.two_tower_online_metrics"


class OnlineMetricsConfig(dg.Config):
    alpha: float = Field(default=sequential.ALPHA, gt=0.0, lt=0.5, description="The sequential test's error rate: "
                         "its interval covers the true difference at every daily look with probability 1 - alpha.")
    tau: float = Field(default=sequential.TAU, gt=0.0, le=0.5, description="The size of accept-rate difference the "
                       "test is tuned to find (mSPRT's mixing scale; 0.02 = two points).")


@dg.asset(
    key="online_metrics",
    ins={"exposures": dg.AssetIn(FLATTEN_KEY, metadata={"columns": online.EXPOSURE_COLUMNS})},
    partitions_def=daily_partitions,
    io_manager_key="mongo_frame_io_manager",
    metadata={"mongo_collection": ONLINE_METRICS, "partition_expr": "day"},
    group_name=GROUP,
    owners=OWNERS,
    kinds={"mongodb", "pandas"},
    code_version="1",
    check_specs=[dg.AssetCheckSpec(
        "challenger_not_worse", asset="online_metrics",
        description="Fails when a running experiment's challenger is significantly worse than the champion "
        "(always-valid interval of the difference below 0); `experiment_sensor` then stops it, if turned on.")],
    description="For each day, campaign, run and arm: exposures, accepts, accept rate with a 95% interval, "
    "accept rate at rank 1; for each experiment serving that day, challenger minus champion over its customers "
    "to date with an always-valid interval (mSPRT), recorded as the experiment's verdict of the day.",
)
def online_metrics(context: dg.AssetExecutionContext, config: OnlineMetricsConfig, mongo: MongoResource,
                   exposures: pd.DataFrame):
    day, window = context.partition_key, context.partition_time_window
    store = mongo.store()
    flatten = SlicedCollection(store, names.FLATTEN)
    if day not in (flatten.committed_write_ids([day]) or {}):
        raise dg.Failure(description=f"the flatten of {day} is not committed: materialise "
                         f"logging/ecosystemruntime_flatten for {day} first (flatten_job_schedule does, nightly)")
    table = online.arm_table(exposures, window.start)
    verdicts, worse, plots, notes = {}, [], {}, []
    for record in experiments.serving_between(store, window.start, window.end):
        name = record["_id"]
        days = [d.strftime("%Y-%m-%d") for d in pd.date_range(record["started_day"], day)]
        totals, runs, missing = _experiment_customers(flatten, name, days)
        if missing:
            notes.append(f"{name}: days not flattened, left out of its look: {', '.join(missing)}")
        earlier = sorted((v for d, v in (record.get("verdicts") or {}).items() if d < day), key=lambda v: v["day"])
        look = online.experiment_look(totals, runs, day, earlier, champion_run_id=record.get("champion_run_id"),
                                      challenger_run_id=record["challenger_run_id"], alpha=config.alpha,
                                      tau=config.tau)
        if look is None:
            notes.append(f"{name}: no exposures in both arms up to {day}")
            continue
        experiments.record_verdict(store, name, day, look)
        verdicts[name] = look
        notes += [f"{name}: {problem}" for problem in look["problems"]]
        if look["decision"] == online.WORSE and record["state"] == experiments.RUNNING:
            worse.append(name)
        plots[name] = experiment_png(earlier + [look], title=f"{name}: {record['challenger_run_id']} (challenger) "
                                     f"vs {record.get('champion_run_id')} (champion)")
    for note in notes:
        context.log.warning(note)
    metadata = {
        "day": day, "exposures": int(table["exposures"].sum()), "accepts": int(table["accepts"].sum()),
        "arms": dg.MetadataValue.md(online.markdown_table(table)),
        "experiments": dg.MetadataValue.json({name: {k: v for k, v in verdict.items() if k not in ("alpha", "tau")}
                                              for name, verdict in verdicts.items()}),
        **{f"plot_{name}": dg.MetadataValue.md(
            f"![{name}](data:image/png;base64,{base64.b64encode(png).decode()})") for name, png in plots.items()},
        **({"notes": dg.MetadataValue.json(notes)} if notes else {}),
    }
    yield dg.Output(table, metadata=metadata)
    yield dg.AssetCheckResult(
        check_name="challenger_not_worse", passed=not worse,
        severity=dg.AssetCheckSeverity.ERROR,
        description=(f"significantly worse than the champion: {', '.join(worse)}" if worse
                     else "no running experiment's challenger is significantly worse"),
        metadata={name: f"{v['decision']}: {v['difference']:+.4f} ({v['low']:+.4f}..{v['high']:+.4f}), "
                        f"p {v['p_value']:.4g}" for name, v in verdicts.items()},
    )


def _experiment_customers(flatten: SlicedCollection, name: str, days: list[str], attempts: int = 3):
    """(per-customer totals, runs per arm, days without a committed flatten) of the experiment's
    rows on `days`, streamed; read again when a day is re-flattened meanwhile (a rewrite would
    otherwise drop that day's rows from the look unseen)."""
    for _attempt in range(attempts):
        committed = flatten.committed_write_ids(days) or {}
        totals, runs = online.arm_customers(flatten.read_batches(
            query={"experiment": name}, columns=online.EXPERIMENT_COLUMNS, keys=days))
        if (flatten.committed_write_ids(days) or {}) == committed:
            return totals, runs, [d for d in days if d not in committed]
    raise dg.Failure(description=f"experiment {name}: the flatten kept being rewritten while its rows were read "
                     f"({attempts} attempts); materialise again once the flatten is done")
