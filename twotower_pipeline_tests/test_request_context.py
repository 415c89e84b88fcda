"""The request's context (`in_params` -> `context_<key>`) in the customer tower: encoded with a
neutral value for absent keys, dropped per row while training, absent from exported vectors, and
present in `TwoTowerModel.customer_vector` (what a serving process calls)."""

import numpy as np
import pandas as pd
import pytest
import torch

from twotower_pipeline import publishing
from twotower_pipeline.ingest.training_frame import build_training_frame
from twotower_pipeline.model import TrainingParams, TwoTowerModel, context_row, train_two_tower
from twotower_pipeline.model.features import FeatureEncoder
from twotower_pipeline.model.train import _Augment, feature_columns, prepare
from twotower_pipeline.runs import TrainedRun

OFFERS = [f"o{i}" for i in range(8)]          # o0..o3 suit a happy driver, o4..o7 a sad one
FAST = dict(batch_size=32, epochs=12, stopping_rounds=0, embedding_dim=8, hidden=16, learning_rate=0.02,
            num_threads=1)


def context_frame(n_customers=40, shown=16, seed=0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(exposures as the flatten writes them, customer features): whether an offer is accepted
    depends on the request's mood only, never on the customer."""
    rng = np.random.default_rng(seed)
    rows = []
    for c in range(n_customers):
        for k in range(shown):
            offer = int(rng.integers(len(OFFERS)))
            mood = "happy" if rng.random() < 0.5 else "sad"
            rows.append({"uuid": f"r{c}-{k}", "predictor": "p", "channel": "app", "customer_id": f"c{c}",
                         "offer": OFFERS[offer], "offer_name": OFFERS[offer],
                         "accepted": int((offer < 4) == (mood == "happy")), "price": 1.0, "rank": 1.0, "score": 0.0,
                         "datetime": pd.Timestamp("2024-03-05", tz="UTC"),
                         "context_mood": mood, "context_hour": float(rng.integers(6, 23)),
                         "context_constant": "same"})
    customers = pd.DataFrame({"customer_id": [f"c{c}" for c in range(n_customers)],
                              "segment": [f"S{c % 3}" for c in range(n_customers)],
                              "age": [20 + c for c in range(n_customers)],            # int: typed as float
                              "region": ["" if c % 4 == 0 else f"R{c % 2}" for c in range(n_customers)]})
    return pd.DataFrame(rows), customers


@pytest.fixture(scope="module")
def trained():
    exposures, customers = context_frame()
    frame, _ = build_training_frame(exposures, customers, pd.DataFrame())
    return frame, customers, train_two_tower(frame, TrainingParams(**FAST))


def _scores(model, vector):
    items = model.item_embeddings(pd.DataFrame({"offer": OFFERS}))
    return items @ vector


def test_context_row_maps_in_params_to_context_columns_by_the_flatten_rule():
    assert context_row({"mood": "happy", "hour": 7, "tags": ["a"], "a.b": 1, "none": None}) == {
        "context_hour": 7, "context_mood": "happy"}
    assert context_row(None) == {} and context_row("not a dict") == {}


def test_the_encoder_gives_absent_or_unseen_context_the_neutral_value():
    frame = pd.DataFrame({"customer_id": ["c1", "c2", "c3", "c4"],
                          "context_mood": ["happy", None, "sad", "happy"],
                          "context_hour": [6.0, np.nan, 10.0, 8.0]})
    encoder = FeatureEncoder.fit(frame, ["customer_id", "context_mood", "context_hour"], id_column="customer_id")
    assert encoder.categorical == {"context_mood": ["happy", "sad"]}   # missing is no category
    assert encoder.numeric["context_hour"][0] == pytest.approx(8.0)    # the mean of the values sent
    assert encoder.request_context_slots() == ([0], [0])
    x = encoder.encode(pd.DataFrame({"customer_id": ["c1", "c2", "c3"], "context_mood": ["sad", None, "angry"],
                                     "context_hour": [10.0, np.nan, 8.0]}))
    assert x.categorical[:, 0].tolist() == [2, 0, 0]                    # sent, missing, unseen
    assert x.numeric[1, 0].item() == 0.0 and x.numeric[2, 0].item() == 0.0   # missing, the mean
    absent = encoder.encode(pd.DataFrame({"customer_id": ["c1"]}))      # no request at all
    assert absent.categorical[0, 0].item() == 0 and absent.numeric[0, 0].item() == 0.0
    assert FeatureEncoder.from_dict(encoder.to_dict()).categorical == encoder.categorical


def test_the_customer_tower_reads_the_varying_context_columns_and_the_offer_tower_none(trained):
    frame, _, result = trained
    user, item = feature_columns(frame, TrainingParams(**FAST))
    assert {"context_mood", "context_hour"} <= set(user) and "context_constant" not in user
    assert not any(c.startswith("context_") for c in item)
    assert result.model.user_encoder.request_context_columns == ["context_mood", "context_hour"]
    # missing context values are allowed (an absent key), missing features are not
    data = prepare(frame.assign(context_mood=frame["context_mood"].where(frame.index % 3 > 0)), TrainingParams(**FAST))
    assert "context_mood" in data.user_encoder.categorical
    off, _ = feature_columns(frame, TrainingParams(**FAST, request_context=False))
    assert not any(c.startswith("context_") for c in off)


def test_a_request_context_moves_the_customer_vector_to_the_offers_it_makes_accepted(trained):
    _, customers, result = trained
    model = result.model
    features = {"segment": "S1"}
    happy = model.customer_vector("c1", features, {"mood": "happy", "hour": 9})
    sad = model.customer_vector("c1", features, {"mood": "sad", "hour": 9})
    none = model.customer_vector("c1", features, {})
    for vector in (happy, sad, none):
        assert vector.shape == (8,) and np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)
    assert not np.allclose(happy, none, atol=1e-3) and not np.allclose(happy, sad, atol=1e-3)
    assert _scores(model, happy)[:4].min() > _scores(model, happy)[4:].max()
    assert _scores(model, sad)[4:].min() > _scores(model, sad)[:4].max()
    # a cold-start customer (no stored features, no id) is placed by the request's context too
    cold = model.customer_vector("never_seen", None, {"mood": "sad"})
    assert _scores(model, cold)[4:].min() > _scores(model, cold)[:4].max()


