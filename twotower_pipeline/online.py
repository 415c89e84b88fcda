"""Online metrics: what customers did with what each run showed them, per day, campaign, run and
arm, and for an experiment the challenger's accept rate minus the champion's with an interval that
stays valid however often it is looked at (`model.sequential`: mSPRT).

A day's table counts exposures (presented offers, flatten rows): accepts / exposures with a 95%
Wilson interval, descriptive. An experiment's look on a day is computed from all its exposures up
to the end of that day, summed per customer: customers are what the experiment assigns to arms,
and one customer's exposures are not independent, so each arm's variance is taken over its
customers (`sequential.clustered_rate`). Each look's interval is intersected with the earlier
days' recorded looks and the p-value is their running minimum.

No Dagster here: pandas and the sequential test.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from twotower_pipeline.experiments import CHALLENGER, CHAMPION, LIVE
from twotower_pipeline.model import sequential

#: The flatten columns online metrics read: a day's arms, and an experiment's customers.
EXPOSURE_COLUMNS = ["predictor", "run_id", "experiment", "arm", "rank", "accepted"]
EXPERIMENT_COLUMNS = ["customer_id", "arm", "run_id", "accepted"]
GROUP = ["campaign", "run_id", "experiment", "arm"]
#: What a row says when the presented document did not log it (logged before runs were recorded).
NOT_LOGGED = "(not logged)"
NO_EXPERIMENT = ""
Z95 = 1.959963984540054
BETTER, WORSE, UNDECIDED, INVALID = "challenger_better", "challenger_worse", "undecided", "invalid"


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


def arm_customers(batches) -> tuple[pd.DataFrame, dict[str, set[str]]]:
    """Per (arm, customer): exposures and accepts, summed over `batches` of flatten rows
    (customer_id, arm, accepted, run_id), and the runs each arm served: what an experiment's look
    is computed from, streamed so that a long experiment is never held row by row."""
    parts, runs = [], {}
    for batch in batches:
        frame = pd.DataFrame({
            "arm": _text(batch, "arm", LIVE), "customer_id": _text(batch, "customer_id", NOT_LOGGED),
            "run_id": _text(batch, "run_id", NOT_LOGGED),
            "accepted": pd.to_numeric(batch["accepted"], errors="coerce").fillna(0).clip(0, 1).astype(int)})
        parts.append(frame.groupby(["arm", "customer_id"])["accepted"].agg(exposures="size", accepts="sum"))
        for arm, run in frame[["arm", "run_id"]].drop_duplicates().itertuples(index=False):
            runs.setdefault(arm, set()).add(run)
    if not parts:
        return pd.DataFrame(columns=["exposures", "accepts"]), runs
    return pd.concat(parts).groupby(level=[0, 1]).sum(), runs


def experiment_look(totals: pd.DataFrame, runs: dict[str, set[str]], day: str, earlier: list[dict], *,
                    champion_run_id: str | None, challenger_run_id: str, alpha: float = sequential.ALPHA,
                    tau: float = sequential.TAU) -> dict | None:
    """The experiment's look on `day` from its cumulative per-customer counts (`arm_customers`):
    each arm's accept rate with its variance over customers, challenger minus champion with its
    mSPRT interval, narrowed by the `earlier` looks' intervals (verdicts of earlier days with the
    same alpha and tau; an intersection of always-valid intervals is always valid) and with the
    running minimum p-value. None until both arms have exposures. A champion arm that served
    another run than the experiment's champion (the live run changed: a publish or a rollback)
    makes the look `invalid`: it would compare a mix of runs."""
    arms = set(totals.index.get_level_values(0)) if len(totals) else set()
    if not {CHAMPION, CHALLENGER} <= arms:
        return None
    a = sequential.clustered_rate(totals.loc[CHAMPION, "accepts"], totals.loc[CHAMPION, "exposures"])
    b = sequential.clustered_rate(totals.loc[CHALLENGER, "accepts"], totals.loc[CHALLENGER, "exposures"])
    look = sequential.rate_difference(a.rate, a.variance, b.rate, b.variance, alpha=alpha, tau=tau)
    before = [v for v in earlier if v["day"] < day and v.get("alpha") == alpha and v.get("tau") == tau]
    low = max([look.low] + [v["low"] for v in before])
    high = min([look.high] + [v["high"] for v in before])
    problems = [f"the {arm} arm served runs {sorted(runs.get(arm, set()) - {expected})} besides {expected}"
                + (" (the live run changed during the experiment: a publish or a rollback)" if arm == CHAMPION else "")
                + ", so the arms compare a mix of runs"
                for arm, expected in ((CHAMPION, champion_run_id), (CHALLENGER, challenger_run_id))
                if expected is not None and runs.get(arm, set()) - {expected}]
    if not problems and low > high:
        problems.append("the intervals of earlier looks and this one do not overlap: the arms' rates moved (not "
                        "one steady difference)")
    decision = INVALID if problems else BETTER if low > 0 else WORSE if high < 0 else UNDECIDED
    return {"day": day, "decision": decision, "difference": look.difference, "low": low, "high": high,
            "p_value": min([look.p_value] + [v["p_value"] for v in before]),
            "look_low": look.low, "look_high": look.high, "look_p_value": look.p_value, "looks": len(before) + 1,
            **{f"{name}_{field}": getattr(rate, field) for name, rate in (("champion", a), ("challenger", b))
               for field in ("rate", "variance", "customers", "exposures", "accepts")},
            "problems": problems, "alpha": alpha, "tau": tau}


def markdown_table(table: pd.DataFrame) -> str:
    """The day's rows as a Markdown table for the asset's metadata."""
    header = "| campaign | run | experiment | arm | exposures | accepts | accept rate (95%) | rank 1 rate |\n" \
             "|---|---|---|---|---|---|---|---|\n"
    lines = [f"| {r.campaign} | {r.run_id} | {r.experiment or '-'} | {r.arm} | {r.exposures:,} | {r.accepts:,} | "
             f"{r.accept_rate:.4f} ({r.accept_rate_low:.4f}-{r.accept_rate_high:.4f}) | "
             f"{r.rank1_accept_rate:.4f} of {r.rank1_exposures:,} |" for r in table.itertuples()]
    return header + "\n".join(lines)
