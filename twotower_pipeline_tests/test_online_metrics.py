"""Online metrics on their own (pandas, no server): the arms of a day's exposures, the Wilson
interval, and an experiment's looks (cumulative counts, the always-valid interval narrowed look by
look, the running minimum p-value)."""

import numpy as np
import pandas as pd
import pytest

from twotower_pipeline import online
from twotower_pipeline.model import sequential

DAY = pd.Timestamp("2025-03-01", tz="UTC")


def _exposures(rows):
    return pd.DataFrame(rows, columns=["predictor", "run_id", "experiment", "arm", "rank", "accepted"])


def test_a_days_exposures_are_counted_per_campaign_run_and_arm_with_rank_one_apart():
    frame = _exposures([
        ("c", "r1", "e", "champion", 1, 1), ("c", "r1", "e", "champion", 2, 0), ("c", "r1", "e", "champion", 1, 0),
        ("c", "r2", "e", "challenger", 1, 1), ("c", "r2", "e", "challenger", 2, 1),
        ("c", "r1", None, "live", 1, 0),
        ("d", None, None, None, 3, 1),  # logged before runs were recorded
    ])
    table = online.arm_table(frame, DAY).set_index(["campaign", "run_id", "experiment", "arm"])
    champion = table.loc[("c", "r1", "e", "champion")]
    assert (champion.exposures, champion.accepts, champion.rank1_exposures, champion.rank1_accepts) == (3, 1, 2, 1)
    assert champion.accept_rate == pytest.approx(1 / 3) and champion.rank1_accept_rate == pytest.approx(0.5)
    assert table.loc[("c", "r2", "e", "challenger")].accept_rate == 1.0
    assert table.loc[("c", "r1", "", "live")].exposures == 1
    old = table.loc[("d", online.NOT_LOGGED, "", "live")]
    assert (old.exposures, old.accepts, old.rank1_exposures) == (1, 1, 0)
    assert set(table["day"]) == {DAY} and len(table) == 4
    assert "| c | r2 | e | challenger | 2 | 2 |" in online.markdown_table(table.reset_index())


def test_the_wilson_interval_matches_its_formula_and_stays_within_0_and_1():
    low, high = online.wilson_interval(np.array([0, 5, 10, 0]), np.array([10, 10, 10, 0]))
    # 5 of 10: centre 0.5, half z*sqrt(0.025 + z^2/400)/(1 + z^2/10)
    z = online.Z95
    half = z * np.sqrt(0.025 + z * z / 400) / (1 + z * z / 10)
    assert low[1] == pytest.approx(0.5 - half) and high[1] == pytest.approx(0.5 + half)
    assert low[0] == 0.0 and 0 < high[0] < 0.35 and high[2] == pytest.approx(1.0) and 0.65 < low[2] < 1
    assert (low[3], high[3]) == (0.0, 1.0)  # no exposures: nothing known


def _day_rows(day, champion, challenger):
    rows = []
    for arm, run, (accepts, exposures) in (("champion", "a", champion), ("challenger", "b", challenger)):
        rows.append({"day": pd.Timestamp(day, tz="UTC"), "campaign": "c", "run_id": run, "experiment": "e",
                     "arm": arm, "exposures": exposures, "accepts": accepts, "rank1_exposures": 0,
                     "rank1_accepts": 0})
    return rows


def test_an_experiments_looks_are_cumulative_narrowed_and_keep_the_smallest_p_value():
    daily = pd.DataFrame(_day_rows("2025-03-01", (100, 1000), (130, 1000))
                         + _day_rows("2025-03-02", (90, 1000), (140, 1000))
                         + _day_rows("2025-03-03", (120, 1000), (100, 1000)))
    daily = pd.concat([daily, pd.DataFrame([{**daily.iloc[0].to_dict(), "experiment": "other"}])])
    looks = online.experiment_looks(daily, "e")
    assert [look["day"] for look in looks] == ["2025-03-01", "2025-03-02", "2025-03-03"]
    assert [(look["champion_accepts"], look["champion_exposures"]) for look in looks] == [
        (100, 1000), (190, 2000), (310, 3000)]
    for i, look in enumerate(looks):
        fresh = sequential.accept_rate_difference(look["champion_accepts"], look["champion_exposures"],
                                                  look["challenger_accepts"], look["challenger_exposures"])
        assert look["difference"] == pytest.approx(fresh.difference)
        earlier = looks[:i + 1]
        assert look["low"] == pytest.approx(max(
            sequential.accept_rate_difference(x["champion_accepts"], x["champion_exposures"],
                                              x["challenger_accepts"], x["challenger_exposures"]).low for x in earlier))
        assert look["p_value"] == min(x["p_value"] for x in earlier) <= fresh.p_value
    assert looks[1]["decision"] == online.BETTER
    # the third day's worse rates lower this look's estimate, not what was already shown
    assert looks[2]["low"] >= looks[1]["low"] and looks[2]["decision"] == online.BETTER
    assert online.experiment_looks(daily, "missing") == []


def test_a_day_without_the_challengers_arm_is_not_a_look():
    rows = _day_rows("2025-03-01", (10, 100), (0, 0))
    assert online.experiment_looks(pd.DataFrame(rows), "e") == []
