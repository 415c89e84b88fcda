"""Champion and challenger as operators run them: start, stop and promote an experiment (jobs with
launchpads), and `experiment_sensor`, which acts on `online_metrics`' verdicts when turned on.

The records and rules are `twotower_pipeline.experiments`; promoting publishes the challenger
through `runtime_embeddings` (the publish path: both towers as one unit, verified), so it shows in
that asset's history like any publish.
"""

import dagster as dg
import pymongo.errors
from pydantic import Field

from twotower_pipeline import experiments
from twotower_pipeline.defs.resources import MongoResource
from twotower_pipeline.online import BETTER, WORSE
from twotower_pipeline.store.client import redact_text

EXPERIMENT_TAG = "twotower/experiment"


class StartExperimentConfig(dg.Config):
    experiment: str = Field(description="The experiment's name (unique, kept with its records; it seeds the "
                            "split of customers).")
    campaign: str = Field(description="The campaign (predictor) whose customers are split; one experiment per "
                          "campaign at a time.")
    challenger_run_id: str = Field(description="A run that passed the publish gate and is not live.")
    share: float = Field(default=0.5, gt=0.0, lt=1.0, description="The challenger's share of the campaign's "
                         "customers (a stable hash of experiment and customer id; exclusive range 0..1).")
    promote_on_win: bool = Field(default=False, description="Let `experiment_sensor` promote the challenger once "
                                 "it is significantly better (otherwise a win is reported, not acted on).")


class StopExperimentConfig(dg.Config):
    experiment: str = Field(description="The running experiment to stop; the champion then serves everyone.")
    reason: str = Field(description="Why (recorded with the experiment).")


@dg.op(description="Record a running experiment; the runtime splits the campaign's customers at its next "
       "reload (seconds).")
def start_experiment(context: dg.OpExecutionContext, config: StartExperimentConfig, mongo: MongoResource) -> dict:
    try:
        record = experiments.start(mongo.store(), config.experiment, config.campaign, config.challenger_run_id,
                                   config.share, promote_on_win=config.promote_on_win,
                                   owner={"dagster_run_id": context.run_id})
    except experiments.ExperimentError as error:
        raise dg.Failure(description=str(error)) from None
    context.log.info(f"experiment {config.experiment}: run {config.challenger_run_id} challenges run "
                     f"{record['champion_run_id']} on {config.share:.0%} of {config.campaign}'s customers")
    context.add_output_metadata({"experiment": config.experiment, "campaign": config.campaign,
                                 "champion_run_id": record["champion_run_id"],
                                 "challenger_run_id": config.challenger_run_id, "share": config.share})
    return {"experiment": config.experiment}


@dg.op(description="End a running experiment with a recorded reason; the champion serves everyone at the "
       "runtime's next reload.")
def stop_experiment(context: dg.OpExecutionContext, config: StopExperimentConfig, mongo: MongoResource) -> dict:
    try:
        record = experiments.stop(mongo.store(), config.experiment, config.reason,
                                  owner={"dagster_run_id": context.run_id})
    except experiments.ExperimentError as error:
        raise dg.Failure(description=str(error)) from None
    context.log.info(f"experiment {config.experiment} stopped: {config.reason}")
    context.add_output_metadata({"experiment": config.experiment, "campaign": record["campaign"],
                                 "reason": config.reason})
    return {"experiment": config.experiment}


@dg.job(description="Start an experiment: a gated run (the challenger) serves a share of one campaign's "
        "customers beside the live run (the champion); `online_metrics` compares them day by day.")
def start_experiment_job():
    start_experiment()


@dg.job(description="Stop an experiment (with a reason): every customer gets the live run again.")
def stop_experiment_job():
    stop_experiment()


class PromoteExperimentConfig(dg.Config):
    experiment: str = Field(description="The running experiment whose challenger is published (the publish "
                            "gate's checks and the live collections' verification as for any publish).")


@dg.config_mapping
def promote_parameters(config: PromoteExperimentConfig) -> dg.RunConfig:
    return dg.RunConfig(ops={"runtime_embeddings": {"config": {"promote_experiment": config.experiment}}})


promote_experiment_job = dg.define_asset_job(
    "promote_experiment_job",
    selection=dg.AssetSelection.assets("runtime_embeddings"),
    config=promote_parameters,
    description="Promote an experiment's challenger: publish it through `runtime_embeddings` (both towers as one "
    "unit, verified) and end the experiment; a failed publish leaves the champion live and the experiment running.",
)


def _stop_request(name: str, day: str, verdict: dict) -> dg.RunRequest:
    reason = (f"online_metrics {day}: challenger significantly worse, difference {verdict['difference']:+.4f} "
              f"(always-valid 95% interval {verdict['low']:+.4f}..{verdict['high']:+.4f}, p {verdict['p_value']:.4g})")
    return dg.RunRequest(run_key=f"stop:{name}:{day}", job_name=stop_experiment_job.name, tags={EXPERIMENT_TAG: name},
                         run_config={"ops": {"stop_experiment": {"config": {"experiment": name, "reason": reason}}}})


def _promote_request(name: str, day: str) -> dg.RunRequest:
    return dg.RunRequest(run_key=f"promote:{name}:{day}", job_name=promote_experiment_job.name,
                         tags={EXPERIMENT_TAG: name}, run_config={"experiment": name})


@dg.sensor(
    jobs=[stop_experiment_job, promote_experiment_job],
    minimum_interval_seconds=300,
    default_status=dg.DefaultSensorStatus.STOPPED,
    description="Acts on `online_metrics`' newest verdict of each running experiment: stops one whose challenger "
    "is significantly worse (recording why); promotes one that is significantly better only where the operator "
    "started it with promote_on_win (a run per verdict day: a failed stop or promotion is tried again with the "
    "next day's verdict).",
)
def experiment_sensor(context: dg.SensorEvaluationContext, mongo: MongoResource):
    try:
        store = mongo.store()
        records = experiments.records(store, state=experiments.RUNNING, limit=1000)
    except pymongo.errors.PyMongoError as error:
        raise RuntimeError("the experiment sensor cannot read MongoDB: " + redact_text(str(error), mongo.uri)) \
            from None
    requests, notes = [], []
    for record in records:
        latest = experiments.latest_verdict(record)
        if latest is None:
            notes.append(f"{record['_id']}: no verdict yet")
            continue
        day, verdict = latest
        if verdict["decision"] == WORSE:
            requests.append(_stop_request(record["_id"], day, verdict))
        elif verdict["decision"] == BETTER and record.get("promote_on_win"):
            requests.append(_promote_request(record["_id"], day))
        elif verdict["decision"] == BETTER:
            notes.append(f"{record['_id']}: challenger significantly better on {day}; promotion is the operator's "
                         "(promote_experiment_job)")
        else:
            notes.append(f"{record['_id']}: {verdict['decision']} on {day}"
                         + "".join(f"; {problem}" for problem in verdict.get("problems") or []))
    if requests:
        return dg.SensorResult(run_requests=requests)
    return dg.SkipReason("; ".join(notes) if notes else "no experiment is running")
