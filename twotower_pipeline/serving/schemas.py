"""The serving API's request and response bodies (SPEC §7-§9), as pydantic models.

Ids are strings (a document such as `{"$gt": ""}` in their place is refused before any query),
sizes and `numberoffers` are bounded, unknown fields are refused; FastAPI answers a body that
breaks them with 422 and the list of what is wrong where.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, model_validator

from twotower_pipeline.ingest.context import KEY_PATTERN, MAX_KEY_LENGTH, MAX_KEYS, MAX_TEXT_LENGTH

#: Most offers one request may ask for, and most feature rows one sidecar request may send.
MAX_NUMBER_OFFERS = 100
MAX_INSTANCES = 1000
DAGSTER_RUN_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")

Id = Annotated[StrictStr, Field(min_length=1, max_length=200)]
#: A request's context follows the flatten's rule (`ingest.context`): what it would drop is refused here.
ContextKey = Annotated[StrictStr, Field(min_length=1, max_length=MAX_KEY_LENGTH, pattern=KEY_PATTERN)]
Scalar = Union[StrictBool, StrictInt, StrictFloat, Annotated[StrictStr, Field(max_length=MAX_TEXT_LENGTH)], None]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InvocationRequest(Strict):
    campaign: Id
    subcampaign: Optional[Id] = None
    channel: Id = "default"
    customer: Id
    numberoffers: StrictInt = Field(default=1, ge=1, le=MAX_NUMBER_OFFERS)
    userid: Optional[Id] = None
    in_params: dict[ContextKey, Scalar] = Field(default_factory=dict, max_length=MAX_KEYS)
    eligible_offers: Optional[list[Id]] = Field(default=None, max_length=10_000, description=(
        "Ours: rank only these offers (e.g. the customer's eligible ones); default: the whole offer matrix."))

    @model_validator(mode="before")
    @classmethod
    def _spellings(cls, data):
        """The documentation spells it `sub-campaign` too."""
        if isinstance(data, dict) and "sub-campaign" in data:
            data = dict(data)
            spelled = data.pop("sub-campaign")
            if data.get("subcampaign") is None:
                data["subcampaign"] = spelled
        return data


class OfferResult(BaseModel):
    offer: str
    offer_name: str
    score: float


class RankedOffer(BaseModel):
    rank: int
    result: OfferResult


class InvocationResponse(BaseModel):
    final_result: list[RankedOffer]
    explore: int
    uuid: str


class AcceptedOffer(Strict):
    offer_name: Id


class ResponseRequest(Strict):
    uuid: Id
    offers_accepted: list[AcceptedOffer] = Field(max_length=MAX_NUMBER_OFFERS)
    channel_name: Optional[Id] = None


class ResponseAnswer(BaseModel):
    uuid: str
    offers_accepted: int
    logged: bool


class Instance(BaseModel):
    model_config = ConfigDict(extra="allow")
    customer_id: Optional[Id] = None
    offer: Optional[Id] = None
    price: Optional[float] = None
    rank: Optional[float] = None
    score: Optional[float] = None
    tower: Literal["user", "item"] = "user"

    @model_validator(mode="after")
    def _scalars(self):
        for key, value in (self.model_extra or {}).items():
            if not re.match(r"^[A-Za-z0-9_][A-Za-z0-9_\-]{0,63}$", key):
                raise ValueError(f"feature name {key!r} is not a plain name (letters, digits, '_', '-')")
            if not (value is None or isinstance(value, (bool, int, float)) or
                    (isinstance(value, str) and len(value) <= 200)):
                raise ValueError(f"feature {key!r} must be a number, a boolean or a string of up to 200 characters")
        return self


class PytorchInvocation(Strict):
    model_id: Id
    instances: list[Instance] = Field(min_length=1, max_length=MAX_INSTANCES)


class Prediction(BaseModel):
    prediction: list[float]
    embedding: list[float]


class PytorchPredictions(BaseModel):
    predictions: list[Prediction]
    final_result: list[Prediction]
    framework: str


class TrainSource(Strict):
    database: Id = "logging"
    collection: Id = "ecosystemruntime_flatten"
    pipeline: list[dict[str, Any]] = Field(default_factory=list, max_length=0, description=(
        "Not supported (the training slice is a predictor and a window): must be empty."))
    limit: Optional[StrictInt] = Field(default=None, ge=1)


class TrainData(Strict):
    source: TrainSource = Field(default_factory=TrainSource)
    target_column: Literal["accepted"] = "accepted"
    feature_columns: list[Id] = Field(default_factory=list, max_length=200)
    categorical_columns: list[Id] = Field(default_factory=list, max_length=200)
    train_test_split: float = Field(default=0.2, gt=0, lt=1)
    random_state: StrictInt = 42


class PytorchTrain(Strict):
    model_id: Optional[Id] = None
    model_type: Literal["two_tower"] = "two_tower"
    problem_type: Literal["binary_classification"] = "binary_classification"
    data: TrainData = Field(default_factory=TrainData)
    hyperparameters: dict[Id, Any] = Field(max_length=100, description=(
        "SPEC §4 parameters; `predictor` is required, `from_date` / `to_date` optional."))


class BatchScoreRequest(Strict):
    run_id: Id
    top_k: StrictInt = Field(default=10, ge=1, le=1000)
    max_users: Optional[StrictInt] = Field(default=5000, ge=1)
    scores_collection: Literal["two_tower_scores"] = "two_tower_scores"


class ErrorAnswer(BaseModel):
    """Every 4xx/5xx answer: the reason, or for a malformed body the list of what is wrong where."""

    detail: Union[str, list[dict[str, Any]]]


ERRORS = {status: {"model": ErrorAnswer} for status in (400, 401, 404, 409, 413, 422, 502, 503)}


class ConceptTestRequest(Strict):
    run_id: Id
    customer_id: Id
    offers: Optional[list[Id]] = Field(default=None, max_length=10_000)


def validation_text(error) -> str:
    """A pydantic error as one line: `where: what` for each problem."""
    errors = getattr(error, "errors", None)
    if callable(errors):
        return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in errors())
    return str(error)
