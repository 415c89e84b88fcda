"""Feature encoding: vocabularies with an OOV index, standardised numerics, padded multi-hot lists,
documented context defaults, side-feature detection, JSON round trip."""

import json

import numpy as np
import pandas as pd

from twotower_pipeline.model.features import FeatureEncoder, column_kind, side_feature_columns


def _frame():
    return pd.DataFrame({
        "customer_id": ["c1", "c2", "c1", "c3"],
        "offer": ["a", "b", "b", "a"],
        "accepted": [1, 0, 1, 0],
        "price": [1.0, 3.0, 3.0, 1.0],
        "gender": ["F", "M", "F", "M"],
        "age": [20.0, 40.0, 20.0, 60.0],
        "genres": [["x", "y"], ["y"], ["y"], ["x", "y"]],
        "uuid": ["r1", "r2", "r3", "r4"],
    })


def test_column_kinds():
    f = _frame()
    assert column_kind(f["price"]) == "numeric"
    assert column_kind(f["gender"]) == "categorical"
    assert column_kind(f["genres"]) == "multi_hot"
    assert column_kind(f["price"], categorical=True) == "categorical"


def test_vocabulary_oov_numeric_and_multi_hot_encoding():
    f = _frame()
    enc = FeatureEncoder.fit(f, ["customer_id", "gender", "age", "price", "genres"], id_column="customer_id")
    assert enc.id_vocabulary == ["c1", "c2", "c3"]  # by frequency, then value
    assert enc.multi_hot["genres"] == ["y", "x"]
    new = pd.DataFrame({"customer_id": ["c2", "zz"], "gender": ["M", "other"], "age": [40.0, np.nan],
                        "genres": [["x", "q"], []]})
    x = enc.encode(new)
    assert x.ids.tolist() == [2, 0]                      # unseen customer -> OOV index 0
    assert x.categorical[:, 0].tolist() == [2, 0]        # unseen category -> 0
    mean, std = enc.numeric["age"]
    np.testing.assert_allclose(x.numeric[:, 0].numpy(), [(40 - mean) / std, 0.0], atol=1e-6)  # NaN -> mean
    # price absent: the documented context default 0.0, standardised
    pmean, pstd = enc.numeric["price"]
    np.testing.assert_allclose(x.numeric[:, 1].numpy(), [(0.0 - pmean) / pstd] * 2, atol=1e-6)
    assert x.multi_hot[0].tolist() == [[2, 0], [0, 0]]   # 'q' unseen -> 0 (= padding, ignored)
    assert enc.missing_columns(new) == ["price"]


def test_rank_context_default_is_one():
    f = _frame().assign(rank=[1.0, 2.0, 3.0, 2.0])
    enc = FeatureEncoder.fit(f, ["rank"], id_column=None)
    x = enc.encode(pd.DataFrame({"other": [0]}))
    mean, std = enc.numeric["rank"]
    assert abs(float(x.numeric[0, 0]) - (1.0 - mean) / std) < 1e-6
    slots, defaults = enc.context_defaults()
    assert slots == [0] and abs(float(defaults[0]) - (1.0 - mean) / std) < 1e-6


def test_serialises_to_json_and_back():
    f = _frame()
    enc = FeatureEncoder.fit(f, ["customer_id", "gender", "age", "genres"], id_column="customer_id")
    again = FeatureEncoder.from_dict(json.loads(json.dumps(enc.to_dict())))
    a, b = enc.encode(f), again.encode(f)
    assert all(np.array_equal(p.numpy(), q.numpy()) for p, q in zip(a[:3], b[:3]))
    assert np.array_equal(a.multi_hot[0].numpy(), b.multi_hot[0].numpy())


def test_side_features_follow_the_key_that_determines_them():
    f = _frame().assign(title=lambda d: d["offer"].map({"a": "A", "b": "B"}), constant=1.0)
    user, item = side_feature_columns(f, user_id_column="customer_id", item_id_column="offer",
                                      target_column="accepted")
    assert user == ["gender", "age"]   # constant per customer; 'uuid' is bookkeeping, 'constant' carries nothing
    assert item == ["genres", "title"]
    # what served an exposure is never a feature, even where a key determines it (one run per customer)
    served = f.assign(run_id=f["customer_id"].map(lambda c: f"run_{c}"), arm=f["offer"],
                      propensity=f["customer_id"].map(lambda c: 0.5 if c == f["customer_id"].iloc[0] else 1.0))
    assert side_feature_columns(served, user_id_column="customer_id", item_id_column="offer",
                                target_column="accepted") == (user, item)


def test_numeric_ids_are_matched_as_strings():
    enc = FeatureEncoder.fit(pd.DataFrame({"customer_id": [1, 2, 2]}), ["customer_id"], id_column="customer_id")
    assert enc.encode(pd.DataFrame({"customer_id": ["2", "1", "9"]})).ids.tolist() == [1, 2, 0]
