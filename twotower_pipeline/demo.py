"""`make demo`: load sample runtime logs and materialise every asset, on the embedded server
unless MONGODB_URI is set. Safe to run again: loaders skip what is loaded, assets rewrite."""

from __future__ import annotations

import os
import time

import dagster as dg

from twotower_pipeline.definitions import defs
from twotower_pipeline.defs.assets.offline_scoring import score_shards
from twotower_pipeline.defs.run_health import fail_orphaned_runs, in_process_tags
from twotower_pipeline.ingest import datasets
from twotower_pipeline.ingest.runtime_logs import write_runtime_logs
from twotower_pipeline.store.embedded import EmbeddedMongo


def load_sample_logs(store, log=print) -> str:
    """Write MovieLens 100K logs when the data is here, else simulated traffic; returns the predictor."""
    movielens = datasets.find_dataset(datasets.MOVIELENS)
    if movielens is not None:
        from twotower_pipeline.ingest.movielens import load_movielens

        log(f"loading MovieLens 100K from {movielens}")
        logs = load_movielens(movielens)
    else:
        from twotower_pipeline.ingest.simulator import simulate_traffic

        requests = int(os.environ.get("TWOTOWER_DEMO_REQUESTS", "20000"))
        log(f"{datasets.data_root()} has no {datasets.MOVIELENS}: using the synthetic traffic simulator "
            f"({requests} requests)")
        logs = simulate_traffic(n_requests=requests).logs
    outcome = write_runtime_logs(store, logs)
    state = "written" if outcome["written"] else "already loaded"
    log(
        f"runtime logs for {logs.predictor}: {outcome['presented']} presented, {outcome['responses']} responses, "
        f"{outcome['exposures']} exposures ({state})"
    )
    return logs.predictor


def day_range(store, predictor: str) -> tuple[str, str]:
    """First and last UTC day with presented documents for the predictor."""
    from twotower_pipeline.store import names

    presented = store.collection(names.PRESENTED)
    bounds = list(
        presented.aggregate(
            [
                {"$match": {"predictor": predictor}},
                {"$group": {"_id": None, "first": {"$min": "$date_log"}, "last": {"$max": "$date_log"}}},
            ]
        )
    )
    if not bounds:
        raise RuntimeError(f"no presented documents for {predictor}")
    return bounds[0]["first"].strftime("%Y-%m-%d"), bounds[0]["last"].strftime("%Y-%m-%d")


def run_demo() -> int:
    started = time.monotonic()
    resources = defs.resources
    # resolve dg.EnvVar("MONGODB_URI") as a run would; the URI itself is never printed
    mongo = resources["mongo"].process_config_and_initialize()
    store = mongo.store()
    if not mongo.uri:
        print(f"embedded MongoDB at {store.describe()}, data in {EmbeddedMongo(mongo.embedded_dir).data_dir}")
    else:
        print(f"MongoDB at {store.describe()}")
    predictor = load_sample_logs(store)
    first, last = day_range(store, predictor)

    instance = dg.DagsterInstance.get()
    for run_id in fail_orphaned_runs(instance):
        print(f"run {run_id} was left started by a killed process: marked failed")
    assets = list(defs.assets)

    def materialize(selection, ops_config=None, tags=None, raise_on_error=True) -> dg.ExecuteInProcessResult:
        # INFO, not DEBUG, on the console: progress lines (epochs, counts) without the event stream
        run_config = {"loggers": {"console": {"config": {"log_level": "INFO"}}}, "ops": ops_config or {}}
        return dg.materialize(assets, instance=instance, resources=resources, selection=selection,
                              run_config=run_config, tags={**in_process_tags(), **(tags or {})},
                              raise_on_error=raise_on_error)

    flatten = dg.AssetKey(["logging", "ecosystemruntime_flatten"])
    print(f"materialising ecosystemruntime_flatten for {first}..{last} as one run")
    result = materialize(
        [flatten, dg.AssetKey(["logging", "ecosystemruntime_flatten_quarantine"])],
        tags={"dagster/asset_partition_range_start": first, "dagster/asset_partition_range_end": last},
    )
    flatten_meta = _materialization_metadata(result, flatten)
    print(f"materialising training_frame for predictor {predictor}")
    result = materialize(["training_frame"], {"training_frame": {"config": {"predictor": predictor}}})
    frame_meta = _materialization_metadata(result, dg.AssetKey("training_frame"))
    print("training two_tower_model, keeping its user and item vectors, scoring it against the baselines, "
          "publishing it to the runtime if it passes the gate")
    result = materialize(["two_tower_model", "user_embeddings", "item_embeddings", "concept_test_metrics",
                          "runtime_embeddings"], raise_on_error=False)
    model_meta = _materialization_metadata(result, dg.AssetKey("two_tower_model"))
    offline_meta = _materialization_metadata(result, dg.AssetKey("concept_test_metrics"))
    if not result.success:
        print(f"\nrun {model_meta['run_id']}: publish gate {offline_meta['gate']}; the runtime keeps the run it "
              "served, no recommendations are written")
        return 1
    published = _materialization_metadata(result, dg.AssetKey("runtime_embeddings"))
    shards = score_shards.get_partition_keys()
    print(f"scoring customers in {len(shards)} shards and publishing the recommendations")
    result = materialize(["batch_recommendations", "published_recommendations"],
                         tags={"dagster/asset_partition_range_start": shards[0],
                               "dagster/asset_partition_range_end": shards[-1]})
    scores_meta = _materialization_metadata(result, dg.AssetKey("published_recommendations"))

    print("\nsummary")
    print(
        f"  flatten:        {flatten_meta['exposures']} exposures, {flatten_meta['accepted']} accepted, "
        f"{flatten_meta['quarantined']} quarantined"
    )
    print(
        f"  training frame: {frame_meta['rows']} rows, accept rate {frame_meta['accept_rate']:.3f}, "
        f"{frame_meta['customers']} customers, {frame_meta['offers']} offers"
    )
    print(f"  model:          run {model_meta['run_id']}, {model_meta['epochs_run']} epochs (best "
          f"{model_meta['best_epoch']}), user_auc {model_meta['validation_user_auc']:.3f}, "
          f"item_auc {model_meta['validation_item_auc']:.3f}, {model_meta['examples_per_second']:,.0f} examples/s")
    print(f"  offline:        ndcg@10 {offline_meta['two_tower_ndcg@10']:.3f}, recall@10 "
          f"{offline_meta['two_tower_recall@10']:.3f} on {offline_meta['evaluated_customers']} customers' held-out "
          f"accepts; publish gate {offline_meta['gate']} (model against baselines: the concept_test_metrics asset)")
    print(f"  embeddings:     {published['users']} customers, {published['items']} offers, live and verified "
          f"(previous run: {published['previous_run_id']})")
    print(f"  recommendations: top-10 offers for {scores_meta['dagster/row_count']} customers in "
          f"{scores_meta['collection']}")
    print(f"  took {time.monotonic() - started:.0f}s; open the UI with `make ui` (dagster dev) to browse it")
    return 0


def _materialization_metadata(result: dg.ExecuteInProcessResult, key: dg.AssetKey) -> dict:
    for event in result.get_asset_materialization_events():
        if event.asset_key == key:
            return {k: getattr(v, "value", v) for k, v in event.materialization.metadata.items()}
    raise RuntimeError(f"{key.to_user_string()} was not materialised")
