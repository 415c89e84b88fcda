"""Offline scoring (SPEC §6): the run against baselines with the blocking publish gate, and batch
recommendations for the gated run, sharded by customer, published whole as `two_tower_scores`."""

import base64
import json
import os
from typing import Optional

import dagster as dg
import numpy as np
import pandas as pd
from pydantic import Field, field_validator

from twotower_pipeline import offline, publishing
from twotower_pipeline.defs.assets import OWNERS
from twotower_pipeline.defs.assets.runtime_logs import offer_matrix
from twotower_pipeline.defs.assets.training import item_embeddings, user_embeddings
from twotower_pipeline.defs.resources import MongoResource
from twotower_pipeline.model import evaluation
from twotower_pipeline.model.metrics import KS
from twotower_pipeline.model.plots import metrics_bar_png
from twotower_pipeline.model.train import split_of
from twotower_pipeline.runs import TrainedRun
from twotower_pipeline.store import embeddings, names
from twotower_pipeline.store.slices import ALL, SlicedCollection

SCORING_GROUP = "offline_scoring"
TABLE_METRICS = ("ndcg@10", "recall@10", "precision@10", "map@10", "hit_rate@10", "mrr", "coverage@10", "auc",
                 "user_auc", "item_auc")
#: Customer shards of batch scoring (static partitions; TWOTOWER_SCORE_SHARDS sets how many).
SCORE_SHARDS = int(os.environ.get("TWOTOWER_SCORE_SHARDS", "4"))
score_shards = dg.StaticPartitionsDefinition([f"shard_{i:02d}_of_{SCORE_SHARDS:02d}" for i in range(SCORE_SHARDS)])


class ConceptTestConfig(dg.Config):
    """How the run is scored offline and when it may be published."""

    min_ndcg_gain_over_popularity: float = Field(
        default=0.01, description="The gate: the run's NDCG@10 must exceed popularity's by this much.")
    min_auc: float = Field(default=0.5, description="The gate: accept/decline AUC above this, where declines exist.")
    baselines: list[str] = Field(default=list(evaluation.BASELINES), description="popularity, random, ease.")
    probe_customers: list[str] = Field(
        default=[], description="Customers concept-tested on every run (empty: the 5 with most held-out accepts).")
    probe_top: int = Field(default=10, ge=1, le=100, description="Offers shown per probe customer.")
    max_replay_drop: Optional[float] = Field(
        default=None, ge=0.0, le=1.0, description="The gate, optionally: the run's replayed accept rate (SNIPS over "
        "the held-out exposures logged with propensities) may not fall below the live run's by more than this. "
        "Empty: reported, not gated; ignored where no propensities were logged.")

    @field_validator("baselines")
    @classmethod
    def _known(cls, value):
        unknown = sorted(set(value) - set(evaluation.BASELINES))
        if unknown:
            raise ValueError(f"unknown baselines {unknown}; choose from {list(evaluation.BASELINES)}")
        return value


