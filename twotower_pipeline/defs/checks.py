"""Data-quality checks on frames, as check results the assets emit with their output."""

import dagster as dg
import pandas as pd


def schema_check(asset_key, frame: pd.DataFrame, expected: dict[str, str], name: str = "schema") -> dg.AssetCheckResult:
    """Every expected column is present with the expected kind ("string", "number", "datetime")."""
    kinds = {
        "string": _is_string,
        "number": pd.api.types.is_numeric_dtype,
        "datetime": pd.api.types.is_datetime64_any_dtype,
    }
    problems = []
    for column, kind in expected.items():
        if column not in frame.columns:
            problems.append(f"{column}: missing")
        elif len(frame) and not kinds[kind](frame[column]):
            problems.append(f"{column}: {frame[column].dtype}, expected {kind}")
    return dg.AssetCheckResult(
        asset_key=asset_key,
        check_name=name,
        passed=not problems,
        metadata={
            "problems": dg.MetadataValue.md("\n".join(f"- {p}" for p in problems) or "none"),
            "columns": len(frame.columns),
        },
    )


def no_null_keys_check(asset_key, frame: pd.DataFrame, keys: list[str]) -> dg.AssetCheckResult:
    nulls = {
        k: int(frame[k].isna().sum() + (frame[k].astype(str).str.strip() == "").sum())
        for k in keys
        if k in frame.columns
    }
    return dg.AssetCheckResult(
        asset_key=asset_key,
        check_name="no_null_keys",
        passed=sum(nulls.values()) == 0,
        metadata={f"null_{k}": v for k, v in nulls.items()},
    )


def accepts_check(asset_key, frame: pd.DataFrame, severity=dg.AssetCheckSeverity.ERROR) -> dg.AssetCheckResult:
    """Nothing accepted cannot teach a model anything; no declines at all is implicit feedback (a
    file of accepts only), which trains: declines are then sampled (`decline_sampling`)."""
    rate = float(frame["accepted"].mean()) if len(frame) else 0.0
    feedback = ("none" if not len(frame) or rate == 0.0 else
                "implicit (accepts only: declines are sampled in training)" if rate == 1.0 else
                "explicit (accepts and declines)")
    return dg.AssetCheckResult(
        asset_key=asset_key,
        check_name="has_accepts",
        passed=bool(len(frame)) and rate > 0.0,
        severity=severity,
        description=None if rate > 0.0 else "no exposure is accepted: there is nothing to learn from",
        metadata={"accept_rate": rate, "rows": len(frame), "feedback": feedback},
    )


def _is_string(values: pd.Series) -> bool:
    return pd.api.types.is_string_dtype(values) or values.dtype == object
