"""Training on small synthetic frames: planted structure is learned, seeds repeat, the best epoch is
kept, unseen customers get vectors from their features, artefacts round-trip, bad frames are
refused before any training time is spent."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from twotower_pipeline.model import TrainingParams, TwoTowerModel, evaluation, rank_offers, train_two_tower
from twotower_pipeline.model.plots import training_curve_png
from twotower_pipeline.model.train import evaluate, fit, prepare

N_OFFERS, N_GROUPS = 40, 4
FAST = dict(batch_size=32, epochs=8, stopping_rounds=0, embedding_dim=8, hidden=16,
            learning_rate=0.01, max_validation_users=1000, num_threads=1)


def planted_frame(n_customers=120, shown=16, seed=0, noise=0.0) -> pd.DataFrame:
    """Customers of segment g accept the offers of group g (o // 10) and decline the others; with
    `noise`, that share of labels are coin flips."""
    rng = np.random.default_rng(seed)
    rows = []
    for c in range(n_customers):
        group = c % N_GROUPS
        for o in rng.choice(N_OFFERS, shown, replace=False):
            liked = o * N_GROUPS // N_OFFERS == group
            accepted = int(liked) if rng.random() >= noise else int(rng.random() < 0.5)
            rows.append({"customer_id": f"c{c}", "offer": f"o{o}", "accepted": accepted,
                         "price": float(1 + o % 3), "rank": float(rng.integers(1, 6)), "score": float(rng.random()),
                         "segment": f"S{group}", "age": float(20 + c % 40),
                         "genres": [f"g{o * N_GROUPS // N_OFFERS}", "all"],
                         "uuid": f"r{c}-{o}", "predictor": "p", "channel": "web", "offer_name": f"o{o}"})
    return pd.DataFrame(rows)


def catalogue() -> pd.DataFrame:
    return pd.DataFrame({"offer": [f"o{i}" for i in range(N_OFFERS)],
                         "genres": [[f"g{i * N_GROUPS // N_OFFERS}", "all"] for i in range(N_OFFERS)]})


@pytest.fixture(scope="module")
def planted():
    frame = planted_frame()
    return frame, train_two_tower(frame, TrainingParams(**FAST))


def test_planted_structure_ranks_the_right_offers(planted):
    frame, result = planted
    m = result.metrics
    held_out = prepare(frame, TrainingParams(**FAST)).held_out
    random = evaluation.evaluate(evaluation.RandomScorer(held_out), held_out, ks=(10,))
    assert m["recall@10"] > 0.9 and m["recall@10"] > 3 * random["recall@10"]
    assert m["user_auc"] > 0.95 and m["item_auc"] > 0.95
    users = frame.drop_duplicates("customer_id").head(N_GROUPS)[["customer_id", "segment", "age"]]
    vectors, items = result.model.user_embeddings(users), result.model.item_embeddings(catalogue())
    for group, vector in enumerate(vectors):
        top = [int(o[1:]) for o, _ in rank_offers(vector, items, catalogue()["offer"])[:10]]
        assert sum(o * N_GROUPS // N_OFFERS == group for o in top) >= 9


def test_vectors_are_unit_norm_of_embedding_dim(planted):
    frame, result = planted
    for vectors in (result.model.user_embeddings(frame), result.model.item_embeddings(frame)):
        assert vectors.shape == (len(frame), 8) and vectors.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_unseen_customer_gets_a_finite_unit_vector_from_its_features(planted):
    _, result = planted
    new = pd.DataFrame({"customer_id": ["never_seen", "never_seen"], "segment": ["S0", "S1"], "age": [30.0, 30.0]})
    vectors = result.model.user_embeddings(new)  # context columns absent -> documented defaults
    assert np.isfinite(vectors).all()
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.abs(vectors[0] - vectors[1]).max() > 1e-3
    first = result.model.item_embeddings(catalogue().head(1))[0]  # an offer of group 0
    assert vectors[0] @ first > vectors[1] @ first  # the S0 stranger prefers S0's offers


def test_same_seed_same_weights_and_embeddings():
    frame = planted_frame(n_customers=40)
    params = TrainingParams(**{**FAST, "epochs": 3})
    a, b = train_two_tower(frame, params), train_two_tower(frame, params)
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert np.array_equal(a.model.user_embeddings(frame), b.model.user_embeddings(frame))
    assert [h["loss"] for h in a.history] == [h["loss"] for h in b.history]
    c = train_two_tower(frame, TrainingParams(**{**FAST, "epochs": 3, "seed": 7}))
    assert not np.array_equal(a.model.user_embeddings(frame), c.model.user_embeddings(frame))


def test_early_stopping_keeps_the_best_epoch():
    frame = planted_frame(n_customers=60, noise=1.0, seed=3)  # labels are coin flips: the metric wanders
    params = TrainingParams(**{**FAST, "epochs": 40, "stopping_rounds": 2, "min_epochs": 1, "learning_rate": 0.05,
                               "validation_metric": "user_auc"})
    data = prepare(frame, params)
    logged = []
    result = fit(data, logged.append)
    values = [h["validation_metric"] for h in result.history]
    assert result.best_epoch == int(np.argmax(values)) + 1
    assert result.stopped_early and result.epochs_run == result.best_epoch + 2 < 40
    assert evaluate(result.model, data)["user_auc"] == pytest.approx(values[result.best_epoch - 1], abs=1e-12)
    assert any(line.startswith("early stopping") for line in logged)
    assert sum(line.startswith("epoch ") for line in logged) == result.epochs_run


def test_artefact_round_trip_gives_identical_embeddings(planted):
    frame, result = planted
    config, state = result.model.to_artefact()
    assert isinstance(state, bytes) and TwoTowerModel.artefact_kind == "two_tower_model"
    again = TwoTowerModel.from_artefact(json.loads(json.dumps(config)), state)
    assert np.array_equal(again.user_embeddings(frame), result.model.user_embeddings(frame))
    assert np.array_equal(again.item_embeddings(frame), result.model.item_embeddings(frame))


@pytest.mark.parametrize("loss, extra", [("mixed", {"n_catalogue_negatives": 8}), ("pointwise", {}),
                                         ("softmax", {"pointwise_weight": 0.0, "layers": 0, "id_dropout": 0.2,
                                                      "epochs": 12})])
def test_other_objectives_learn_the_planted_structure(loss, extra):
    frame = planted_frame(n_customers=60)
    result = train_two_tower(frame, TrainingParams(**{**FAST, "loss": loss, **extra}))
    assert result.metrics["user_auc"] > 0.85
    assert result.examples_per_second > 0 and len(result.history) == result.epochs_run == extra.get("epochs", 8)


def _params(**kw):
    return TrainingParams(**{**FAST, **kw})


@pytest.mark.parametrize("mutate, params, message", [
    (lambda f: f.assign(accepted=0), {}, "no accepted rows"),
    (lambda f: f.assign(offer="o1"), {}, "only one offer"),
    (lambda f: f.assign(customer_id="c1"), {}, "only one customer"),
    (lambda f: f.assign(age=f["age"].where(f.index != 3)), {}, "'age' has 1 missing values"),
    (lambda f: f.assign(segment=f["segment"].where(f.index != 5, None)), {}, "'segment' has 1 missing values"),
    (lambda f: f, {"batch_size": 4096}, "far too few rows for batch_size=4096"),
    (lambda f: f.assign(price=f["price"].where(f.index != 2, np.inf)), {}, "'price' has 1 infinite values"),
    (lambda f: f, {"categorical_columns": ["zip"]}, "lacks column(s) 'zip' (categorical_columns)"),
    (lambda f: f.drop(columns=["rank"]), {}, "lacks column(s) 'rank' (user_features)"),
    (lambda f: f, {"item_features": ["offer", "colour"]}, "lacks column(s) 'colour' (item_features)"),
    (lambda f: f.assign(accepted=2), {}, "must be 0 or 1"),
    (lambda f: f.iloc[:0], {}, "empty"),
])
def test_bad_frames_are_refused_before_training(mutate, params, message, monkeypatch):
    import twotower_pipeline.model.train as train_module
    monkeypatch.setattr(train_module, "fit", lambda *a, **k: pytest.fail("training started"))
    with pytest.raises(ValueError) as error:
        train_module.train_two_tower(mutate(planted_frame(n_customers=20)), _params(**params))
    assert message in str(error.value)


def test_training_curve_png(planted):
    _, result = planted
    png = training_curve_png(result.history, metric_name=result.validation_metric, best_epoch=result.best_epoch)
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000


def test_context_pinned_to_documented_defaults_by_default(planted):
    frame, result = planted
    users = frame.drop_duplicates("customer_id")[["customer_id", "segment", "age"]]
    exported = result.model.user_embeddings(users)  # context absent: price 0.0, rank 1.0, score 0.0
    live = result.model.user_embeddings(users.assign(price=9.0, rank=3.0, score=0.7))  # a sidecar request
    assert np.array_equal(exported, live)  # context_dropout 1.0: the served vector is the exported one


def test_context_is_read_when_trained_on_it():
    frame = planted_frame(n_customers=40)
    result = train_two_tower(frame, TrainingParams(**{**FAST, "epochs": 2, "context_dropout": 0.5}))
    users = frame.drop_duplicates("customer_id")[["customer_id", "segment", "age"]]
    exported = result.model.user_embeddings(users)
    assert not np.array_equal(exported, result.model.user_embeddings(users.assign(price=3.0)))
    assert np.array_equal(exported, result.model.user_embeddings(users.assign(price=0.0, rank=1.0, score=0.0)))


# --- implicit feedback, the customer's history, early stopping -------------------------------------
def implicit_frame(n_customers=120, seed=0) -> pd.DataFrame:
    """The planted structure as accepts only: each customer accepted 6 offers of its group."""
    rng = np.random.default_rng(seed)
    rows = []
    for c in range(n_customers):
        group = c % N_GROUPS
        for o in rng.choice(np.arange(group * 10, group * 10 + 10), 6, replace=False):
            rows.append({"customer_id": f"c{c}", "offer": f"o{o}", "accepted": 1, "uuid": f"r{c}-{o}",
                         "price": 1.0, "rank": 1.0, "score": 0.0})
    return pd.DataFrame(rows)


def test_the_auto_choices_follow_the_data():
    def choices(params):
        return params.loss, params.user_history, params.validation_metric, params.learning_rate_schedule
    assert choices(TrainingParams().resolved(has_declines=False, n_offers=10)) == ("softmax", "on", "ndcg@k", "cosine")
    assert choices(TrainingParams().resolved(has_declines=True, n_offers=1682)) == (
        "softmax", "on", "ndcg@k", "cosine")
    assert choices(TrainingParams().resolved(has_declines=True, n_offers=20)) == ("pointwise", "off", "auc", "constant")
    chosen = TrainingParams(loss="softmax", user_history="on", validation_metric="recall@k",
                            learning_rate_schedule="constant")
    assert choices(chosen.resolved(has_declines=True, n_offers=10)) == ("softmax", "on", "recall@k", "constant")
    with pytest.raises(ValueError, match="learning_rate_schedule='linear' is not one of"):
        TrainingParams(learning_rate_schedule="linear")


@pytest.mark.parametrize("schedule", ["cosine", "constant"])
def test_the_learning_rate_follows_its_schedule_over_the_epochs(schedule):
    """Cosine: from learning_rate down a half cosine to 5% of it at the last step; constant: flat."""
    params = TrainingParams(**{**FAST, "epochs": 6, "learning_rate_schedule": schedule})
    result = train_two_tower(implicit_frame(n_customers=40), params)
    rates = np.array([h["learning_rate"] for h in result.history])
    lr = params.learning_rate
    if schedule == "constant":
        assert np.allclose(rates, lr)
    else:
        progress = np.arange(1, 7) / 6  # after each epoch's last step
        assert np.allclose(rates, 0.05 * lr + 0.95 * lr * 0.5 * (1 + np.cos(np.pi * progress)), rtol=1e-6)
        assert rates[-1] == pytest.approx(0.05 * lr)


def test_accepts_only_train_on_pooled_histories_and_rank_the_planted_groups():
    frame = implicit_frame()
    lines = []
    result = train_two_tower(frame, TrainingParams(**{**FAST, "epochs": 15}), log=lines.append)
    model = result.model
    assert result.params.loss == "softmax" and model.uses_history and model.user_tower.id_embedding is None
    assert "sampled declines" in lines[0] and "history pooled" in lines[0]
    whole = train_two_tower(frame, TrainingParams(**{**FAST, "epochs": 15, "loss": "mixed"}), log=lines.append)
    assert "whole catalogue" in lines[-1 - whole.epochs_run - int(whole.stopped_early)]
    assert whole.metrics["ndcg@10"] > 0.5
    # every history is the customer's distinct training accepts, in offer-id codes
    lengths = model.history_lengths(torch.arange(1, len(model.user_encoder.id_vocabulary) + 1))
    assert int(lengths.min()) >= 1 and int(lengths.max()) <= 6
    users = frame.drop_duplicates("customer_id")[["customer_id"]].reset_index(drop=True)
    scores = model.user_embeddings(users) @ model.item_embeddings(catalogue()).T        # [U, N]
    top = np.argsort(-scores, axis=1)[:, :5] // 10
    groups = users["customer_id"].str[1:].astype(int).to_numpy() % N_GROUPS
    assert (top == groups[:, None]).mean() > 0.9, result.history[-1]
    assert result.metrics["ndcg@10"] > 0.5


def test_pooled_history_is_the_unit_mean_of_the_kept_offers_without_the_excluded_one():
    frame = implicit_frame(n_customers=8)
    data = prepare(frame, TrainingParams(**FAST, user_history="on"))
    model = TwoTowerModel(data.params, data.user_encoder, data.item_encoder)
    model.set_history(np.array([1, 1, 1, 2, 1]), np.array([3, 5, 3, 7, 9]))  # customer 1: 3, 5, 9 (distinct)
    table = model.item_tower.id_embedding.weight.detach()
    ids = torch.tensor([1, 1, 2, 3])                                           # 3 has no history
    pooled = model.pooled_history(ids, exclude=torch.tensor([0, 5, 7, 0])).detach()
    torch.testing.assert_close(pooled[0], F.normalize(table[[3, 5, 9]].mean(0), dim=0))
    torch.testing.assert_close(pooled[1], F.normalize(table[[3, 9]].mean(0), dim=0))
    torch.testing.assert_close(pooled[2], torch.zeros(table.shape[1]))        # its only offer excluded
    torch.testing.assert_close(pooled[3], torch.zeros(table.shape[1]))
    dropped = model.pooled_history(torch.ones(2000, dtype=torch.int64), dropout=0.5,
                                   generator=torch.Generator().manual_seed(0)).detach()
    kept = {tuple(np.round(row.numpy(), 5)) for row in dropped}
    assert len(kept) == 8  # the mean of each of the 7 non-empty subsets of the three offers, and zeros
    assert model.history_lengths(torch.tensor([0])).item() == 0               # unknown customers: empty


def test_a_stored_model_keeps_its_histories():
    frame = implicit_frame(n_customers=40)
    result = train_two_tower(frame, TrainingParams(**{**FAST, "epochs": 2}))
    config, state = result.model.to_artefact()
    loaded = TwoTowerModel.from_artefact(config, state)
    users = frame.drop_duplicates("customer_id")[["customer_id"]]
    np.testing.assert_array_equal(loaded.history_items.numpy(), result.model.history_items.numpy())
    np.testing.assert_allclose(loaded.user_embeddings(users), result.model.user_embeddings(users), atol=1e-6)
    unseen = loaded.user_embeddings(pd.DataFrame({"customer_id": ["newcomer"]}))
    assert np.isfinite(unseen).all() and abs(np.linalg.norm(unseen) - 1) < 1e-5


def test_early_stopping_waits_for_min_epochs(monkeypatch):
    from twotower_pipeline.model import train
    monkeypatch.setattr(train, "evaluate", lambda model, data: {"ndcg@10": 0.5, "user_auc": 0.5, "item_auc": 0.5})
    frame = implicit_frame(n_customers=40)
    waited = train_two_tower(frame, TrainingParams(**{**FAST, "epochs": 20, "stopping_rounds": 2, "min_epochs": 7}))
    assert (waited.epochs_run, waited.best_epoch, waited.stopped_early) == (7, 1, True)
    prompt = train_two_tower(frame, TrainingParams(**{**FAST, "epochs": 20, "stopping_rounds": 2, "min_epochs": 1}))
    assert prompt.epochs_run == 3


def test_feature_dropout_leaves_the_history_alone_for_the_dropped_rows_and_only_while_training():
    frame = implicit_frame(n_customers=8).assign(segment=lambda f: "s" + (f["customer_id"].str[1:].astype(int) % 2)
                                                 .astype(str))
    result = train_two_tower(frame, TrainingParams(**{**FAST, "epochs": 2}))
    model = result.model
    assert "segment" in model.user_encoder.categorical
    x = model.user_encoder.encode(frame.drop_duplicates("customer_id").reset_index(drop=True))
    history_only = F.normalize(model.pooled_history(x.ids), dim=1).detach()
    with_features = model.embed_users(x)
    assert not torch.allclose(with_features, history_only, atol=1e-4)   # the features move the vectors
    model.train()
    dropped = model.user_vectors(x, feature_dropout=0.99, generator=torch.Generator().manual_seed(1)).detach()
    same = torch.isclose(dropped, history_only, atol=1e-5).all(dim=1)
    assert same.float().mean() > 0.5                                    # nearly every row: history only
    model.eval()
    torch.testing.assert_close(model.embed_users(x), with_features)      # exported vectors: never dropped


def test_the_popularity_prior_lifts_the_offer_most_customers_accepted():
    # o0 accepted by half of all customers, of every group: a prior keeps its popularity in the cosine
    frame = implicit_frame()
    popular = pd.DataFrame([{"customer_id": f"c{c}", "offer": "o0", "accepted": 1, "uuid": f"p{c}", "price": 1.0,
                             "rank": 1.0, "score": 0.0} for c in range(0, 120, 2)])
    frame = pd.concat([frame, popular]).drop_duplicates(["customer_id", "offer"]).reset_index(drop=True)
    outsiders = pd.DataFrame({"customer_id": [f"c{c}" for c in range(1, 120, 2) if c % N_GROUPS != 0]})

    def lift(prior: float) -> float:
        """How far o0's cosine sits above the mean offer's, for customers outside its group who did
        not accept it."""
        # the prior's share of the cosine is popularity_prior x temperature x log(popularity): the
        # old default temperature (0.2) and a constant rate make the effect large enough to read here
        model = train_two_tower(frame, TrainingParams(**{**FAST, "epochs": 10, "popularity_prior": prior,
                                                         "temperature": 0.2,
                                                         "learning_rate_schedule": "constant"})).model
        scores = model.user_embeddings(outsiders) @ model.item_embeddings(catalogue()).T      # [U, N]
        return float((scores[:, 0] - scores.mean(axis=1)).mean())

    none, some, strong = lift(0.0), lift(1.0), lift(4.0)
    assert none < some < strong and strong > none + 0.15, (none, some, strong)
