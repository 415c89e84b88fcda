"""TrainingParams: documented defaults, every range checked, unknown keys named."""

import pytest

from twotower_pipeline.model.config import TrainingParams


def test_documented_defaults():
    p = TrainingParams()
    assert (p.embedding_dim, p.epochs, p.stopping_rounds, p.batch_size, p.hidden, p.learning_rate) == (
        32, 25, 3, 256, 64, 0.001)
    assert p.user_features == ["customer_id", "price", "rank", "score"]
    assert p.item_features == ["offer", "price", "rank", "score"]
    assert p.categorical_columns == []
    assert (p.user_id_column, p.item_id_column, p.target_column) == ("customer_id", "offer", "accepted")
    assert (p.validation_split, p.seed) == (0.2, 42)


@pytest.mark.parametrize("name, value, allowed", [
    ("embedding_dim", 3, "4..256"), ("embedding_dim", 257, "4..256"), ("epochs", 0, "1..500"),
    ("epochs", 501, "1..500"), ("stopping_rounds", 51, "0..50"), ("stopping_rounds", -1, "0..50"),
    ("validation_split", 0.9, "0.05..0.5"), ("context_dropout", 1.5, "0..1"), ("popularity_prior", -0.1, "0..5"),
])
def test_out_of_range_names_parameter_value_and_range(name, value, allowed):
    with pytest.raises(ValueError) as error:
        TrainingParams.from_dict({name: value})
    message = str(error.value)
    assert name in message and repr(value) in message and allowed in message


def test_wrong_types_and_choices_are_rejected():
    with pytest.raises(ValueError, match="embedding_dim=32.5 must be an integer"):
        TrainingParams(embedding_dim=32.5)
    with pytest.raises(ValueError, match="epochs=True must be an integer"):
        TrainingParams(epochs=True)
    with pytest.raises(ValueError, match="loss='hinge' is not one of"):
        TrainingParams(loss="hinge")
    with pytest.raises(ValueError, match="user_features"):
        TrainingParams(user_features="customer_id")
    with pytest.raises(ValueError, match="logq_correction"):
        TrainingParams(logq_correction="yes")


def test_unknown_keys_are_listed():
    with pytest.raises(ValueError) as error:
        TrainingParams.from_dict({"embedding_dim": 16, "embeding_dim": 16, "dropout": 0.1})
    assert "['dropout', 'embeding_dim']" in str(error.value)


def test_round_trip_through_a_dict():
    p = TrainingParams(embedding_dim=16, loss="mixed", user_features=["customer_id", "age"])
    assert TrainingParams.from_dict(p.to_dict()) == p
