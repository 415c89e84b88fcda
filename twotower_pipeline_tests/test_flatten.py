"""The flatten join: accepted flags, and every kind of bad document set aside with its reason."""

import datetime as dt
import json

import pandas as pd
import pytest

from twotower_pipeline.ingest.context import DROP_REASONS, MAX_KEYS, MAX_TEXT_LENGTH
from twotower_pipeline.ingest.flatten import EXPOSURE_COLUMNS, REASONS, flatten_runtime_logs, parse_utc
from twotower_pipeline_tests.runtime_docs import DAY, WINDOW, presented, response


def flat(docs, responses=(), orphans=()):
    return flatten_runtime_logs(docs, responses, WINDOW, orphans)


def accepted_map(result):
    frame = result.exposures
    return {(u, o): a for u, o, a in zip(frame["uuid"], frame["offer"], frame["accepted"])}


def test_each_offer_shown_is_a_row_and_accepted_comes_from_the_matching_response():
    result = flat(
        [presented("r1"), presented("r2", customer="c2", offers=("b", "d"))],
        [response("r1", accepted=("a", "c")), response("r2", accepted=("d",), by="offer")],
    )
    assert accepted_map(result) == {
        ("r1", "a"): 1,
        ("r1", "b"): 0,
        ("r1", "c"): 1,
        ("r2", "b"): 0,
        ("r2", "d"): 1,
    }
    frame = result.exposures
    assert frame.loc[frame["uuid"] == "r2", "customer_id"].unique().tolist() == ["c2"]
    assert frame["rank"].tolist() == [1.0, 2.0, 3.0, 1.0, 2.0]
    assert frame["price"].tolist() == [11.0, 12.0, 13.0, 11.0, 12.0]
    assert str(frame["datetime"].dt.tz) == "UTC"
    assert result.counts["accepted"] == 3 and result.counts["quarantined"] == 0
    assert result.rejected_share == 0.0


def test_customer_from_params_when_api_params_lacks_it():
    doc = presented("r1", api_params={"channel": "app"}, params=[{"key": "customer", "value": 77}])
    assert flat([doc]).exposures["customer_id"].unique().tolist() == ["77"]


@pytest.mark.parametrize(
    "doc, reason, detail_fragment",
    [
        (presented("r9", api_params={}, params=[]), "missing_customer", "customer"),
        (presented("r9", final_result=[]), "empty_final_result", "empty"),
        (presented("r9", final_result={"rank": 1}), "malformed_final_result", "dict"),
        (presented("r9", predictor=None), "missing_predictor", "predictor"),
        (presented(None), "missing_uuid", "uuid"),
        (presented("r9", date_log="2024-03-05T10:00:00"), "naive_datetime", "timezone"),
    ],
)
def test_bad_documents_are_quarantined_with_their_reason(doc, reason, detail_fragment):
    result = flat([presented("ok"), doc])
    assert result.counts[f"rejected_{reason}"] == 1
    assert set(result.exposures["uuid"]) == {"ok"}
    row = result.quarantine.iloc[0]
    assert row["reason"] == reason and detail_fragment in row["detail"]
    assert row["source"] == "presented"
    assert WINDOW[0] <= row["datetime"] < WINDOW[1]
    # the raw document stays inspectable
    assert json.loads(row["document"])["final_result"] == json.loads(json.dumps(doc["final_result"], default=str))


def test_bad_exposures_are_set_aside_and_the_rest_of_the_request_kept():
    doc = presented("r1", offers=("a", "b", "c", "d"))
    doc["final_result"][1]["result"]["price"] = "ten"
    doc["final_result"][2]["result"]["score"] = [0.5]
    doc["final_result"][3]["result"] = {"score": 1.0}
    result = flat([doc], [response("r1", accepted=("a",))])
    assert result.exposures["offer"].tolist() == ["a"]
    reasons = dict(zip(result.quarantine["reason"], result.quarantine["detail"]))
    assert reasons["non_numeric_price"] == "final_result[1].result.price = 'ten' is not a number"
    assert "final_result[2].result.score" in reasons["non_numeric_score"]
    assert "final_result[3]" in reasons["malformed_offer"]