@dg.asset(
    key="concept_test_metrics",
    ins={"two_tower_model": dg.AssetIn("two_tower_model"),
         "training_frame": dg.AssetIn("training_frame", metadata={
             "columns": ["uuid", "customer_id", "offer", "accepted", "datetime", "rank", "propensity"]})},
    deps=[user_embeddings, item_embeddings],
    group_name=SCORING_GROUP,
    owners=OWNERS,
    kinds={"pytorch", "mongodb"},
    check_specs=[dg.AssetCheckSpec(
        "publish_gate", asset="concept_test_metrics", blocking=True,
        description="The run beats popularity on NDCG@10 by the configured margin and, where declines exist, has "
                    "an accept/decline AUC above the minimum. Nothing is published or scored otherwise.")],
    description="The run's kept vectors ranked over the whole catalogue on its held-out exposures, beside "
                "popularity, random and EASE on the same split; the probe customers' concept tests; the gate.",
)
def concept_test_metrics(context: dg.AssetExecutionContext, config: ConceptTestConfig, mongo: MongoResource,
                         two_tower_model: TrainedRun, training_frame: pd.DataFrame):
    store = mongo.store()
    run_id, params = two_tower_model.run_id, two_tower_model.model.params
    trained_on = two_tower_model.details.get("training_frame_write_id")
    current = (SlicedCollection(store, names.TRAINING_FRAME).committed_write_ids() or {}).get(ALL)
    if trained_on and current != trained_on:
        raise dg.Failure(description=f"the training frame was rebuilt after run {run_id} trained on it, so its "
                                     "held-out exposures cannot be rebuilt: retrain, then score the new run")
    held = split_of(training_frame, params)
    item_keys, item_vectors = offline.run_vectors(store, run_id, "item")
    needed = set(training_frame.loc[held, "customer_id"].astype(str)) | set(config.probe_customers)
    user_keys, user_vectors = offline.run_vectors(store, run_id, "user", needed)
    held_out = evaluation.HeldOut.from_frame(training_frame, held, user_keys, item_keys)
    results = evaluation.compare_with_baselines(evaluation.VectorScorer(user_vectors, item_vectors), held_out,
                                                baselines=config.baselines, seed=params.seed, log=context.log.info)
    gate = evaluation.publish_gate(results, min_ndcg_gain=config.min_ndcg_gain_over_popularity,
                                   min_auc=config.min_auc)
    probes = _probe_table(store, run_id, config, held_out, user_keys, item_keys)
    held_rows = training_frame.loc[held]
    replay = offline.replay(store, run_id, held_rows, seed=params.seed,
                            vectors=(user_keys, user_vectors, item_keys, item_vectors))
    live = publishing.live_run_id(store)
    live_replay = offline.replay(store, live, held_rows, seed=params.seed) \
        if config.max_replay_drop is not None and live not in (None, run_id) and replay.get("available") else None
    passes, why = offline.replay_gate(replay, live_replay, config.max_replay_drop)
    if why:
        gate["reasons" if not passes else "notes"].append(why)
    gate["passed"] = gate["passed"] and passes
    offline.save_offline_metrics(store, run_id, {
        "metrics": json.loads(json.dumps(results, default=float)), "gate": gate,
        "split": {"holdout": params.holdout, "share": params.validation_split, "days": params.holdout_days,
                  "seed": params.seed, "held_out_exposures": int(held.sum()),
                  "evaluated_customers": int(len(held_out.evaluated_users))},
        "probes": probes, "replay": replay, "live_replay": live_replay, "dagster_run_id": context.run_id})
    verdict = "passed" if gate["passed"] else "FAILED: " + "; ".join(gate["reasons"])
    context.log.info(f"run {run_id}: publish gate {verdict}" + "".join(f"; {n}" for n in gate["notes"]))
    plot = metrics_bar_png(results, title=f"run {run_id} against baselines (held-out exposures)")
    yield dg.MaterializeResult(metadata={
        "run_id": run_id,
        "gate": verdict,
        "model_vs_baselines": dg.MetadataValue.md(_comparison_markdown(results, gate)),
        "metrics_plot": dg.MetadataValue.md(f"![metrics](data:image/png;base64,{base64.b64encode(plot).decode()})"),
        "probe_customers": dg.MetadataValue.md(_probes_markdown(probes)),
        "replay": dg.MetadataValue.md(_replay_markdown(replay)),
        "held_out_exposures": int(held.sum()),
        "evaluated_customers": int(len(held_out.evaluated_users)),
        **{f"two_tower_{k}": float(v) for k, v in results["two_tower"].items() if k in TABLE_METRICS},
    })
    yield dg.AssetCheckResult(check_name="publish_gate", passed=gate["passed"], metadata={
        "verdict": verdict, "reasons": dg.MetadataValue.md("\n".join(f"- {r}" for r in gate["reasons"]) or "none"),
        "notes": dg.MetadataValue.md("\n".join(f"- {n}" for n in gate["notes"]) or "none"),
        "ndcg@10": float(gate["ndcg@10"]), "popularity_ndcg@10": float(gate["popularity_ndcg@10"]),
        "min_ndcg_gain": gate["min_ndcg_gain"], "auc": float(gate["auc"]), "min_auc": gate["min_auc"]})


def _probe_table(store, run_id: str, config: ConceptTestConfig, held_out: evaluation.HeldOut, user_keys, item_keys):
    """The concept test of each probe customer over the whole catalogue (its top `probe_top`)."""
    probes = list(config.probe_customers)
    if not probes:
        counts = np.bincount(held_out.test_rows, minlength=held_out.n_users)
        probes = [user_keys[i] for i in np.argsort(-counts, kind="stable")[:5] if counts[i] > 0]
    held_accepts = {}
    for row, column in zip(held_out.test_rows, held_out.test_columns):
        held_accepts.setdefault(user_keys[row], []).append(item_keys[column])
    table = []
    for customer in probes:
        answer = offline.concept_test(store, run_id, customer)
        table.append({"customer_id": customer, "success": answer["success"], "detail": answer["detail"],
                      "ranked": answer["ranked"][: config.probe_top],
                      "held_out_accepts": sorted(set(held_accepts.get(customer, [])))})
    return table


