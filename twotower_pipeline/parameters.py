"""What a retrain is asked for, declared once and free of Dagster: the training window (a
predictor and its days) beside the training parameters (`model.config.TrainingParams`). The
launchpads (`defs`) add their behaviour to these; the workbench validates a request with them
without importing the Dagster definitions."""

from __future__ import annotations

import datetime as dt
from typing import Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from twotower_pipeline.model.config import TrainingParams

UTC = dt.timezone.utc


def parse_day(value: str, field: str) -> dt.datetime:
    try:
        day = dt.datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{field} {value!r} is not an ISO date such as 2024-01-31") from None
    return day.replace(tzinfo=UTC) if day.tzinfo is None else day.astimezone(UTC)


class TrainingWindow(BaseModel):
    """One predictor's exposures between two days (UTC)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    predictor: str = Field(description="The runtime predictor (use case) to train on. Required.", min_length=1)
    from_date: Optional[str] = Field(default=None, description="First day included (UTC, ISO date); default: all.")
    to_date: Optional[str] = Field(default=None, description="First day excluded (UTC, ISO date); default: all.")
    min_accepted_rows: int = Field(default=50, ge=1, description="The frame needs at least this many accepted rows.")

    @field_validator("from_date", "to_date")
    @classmethod
    def _iso_day(cls, value, info):
        if value is not None:
            parse_day(value, info.field_name)
        return value

    @model_validator(mode="after")
    def _ordered(self):
        if self.from_date and self.to_date and \
                parse_day(self.from_date, "from_date") >= parse_day(self.to_date, "to_date"):
            raise ValueError(f"from_date {self.from_date} must be before to_date {self.to_date}")
        return self

    def window(self) -> tuple[dt.datetime, dt.datetime]:
        start = parse_day(self.from_date, "from_date") if self.from_date else dt.datetime.min.replace(tzinfo=UTC)
        end = parse_day(self.to_date, "to_date") if self.to_date else dt.datetime.max.replace(tzinfo=UTC)
        return start, end


class RetrainParameters(TrainingParams, TrainingWindow):
    """A retrain's request: the window and every training parameter (no run id: runs are named
    by whoever launches them)."""