def test_a_document_with_many_bad_offers_is_stored_once():
    doc = presented("r1", offers=tuple(f"o{i}" for i in range(1000)))
    for entry in doc["final_result"]:
        entry["result"]["price"] = "free"
    result = flat([doc])
    assert result.counts["rejected_non_numeric_price"] == 1000
    [row] = result.quarantine.to_dict("records")
    assert row["items"] == 1000 and row["detail"].endswith("; and 995 more")
    assert len(json.loads(row["document"])["final_result"]) == 1000
    # a second reason on the same document gets its own row, without a second copy of the document
    doc["final_result"][0]["result"]["score"] = "high"
    doc["final_result"][0]["result"]["price"] = 1.0
    rows = flat([doc]).quarantine.sort_values("reason")
    assert rows["reason"].tolist() == ["non_numeric_price", "non_numeric_score"]
    assert rows["document"].notna().sum() == 1


def test_numeric_strings_are_numbers_and_missing_context_stays_missing():
    doc = presented("r1", offers=("a", "b"))
    doc["final_result"][0]["result"]["price"] = " 12.5 "
    del doc["final_result"][1]["result"]["price"]
    frame = flat([doc]).exposures
    assert frame["price"].iloc[0] == 12.5
    assert frame["price"].isna().iloc[1]


def test_duplicate_uuid_keeps_the_earliest_document():
    early = presented("r1", customer="first", when=DAY + dt.timedelta(hours=1))
    late = presented("r1", customer="second", when=DAY + dt.timedelta(hours=2))
    result = flat([late, early])
    assert result.exposures["customer_id"].unique().tolist() == ["first"]
    assert result.counts["rejected_duplicate_uuid"] == 1


def test_responses_accepting_unshown_offers_or_malformed_are_quarantined():
    bad_shape = response("r1")
    bad_shape["response"]["offers_accepted"] = "a"
    result = flat([presented("r1")], [response("r1", accepted=("a", "zzz")), bad_shape])
    assert accepted_map(result)[("r1", "a")] == 1
    assert result.counts["rejected_accepted_not_shown"] == 1
    assert result.counts["rejected_malformed_response"] == 1
    assert set(result.quarantine["source"]) == {"response"}


def test_orphan_responses_are_counted():
    result = flat([presented("r1")], [], [response("ghost")])
    assert result.counts["rejected_orphan_response"] == 1
    assert result.quarantine["uuid"].tolist() == ["ghost"]


def test_string_dates_with_an_offset_are_converted_and_filed_under_their_utc_day():
    inside = presented("r1", date_log="2024-03-05T23:30:00-01:00")  # 2024-03-06 00:30 UTC: next day
    also_inside = presented("r2", date_log="2024-03-06T01:00:00+02:00")  # 2024-03-05 23:00 UTC
    result = flat([inside, also_inside])
    assert set(result.exposures["uuid"]) == {"r2"}
    assert result.counts["quarantined"] == 0


def test_naive_date_strings_of_a_neighbouring_day_are_left_to_that_day():
    result = flat([presented("r1", date_log="2024-03-04T22:00:00")])
    assert result.counts["quarantined"] == 0 and result.exposures.empty


def test_rejected_share_counts_every_reason():
    result = flat([presented("r1", offers=("a", "b", "c")), presented("r2", api_params={}, params=[])])
    assert result.rejected_share == pytest.approx(1 / 4)
    assert all(f"rejected_{r}" in result.counts for r in REASONS)


def test_parse_utc():
    assert parse_utc("2024-03-05T10:00:00Z")[0] == DAY + dt.timedelta(hours=10)
    assert parse_utc("2024-03-05T10:00:00") == (None, "naive_datetime")
    assert parse_utc(12345) == (None, "naive_datetime")


def test_request_context_becomes_context_columns_on_every_exposure_of_the_request():
    result = flat([
        presented("r1", in_params={"weather": "Sunny", "temperature": 55, "alone": True}),
        presented("r2", customer="c2", offers=("b",), in_params={"weather": "Rainy"}),
        presented("r3", customer="c3", offers=("c",)),
        presented("r4", customer="c4", offers=("a",), api_params={"customer": "c4", "in_params": {"weather": "Snowy"}}),
    ], [response("r1", accepted=("a",))])
    frame = result.exposures.set_index(["uuid", "offer"])
    assert [c for c in frame.columns if c.startswith("context_")] == [
        "context_alone", "context_temperature", "context_weather"]
    weather = frame["context_weather"]
    assert weather.fillna("-").tolist() == ["Sunny"] * 3 + ["Rainy", "-", "Snowy"]
    assert frame.loc[("r1", "b"), "context_temperature"] == 55
    assert pd.isna(frame.loc[("r2", "b"), "context_temperature"])
    assert frame.loc[("r1", "c"), "context_alone"] == True  # noqa: E712 (a numpy or Python bool)
    assert result.counts["quarantined"] == 0 and result.rejected_share == 0.0


