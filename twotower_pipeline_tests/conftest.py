"""Fixtures: one real MongoDB-wire server for the session (the embedded SecantusDB process,
or MONGODB_URI when set), and a fresh database prefix per test so tests never see each other."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import dagster as dg
import pytest

from twotower_pipeline.definitions import build_resources, defs
from twotower_pipeline.defs.resources import MongoResource
from twotower_pipeline.ingest import datasets
from twotower_pipeline.ingest.runtime_logs import write_runtime_logs
from twotower_pipeline.ingest.simulator import simulate_traffic
from twotower_pipeline.store.client import MongoStore
from twotower_pipeline.store.embedded import EmbeddedMongo


@pytest.fixture(scope="session")
def mongo_uri(tmp_path_factory) -> str:
    if os.environ.get("MONGODB_URI"):
        yield os.environ["MONGODB_URI"]
        return
    server = EmbeddedMongo(tmp_path_factory.mktemp("embedded-mongo"))
    yield server.uri() + "?directConnection=true"
    server.stop()


@pytest.fixture
def database_prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}_"


@pytest.fixture
def store(mongo_uri, database_prefix) -> MongoStore:
    store = MongoStore(mongo_uri, database_prefix)
    yield store
    for name in store.client.list_database_names():
        if name.startswith(database_prefix):
            store.client.drop_database(name)


@pytest.fixture
def mongo(mongo_uri, database_prefix, store) -> MongoResource:
    """A Dagster resource on the same server and prefix as `store`."""
    return MongoResource(uri=mongo_uri, database_prefix=database_prefix)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    root = datasets.data_root()
    if not (root / datasets.MOVIELENS).is_dir():
        pytest.skip(f"public data sets not found under {root} (set TWOTOWER_DATA_DIR)")
    return root


@pytest.fixture
def trained_slice(mongo, store):
    """A small simulated predictor, flattened and framed, ready to train."""
    traffic = simulate_traffic(n_customers=200, n_offers=20, n_requests=2500, days=3, seed=7)
    write_runtime_logs(store, traffic.logs)
    resources = build_resources(mongo)
    tags = {"dagster/asset_partition_range_start": "2024-01-01", "dagster/asset_partition_range_end": "2024-01-03"}
    assert dg.materialize(list(defs.assets), resources=resources, tags=tags, selection=[
        dg.AssetKey(["logging", "ecosystemruntime_flatten"]),
        dg.AssetKey(["logging", "ecosystemruntime_flatten_quarantine"])]).success
    assert dg.materialize(list(defs.assets), resources=resources, selection=["training_frame"], run_config={
        "ops": {"training_frame": {"config": {"predictor": traffic.logs.predictor}}}}).success
    return resources, traffic


FAST = {"epochs": 3, "batch_size": 128, "embedding_dim": 16, "hidden": 32}


def publish_small_run(uri: str, prefix: str):
    """(store, resources, traffic): a small simulated predictor under `prefix` on the server at
    `uri`, flattened, framed, trained as run `run_a` (FAST), passed through an open gate and
    published."""
    store = MongoStore(uri, prefix)
    resources = build_resources(MongoResource(uri=uri, database_prefix=prefix))
    traffic = simulate_traffic(n_customers=200, n_offers=20, n_requests=2500, days=3, seed=7)
    write_runtime_logs(store, traffic.logs)
    assets = list(defs.assets)
    tags = {"dagster/asset_partition_range_start": "2024-01-01", "dagster/asset_partition_range_end": "2024-01-03"}
    assert dg.materialize(assets, resources=resources, tags=tags, selection=[
        dg.AssetKey(["logging", "ecosystemruntime_flatten"]),
        dg.AssetKey(["logging", "ecosystemruntime_flatten_quarantine"])]).success
    open_gate = {"min_ndcg_gain_over_popularity": -1.0, "min_auc": 0.0}
    assert dg.materialize(assets, resources=resources, selection=[
        "training_frame", "two_tower_model", "user_embeddings", "item_embeddings", "concept_test_metrics"],
        run_config={"ops": {"training_frame": {"config": {"predictor": traffic.logs.predictor}},
                            "two_tower_model": {"config": {**FAST, "run_id": "run_a"}},
                            "concept_test_metrics": {"config": open_gate}}}).success
    assert dg.materialize(assets, resources=resources, selection=["runtime_embeddings"],
                          run_config={"ops": {"runtime_embeddings": {"config": {"run_id": "run_a"}}}}).success
    return store, resources, traffic


def drop_prefix(store: MongoStore) -> None:
    for name in store.client.list_database_names():
        if name.startswith(store.database_prefix):
            store.client.drop_database(name)


@pytest.fixture(scope="module")
def published_run(mongo_uri):
    """`publish_small_run` under a module's own database prefix on the session's server."""
    store, resources, traffic = publish_small_run(mongo_uri, f"t{uuid.uuid4().hex[:10]}_")
    yield store, resources, traffic
    drop_prefix(store)
