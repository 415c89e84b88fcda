"""Online metrics on their own (pandas, no server): the arms of a day's exposures, the Wilson
interval, and an experiment's looks (per-customer totals, the always-valid interval narrowed by
earlier looks, the running minimum p-value, runs mixed in an arm)."""

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


def _rows(customers, arm, run, accepts_per_customer, exposures_per_customer):
    rows = []
    for customer in customers:
        rows += [{"customer_id": customer, "arm": arm, "run_id": run, "accepted": int(i < accepts_per_customer)}
                 for i in range(exposures_per_customer)]
    return rows


def test_an_experiments_customers_are_summed_across_batches():
    first = pd.DataFrame(_rows(["a", "b"], "champion", "r1", 1, 3) + _rows(["x"], "challenger", "r2", 2, 3))
    second = pd.DataFrame(_rows(["a"], "champion", "r1", 0, 2) + _rows(["y"], "challenger", "r2", 3, 3))
    totals, runs = online.arm_customers([first, second])
    assert totals.loc[("champion", "a")].tolist() == [5, 1] and totals.loc[("champion", "b")].tolist() == [3, 1]
    assert totals.loc["challenger"]["accepts"].to_dict() == {"x": 2, "y": 3}
    assert runs == {"champion": {"r1"}, "challenger": {"r2"}}
    empty, none = online.arm_customers([])
    assert len(empty) == 0 and none == {}


def _totals(champion, challenger, run_a="r1", run_b="r2"):
    """Per-customer totals of 200 customers an arm: (accepts of a customer, exposures of each)."""
    frame = pd.DataFrame(_rows([f"a{i}" for i in range(200)], "champion", run_a, *champion)
                         + _rows([f"b{i}" for i in range(200)], "challenger", run_b, *challenger))
    return online.arm_customers([frame])


def test_a_look_is_over_customers_narrowed_by_earlier_looks_and_keeps_the_smallest_p_value():
    totals, runs = _totals((1, 5), (2, 5))  # 20% against 40%, every customer alike
    look = online.experiment_look(totals, runs, "2025-03-02", [], champion_run_id="r1", challenger_run_id="r2")
    a = sequential.clustered_rate([1] * 200, [5] * 200)
    b = sequential.clustered_rate([2] * 200, [5] * 200)
    fresh = sequential.rate_difference(a.rate, a.variance, b.rate, b.variance)
    assert (look["difference"], look["low"], look["high"], look["p_value"]) == pytest.approx(
        (fresh.difference, fresh.low, fresh.high, fresh.p_value))
    assert look["decision"] == online.BETTER and look["looks"] == 1 and look["problems"] == []
    assert (look["champion_customers"], look["champion_exposures"], look["challenger_accepts"]) == (200, 1000, 400)
    earlier = [{**look, "day": "2025-03-01", "low": fresh.low + 0.01, "high": fresh.high - 0.02, "p_value": 1e-15},
               {**look, "day": "2025-03-03", "low": 0.5, "high": 0.6, "p_value": 0.0},  # a later day: not a look
               {**look, "day": "2025-02-28", "low": -1.0, "high": 1.0, "p_value": 1e-12, "tau": 0.05}]  # other tau
    narrowed = online.experiment_look(totals, runs, "2025-03-02", earlier, champion_run_id="r1",
                                      challenger_run_id="r2")
    assert narrowed["low"] == pytest.approx(fresh.low + 0.01) and narrowed["high"] == pytest.approx(fresh.high - 0.02)
    assert narrowed["p_value"] == 1e-15 < fresh.p_value and narrowed["look_p_value"] == pytest.approx(fresh.p_value)
    assert narrowed["looks"] == 2


def test_a_look_that_mixes_runs_or_contradicts_earlier_ones_is_invalid_and_one_arm_is_no_look():
    totals, runs = _totals((1, 5), (1, 5))
    mixed = {**runs, "champion": {"r1", "r9"}}
    look = online.experiment_look(totals, mixed, "2025-03-02", [], champion_run_id="r1", challenger_run_id="r2")
    assert look["decision"] == online.INVALID and "['r9'] besides r1" in look["problems"][0]
    apart = [{"day": "2025-03-01", "low": 0.3, "high": 0.4, "p_value": 0.01, "alpha": sequential.ALPHA,
              "tau": sequential.TAU}]
    look = online.experiment_look(totals, runs, "2025-03-02", apart, champion_run_id="r1", challenger_run_id="r2")
    assert look["decision"] == online.INVALID and "do not overlap" in look["problems"][0]
    only_champion = totals.loc[["champion"]]
    assert online.experiment_look(only_champion, runs, "2025-03-02", [], champion_run_id="r1",
                                  challenger_run_id="r2") is None


def test_customers_who_accept_alike_make_a_wider_interval_than_independent_exposures():
    # the same 20% and 40% rates, but each customer accepts all of their offers or none
    alike, runs = _totals((5, 5), (5, 5))
    alike = alike.copy()
    alike.loc["champion", "accepts"] = [5 if i < 40 else 0 for i in range(200)]
    alike.loc["challenger", "accepts"] = [5 if i < 80 else 0 for i in range(200)]
    spread, _ = _totals((1, 5), (2, 5))
    wide = online.experiment_look(alike, runs, "d", [], champion_run_id="r1", challenger_run_id="r2")
    narrow = online.experiment_look(spread, runs, "d", [], champion_run_id="r1", challenger_run_id="r2")
    assert wide["difference"] == pytest.approx(narrow["difference"]) == pytest.approx(0.2)
    assert wide["high"] - wide["low"] > 1.5 * (narrow["high"] - narrow["low"])