def _comparison_markdown(results: dict, gate: dict) -> str:
    models = [m for m in results if m != "skipped"]
    lines = ["| model | " + " | ".join(TABLE_METRICS) + " |", "|---|" + "---|" * len(TABLE_METRICS)]
    for model in models:
        cells = [f"{results[model].get(m, float('nan')):.4f}" for m in TABLE_METRICS]
        lines.append(f"| {'**two_tower**' if model == 'two_tower' else model} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"Gate: **{'passed' if gate['passed'] else 'failed'}**"
                 + "".join(f"\n- {r}" for r in gate["reasons"]) + "".join(f"\n- {n}" for n in gate["notes"]))
    for name, why in (results.get("skipped") or {}).items():
        lines.append(f"\n{name} not computed: {why}")
    lines.append(f"\nK in {list(KS)} are in `ecosystem_meta.two_tower_offline_metrics`.")
    return "\n".join(lines)


def _replay_markdown(replay: dict) -> str:
    """The off-policy estimates of the run's accept rate per presented slot, or why there are none."""
    if not replay.get("available"):
        return f"No estimate: {replay.get('reason')}"
    lines = ["| estimator | accept rate | 95% interval |", "|---|---|---|"]
    for name, found in replay["estimates"].items():
        lines.append(f"| {name} | {found['value']:.4f} | {found['low']:.4f} .. {found['high']:.4f} |")
    lines.append(f"\n{replay['rounds']} held-out exposures with propensities ({replay['estimates']['ips']['matching']} "
                 f"where the run shows the logged offer at its rank); the logged policy's accept rate "
                 f"{replay['logged_accept_rate']:.4f}; without a propensity {replay['without_propensity']}, "
                 f"without a vector of the run {replay['without_vector']}.")
    return "\n".join(lines)


def _probes_markdown(probes: list[dict]) -> str:
    lines = ["| customer | top offers (cosine) | held-out accepts |", "|---|---|---|"]
    for probe in probes:
        shown = ", ".join(f"{r['offer']} ({r['score']:.3f})" for r in probe["ranked"]) if probe["success"] \
            else probe["detail"]
        lines.append(f"| {probe['customer_id']} | {shown} | {', '.join(probe['held_out_accepts']) or '-'} |")
    return "\n".join(lines)


# --- batch recommendations ----------------------------------------------------------------------
class StoredRunConfig(dg.Config):
    """A stored run to act on instead of the run trained upstream (the publish sensor names one)."""

    run_id: Optional[str] = Field(default=None, description="A stored run that passed the publish gate, instead "
                                  "of the run trained upstream.")

    @field_validator("run_id")
    @classmethod
    def _run_id(cls, value):
        return embeddings.check_run_id(value) if value is not None else value


class BatchScoringConfig(StoredRunConfig):
    """SPEC §6 batch scoring parameters, and the eligibility rules applied before top-K."""

    top_k: int = Field(default=10, ge=1, le=1000, description="Offers per customer.")
    max_users: Optional[int] = Field(default=5000, ge=1, description="Cap on customers scored (empty: all).")
    offer_filter: str = Field(default="{}", description="Eligibility: a MongoDB filter on the offer matrix, as JSON "
                                                        '(e.g. {"static_offers": false}); {} = every offer.')
    exclude_offers: list[str] = Field(default=[], description="Offers never recommended.")
    exclude_accepted: bool = Field(default=True, description="Leave out offers the customer accepted in the window.")

    @field_validator("offer_filter")
    @classmethod
    def _json_object(cls, value):
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError as error:
            raise ValueError(f"offer_filter is not JSON: {error}") from None
        if not isinstance(parsed, dict):
            raise ValueError("offer_filter must be a JSON object (a MongoDB filter)")
        return value


