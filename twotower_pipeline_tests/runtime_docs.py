"""Small hand-made runtime log documents, shaped as SPEC §3 describes them."""

import datetime as dt

DAY = dt.datetime(2024, 3, 5, tzinfo=dt.timezone.utc)
WINDOW = (DAY, DAY + dt.timedelta(days=1))


def presented(uuid, customer="c1", offers=("a", "b", "c"), when=None, predictor="p1", **overrides):
    doc = {
        "uuid": uuid,
        "predictor": predictor,
        "date_log": when or DAY + dt.timedelta(hours=10),
        "api_params": {"customer": customer, "channel": "app"},
        "params": [{"key": "customer", "value": customer}],
        "final_result": [
            {"rank": i, "result": {"offer": o, "offer_name": o, "score": 0.9 - 0.1 * i, "price": 10.0 + i}}
            for i, o in enumerate(offers, start=1)
        ],
    }
    doc.update(overrides)
    return doc


def response(uuid, accepted=("a",), when=None, by="offer_name"):
    return {
        "uuid": uuid,
        "predictor": "p1",
        "date_log": when or DAY + dt.timedelta(hours=10, minutes=1),
        "response": {"offers_accepted": [{by: o} for o in accepted], "channel_name": "app"},
    }
