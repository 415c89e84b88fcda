"""Online metrics: what customers did with what each run showed them, per day, campaign, run and
arm, and for an experiment the challenger's accept rate minus the champion's with an interval that
stays valid however often it is looked at (`model.sequential`: mSPRT).

An exposure is one presented offer (a flatten row); its accept rate is accepts / exposures with a
95% Wilson interval (offers of one request are counted as independent exposures, as the training
frame counts them). `online_metrics` (the daily asset) keeps one row per (day, campaign, run,
experiment, arm); an experiment's looks are the cumulative sums of its rows from its first day to
each day, so the verdict of a day depends on the days before it (re-computing a day recomputes its
own verdict; a day not yet computed is reported missing, never guessed).

No Dagster here: pandas and the sequential test.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from twotower_pipeline.experiments import CHALLENGER, CHAMPION, LIVE
from twotower_pipeline.model import sequential

#: The flatten columns online metrics read.
EXPOSURE_COLUMNS = ["predictor", "run_id", "experiment", "arm", "rank", "accepted"]
GROUP = ["campaign", "run_id", "experiment", "arm"]
#: What a row says when the presented document did not log it (logged before runs were recorded).
NOT_LOGGED = "(not logged)"
NO_EXPERIMENT = ""
Z95 = 1.959963984540054
BETTER, WORSE, UNDECIDED = "challenger_better", "challenger_worse", "undecided"


def wilson_interval(accepts: np.ndarray, exposures: np.ndarray, z: float = Z95) -> tuple[np.ndarray, np.ndarray]:
    """The Wilson score interval of accepts / exposures (0..1 where there are no exposures)."""
    n = np.asarray(exposures, dtype=float)
    p = np.divide(accepts, n, out=np.zeros_like(n), where=n > 0)
    safe = np.maximum(n, 1.0)
    centre = (p + z * z / (2 * safe)) / (1 + z * z / safe)
    half = z * np.sqrt(p * (1 - p) / safe + z * z / (4 * safe * safe)) / (1 + z * z / safe)
    return np.where(n > 0, centre - half, 0.0), np.where(n > 0, centre + half, 1.0)


def arm_table(exposures: pd.DataFrame, day: pd.Timestamp) -> pd.DataFrame:
    """One row per (campaign, run, experiment, arm) of one day's exposures: exposures, accepts,
    accept rate with its interval, and the same at rank 1. Exposures logged without a run say so
    (`(not logged)`); those outside an experiment are the `live` arm."""
    frame = pd.DataFrame({
        "campaign": _text(exposures, "predictor", NOT_LOGGED),
        "run_id": _text(exposures, "run_id", NOT_LOGGED),
        "experiment": _text(exposures, "experiment", NO_EXPERIMENT),
        "arm": _text(exposures, "arm", LIVE),
        "accepted": pd.to_numeric(exposures.get("accepted", pd.Series(0, index=exposures.index)),
                                  errors="coerce").fillna(0).astype(int).clip(0, 1),
        "first": pd.to_numeric(exposures.get("rank", pd.Series(np.nan, index=exposures.index)),
                               errors="coerce").eq(1).astype(int),
    })
    frame["arm"] = frame["arm"].where(frame["experiment"] != NO_EXPERIMENT, LIVE)
    frame["first_accepted"] = frame["first"] * frame["accepted"]
    table = frame.groupby(GROUP, sort=True).agg(
        exposures=("accepted", "size"), accepts=("accepted", "sum"),
        rank1_exposures=("first", "sum"), rank1_accepts=("first_accepted", "sum")).reset_index()
    table.insert(0, "day", pd.Timestamp(day).tz_convert("UTC") if pd.Timestamp(day).tzinfo else
                 pd.Timestamp(day).tz_localize("UTC"))
    return with_rates(table)


def with_rates(table: pd.DataFrame) -> pd.DataFrame:
    """The rates and intervals of a table of counts (exposures, accepts, rank1_*)."""
    table = table.copy()
    for prefix in ("", "rank1_"):
        n, k = table[f"{prefix}exposures"].to_numpy(float), table[f"{prefix}accepts"].to_numpy(float)
        table[f"{prefix}accept_rate"] = np.divide(k, n, out=np.zeros_like(n), where=n > 0)
        if not prefix:
            table["accept_rate_low"], table["accept_rate_high"] = wilson_interval(k, n)
    for column in ("exposures", "accepts", "rank1_exposures", "rank1_accepts"):
        table[column] = table[column].astype("int64")
    return table


def _text(exposures: pd.DataFrame, column: str, missing: str) -> pd.Series:
    if column not in exposures.columns:
        return pd.Series(missing, index=exposures.index, dtype=object)
    values = exposures[column].astype(object)
    return values.where(values.notna() & (values.astype(str) != ""), missing).astype(str)


def experiment_looks(daily: pd.DataFrame, experiment: str, *, alpha: float = sequential.ALPHA,
                     tau: float = sequential.TAU) -> list[dict]:
    """The experiment's looks, one per day with exposures in both arms: the cumulative counts of
    each arm up to that day and the mSPRT interval of challenger minus champion there, narrowed by
    every earlier look (the intersection of always-valid intervals is always valid) with the
    running minimum p-value."""
    rows = daily[daily["experiment"] == experiment]
    if rows.empty:
        return []
    by_day = rows.groupby([rows["day"].map(_day), "arm"])[["exposures", "accepts"]].sum().unstack("arm", fill_value=0)
    by_day = by_day.sort_index().cumsum()
    looks, low, high, p_value = [], -math.inf, math.inf, 1.0
    for day, counts in by_day.iterrows():
        n_a, k_a = int(counts.get(("exposures", CHAMPION), 0)), int(counts.get(("accepts", CHAMPION), 0))
        n_b, k_b = int(counts.get(("exposures", CHALLENGER), 0)), int(counts.get(("accepts", CHALLENGER), 0))
        if n_a == 0 or n_b == 0:
            continue
        look = sequential.accept_rate_difference(k_a, n_a, k_b, n_b, alpha=alpha, tau=tau)
        low, high, p_value = max(low, look.low), min(high, look.high), min(p_value, look.p_value)
        decision = BETTER if low > 0 else WORSE if high < 0 else UNDECIDED
        looks.append({"day": day, "champion_exposures": n_a, "champion_accepts": k_a, "champion_rate": k_a / n_a,
                      "challenger_exposures": n_b, "challenger_accepts": k_b, "challenger_rate": k_b / n_b,
                      "difference": look.difference, "low": low, "high": high, "p_value": p_value,
                      "decision": decision, "alpha": alpha, "tau": tau})
    return looks


def _day(value) -> str:
    return pd.Timestamp(value).strftime("%Y-%m-%d")


def experiment_days(started_day: str, ended_at, day: str) -> bool:
    """Whether an experiment (started on `started_day`, ended at `ended_at` or running) served on `day`."""
    if day < started_day:
        return False
    return ended_at is None or day <= _day(ended_at)


def markdown_table(table: pd.DataFrame) -> str:
    """The day's rows as a Markdown table for the asset's metadata."""
    header = "| campaign | run | experiment | arm | exposures | accepts | accept rate (95%) | rank 1 rate |\n" \
             "|---|---|---|---|---|---|---|---|\n"
    lines = [f"| {r.campaign} | {r.run_id} | {r.experiment or '-'} | {r.arm} | {r.exposures:,} | {r.accepts:,} | "
             f"{r.accept_rate:.4f} ({r.accept_rate_low:.4f}-{r.accept_rate_high:.4f}) | "
             f"{r.rank1_accept_rate:.4f} of {r.rank1_exposures:,} |" for r in table.itertuples()]
    return header + "\n".join(lines)