def test_unknown_keys_are_ignored_and_missing_ones_take_the_neutral_value(trained):
    model = trained[2].model
    plain = model.customer_vector("c1", {"segment": "S1"}, {"mood": "happy"})
    extra = model.customer_vector("c1", {"segment": "S1"}, {"mood": "happy", "unknown_key": 3, "tags": [1, 2]})
    np.testing.assert_allclose(extra, plain, atol=1e-6)
    frame = pd.DataFrame({"customer_id": ["c1"], "segment": ["S1"], "context_mood": ["happy"]})
    np.testing.assert_allclose(model.user_embeddings(frame)[0], plain, atol=1e-6)
    assert not np.allclose(model.customer_vector("c1", {"segment": "S1"}, {"mood": "happy", "hour": 22}),
                           plain, atol=1e-4)


def test_the_exported_vector_is_the_vector_without_a_request(trained):
    frame, customers, result = trained
    run = TrainedRun(run={"run_id": "ctx", "predictor": "p"}, model=result.model)
    exported = publishing.user_embedding_set(run, customers, frame)
    for customer in ("c0", "c7", "c33"):   # c0: an empty region ("unknown" in both)
        features = {"_id": "stored", "updated_at": pd.Timestamp("2024-03-05", tz="UTC"),
                    **customers.set_index("customer_id").loc[customer].to_dict()}
        vector = exported.vectors[exported.keys.index(customer)]
        np.testing.assert_allclose(result.model.customer_vector(customer, features, None), vector, atol=1e-6)
        np.testing.assert_allclose(result.model.customer_vector(customer, features, {}), vector, atol=1e-6)
    # the stored artefact embeds the same
    config, state = result.model.to_artefact()
    loaded = TwoTowerModel.from_artefact(config, state)
    np.testing.assert_allclose(loaded.customer_vector("c1", {"segment": "S1"}, {"mood": "sad"}),
                               result.model.customer_vector("c1", {"segment": "S1"}, {"mood": "sad"}), atol=1e-6)


def test_request_context_dropout_makes_the_whole_context_neutral_on_that_share_of_training_rows(trained):
    frame, _, _ = trained
    data = prepare(frame, TrainingParams(**FAST))
    categorical, numeric = data.user_encoder.request_context_slots()
    rows = torch.arange(data.user_inputs.n_rows)
    for p in (0.0, 0.5, 1.0):
        augment = _Augment(data.user_encoder, TrainingParams(**FAST, request_context_dropout=p),
                           torch.Generator().manual_seed(0))
        x = augment(data.user_inputs.take(rows))
        neutral = (x.categorical[:, categorical] == 0).all(1) & (x.numeric[:, numeric] == 0).all(1)
        assert neutral.float().mean().item() == pytest.approx(p, abs=0.05)
        kept = ~neutral
        assert (x.categorical[kept][:, categorical] == data.user_inputs.categorical[kept][:, categorical]).all()
        assert (x.ids == data.user_inputs.ids).all()  # the customer's id and features are left alone
    # the export-style rows the validation (and early stopping) scores carry no context at all
    assert (data.customer_inputs.categorical[:, categorical] == 0).all()