@dg.asset(
    key="batch_recommendations",
    ins={"two_tower_model": dg.AssetIn("two_tower_model"),
         "training_frame": dg.AssetIn("training_frame", metadata={"columns": ["customer_id", "offer", "accepted"]})},
    deps=["concept_test_metrics", offer_matrix],
    partitions_def=score_shards,
    backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=1),
    group_name=SCORING_GROUP,
    owners=OWNERS,
    kinds={"pytorch", "mongodb"},
    description="Top-K offers per customer for the gated run, one shard of customers per partition, kept as the "
                "run's own `two_tower_scores__run_<run_id>` (each shard committed whole).",
)
def batch_recommendations(context: dg.AssetExecutionContext, config: BatchScoringConfig, mongo: MongoResource,
                          two_tower_model: TrainedRun, training_frame: pd.DataFrame) -> dg.MaterializeResult:
    metadata = score_and_keep(context, config, mongo.store(), config.run_id or two_tower_model.run_id,
                              list(context.partition_keys), training_frame)
    return dg.MaterializeResult(metadata=metadata)


def score_and_keep(context, config: BatchScoringConfig, store, run_id: str, shards: list[str],
                   training_frame: pd.DataFrame) -> dict:
    """Score the customers of `shards` with the gated run and commit each shard whole into the
    run's own scores (the asset's body); its metadata."""
    try:
        offline.require_gate(store, run_id)
    except offline.GateError as error:
        raise dg.Failure(description=f"{error}; no recommendations are written") from None
    item_keys, item_vectors = offline.run_vectors(store, run_id, "item")
    eligible = _eligible_offers(store, config, item_keys)
    positions = [i for i, key in enumerate(item_keys) if key in eligible]
    offers, vectors = [item_keys[i] for i in positions], item_vectors[positions]
    accepted = training_frame.loc[training_frame["accepted"] == 1, ["customer_id", "offer"]] \
        if config.exclude_accepted else None
    all_shards = score_shards.get_partition_keys()
    documents, row_slices = offline.score_shards(
        store, run_id, [all_shards.index(s) for s in shards], SCORE_SHARDS, offers, vectors, config.top_k,
        max_users=config.max_users, accepted=accepted, log=context.log.info)
    written = offline.write_scores(store, run_id, documents, shards, row_slices, all_shards,
                                   owner={"dagster_run_id": context.run_id})
    location = offline.scores_publisher(store, all_shards).run_location("scores", run_id)
    return {"run_id": run_id, "dagster/row_count": sum(written.values()), "eligible_offers": len(offers),
            "top_k": config.top_k, "shards": ", ".join(shards), "collection": location}


def _eligible_offers(store, config: BatchScoringConfig, item_keys: list[str]) -> set[str]:
    rule = json.loads(config.offer_filter)
    eligible = set(item_keys)
    if rule:
        matrix = store.collection(names.OFFER_MATRIX)
        eligible &= {str(d[names.OFFER_KEY]) for d in matrix.find(rule, {names.OFFER_KEY: 1})}
    return eligible - set(config.exclude_offers)


@dg.asset(
    key="published_recommendations",
    ins={"two_tower_model": dg.AssetIn("two_tower_model")},
    deps=[batch_recommendations],
    group_name=SCORING_GROUP,
    owners=OWNERS,
    kinds={"mongodb"},
    check_specs=[dg.AssetCheckSpec(
        "one_run_every_shard", asset="published_recommendations", blocking=True,
        description="The live scores are exactly the run's, every shard, one per customer.")],
    description="`two_tower_scores` (SPEC §6), what readers use: switched to the gated run's scores whole, once "
                "every shard is committed, through the same journal as the runtime's embeddings.",
)
def published_recommendations(context: dg.AssetExecutionContext, config: StoredRunConfig, mongo: MongoResource,
                              two_tower_model: TrainedRun):
    store = mongo.store()
    run_id = config.run_id or two_tower_model.run_id
    try:
        outcome = offline.publish_scores(store, run_id, score_shards.get_partition_keys(),
                                         owner={"dagster_run_id": context.run_id})
    except (offline.GateError, embeddings.PublishError) as error:
        raise dg.Failure(description=str(error)) from None
    report = outcome["report"]
    yield dg.MaterializeResult(metadata={
        "run_id": run_id, "previous_run_id": outcome["previous_run_id"] or "none",
        "dagster/row_count": report.documents["scores"], "collection": f"{offline.DATABASE}.{names.SCORES}"})
    yield dg.AssetCheckResult(check_name="one_run_every_shard", passed=not report.problems(), metadata={
        "documents": report.documents["scores"], "expected": report.expected["scores"],
        "other_run_documents": report.other_runs["scores"], "unique_customer_index": report.unique_key["scores"]})