def test_documents_without_context_keep_the_documented_columns_only():
    result = flat([presented("r1")])
    assert list(result.exposures.columns) == list(EXPOSURE_COLUMNS)
    assert all(result.counts[f"dropped_context_{r}"] == 0 for r in DROP_REASONS)


@pytest.mark.parametrize(
    "in_params, reason, kept",
    [
        ("sunny", "malformed", {}),
        ([1, 2], "malformed", {}),
        ({"weather": {"sky": "blue"}, "hour": 7}, "non_scalar", {"context_hour": 7}),
        ({"weather": ["a"], "hour": 7}, "non_scalar", {"context_hour": 7}),
        ({"when": dt.datetime(2024, 3, 5, tzinfo=dt.timezone.utc), "hour": 7}, "non_scalar", {"context_hour": 7}),
        ({"note": "x" * (MAX_TEXT_LENGTH + 1), "hour": 7}, "too_long", {"context_hour": 7}),
        ({"a.b": 1, "$x": 2, "": 3, "hour": 7}, "bad_key", {"context_hour": 7}),
        ({f"k{i:02d}": i for i in range(MAX_KEYS + 2)}, "too_many",
         {f"context_k{i:02d}": i for i in range(MAX_KEYS)}),
    ],
)
def test_dirty_context_values_are_dropped_and_counted_and_the_exposures_kept(in_params, reason, kept):
    result = flat([presented("ok"), presented("r9", customer="c9", offers=("a", "b"), in_params=in_params)],
                  [response("r9", accepted=("b",))])
    assert result.counts[f"dropped_context_{reason}"] >= 1
    assert result.counts["quarantined"] == 0 and result.rejected_share == 0.0
    frame = result.exposures[result.exposures["uuid"] == "r9"]
    assert frame["accepted"].tolist() == [0, 1]
    row = {c: v for c, v in frame.iloc[0].items() if c.startswith("context_") and not pd.isna(v)}
    assert row == kept


def test_none_and_nan_context_values_are_absent_keys_not_dropped_ones():
    result = flat([presented("r1", in_params={"weather": None, "temperature": float("nan"), "hour": 7})])
    assert [c for c in result.exposures.columns if c.startswith("context_")] == ["context_hour"]
    assert sum(result.counts[f"dropped_context_{r}"] for r in DROP_REASONS) == 0


def test_what_served_a_request_is_kept_on_its_exposures_and_never_guessed():
    served = presented("r1", run_id="run_7", experiment="exp_1", arm="challenger", explore=1)
    for entry, propensity in zip(served["final_result"], (0.5, "0.25", "x")):
        entry["result"]["propensity"] = propensity
    old = presented("r2", customer="c2")  # logged before the runtime wrote any of it
    bad = presented("r3", customer="c3", explore="yes")
    for entry, propensity in zip(bad["final_result"], (0, 1.5, None)):
        entry["result"]["propensity"] = propensity
    frame = flat([served, old, bad]).exposures.set_index("uuid")
    assert frame.loc["r1", "run_id"].tolist() == ["run_7"] * 3
    assert frame.loc["r1", ["experiment", "arm"]].drop_duplicates().values.tolist() == [["exp_1", "challenger"]]
    assert frame.loc["r1", "explore"].tolist() == [1.0] * 3
    assert frame.loc["r1", "propensity"].tolist()[:2] == [0.5, 0.25] and pd.isna(frame.loc["r1", "propensity"].iloc[2])
    for request in ("r2", "r3"):  # absent or not a probability: missing, and the exposures kept
        assert frame.loc[request, ["run_id", "experiment", "arm"]].isna().all().all()
        assert frame.loc[request, ["explore", "propensity"]].isna().all().all() and len(frame.loc[request]) == 3
