"""The serving API's request and response bodies (SPEC §7-§9), as pydantic models.

Ids are strings (a document such as `{"$gt": ""}` in their place is refused before any query),
sizes and `numberoffers` are bounded, unknown fields are refused; FastAPI answers a body that
breaks them with 422 and the list of what is wrong where. What storage or the answer itself cannot
carry is refused here too, never a 500 later: an integer beyond 64 bits (BSON has none), NaN and
infinity (Python's json reads the literals `NaN` and `Infinity`), a lone surrogate (`"\\ud800"`
is valid JSON, not UTF-8).
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, RootModel, StrictBool,
                      StrictFloat, StrictInt, StrictStr, ValidationError, model_validator)
from pydantic_core import InitErrorDetails, PydanticCustomError

from twotower_pipeline.ingest.context import KEY_PATTERN, MAX_KEY_LENGTH, MAX_KEYS, MAX_TEXT_LENGTH

#: Most offers one request may ask for, and most feature rows one sidecar request may send.
MAX_NUMBER_OFFERS = 100
MAX_INSTANCES = 1000
#: A job id: a Dagster run id (a uuid) or an asset backfill's id (eight lowercase letters).
JOB_ID = re.compile(r"^([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|[a-z]{8})$")
#: The integers BSON (and so every logged or recorded document) can hold.
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1


#: Deepest nesting a free-form value (training hyper-parameters) may have.
MAX_DEPTH = 32


def check_value(value, where: str = "") -> None:
    """ValueError naming where (a dotted path under `where`) for what storage or a JSON answer
    cannot hold: an integer beyond 64 bits, NaN or infinity, a string that is not UTF-8 (a lone
    surrogate), nesting deeper than MAX_DEPTH."""
    pending = [(value, where, 0)]
    while pending:
        value, where, depth = pending.pop()
        prefix = f"{where}: " if where else ""
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, int):
            if not INT64_MIN <= value <= INT64_MAX:
                raise ValueError(f"{prefix}an integer outside the signed 64-bit range (-2**63 .. 2**63-1)")
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise ValueError(f"{prefix}NaN and infinity are not numbers this service takes")
        elif isinstance(value, str):
            if not value.isascii():
                try:
                    value.encode("utf-8")
                except UnicodeEncodeError:
                    raise ValueError(f"{prefix}not valid UTF-8 text (a lone surrogate)") from None
        elif isinstance(value, (dict, list, tuple)):
            if depth >= MAX_DEPTH:
                raise ValueError(f"{prefix}nested deeper than {MAX_DEPTH} levels")
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, item in items:
                if isinstance(key, str):
                    pending.append((key, f"{where} (a key)" if where else "a key", depth + 1))
                path = (f"{where}.{key}" if where else str(key)) if isinstance(value, dict) else f"{where}[{key}]"
                pending.append((item, path, depth + 1))


def _utf8(value: str) -> str:
    check_value(value)
    return value


def _storable(value):
    check_value(value)
    return value


#: A string MongoDB can store and a JSON answer can echo.
Text = AfterValidator(_utf8)
Id = Annotated[StrictStr, Field(min_length=1, max_length=200), Text]
#: A request's context follows the flatten's rule (`ingest.context`): what it would drop is refused here.
ContextKey = Annotated[StrictStr, Field(min_length=1, max_length=MAX_KEY_LENGTH, pattern=KEY_PATTERN)]
Scalar = Annotated[Union[StrictBool, StrictInt, StrictFloat, Annotated[StrictStr, Field(max_length=MAX_TEXT_LENGTH)],
                         None], BeforeValidator(_storable)]
#: A feature value: finite (a NaN would become a vector of NaN), and no integer beyond 64 bits
#: (refused alike everywhere).
Finite = Annotated[float, BeforeValidator(_storable), Field(allow_inf_nan=False)]


def _json_safe(value, depth: int = 0):
    """`value` as a JSON answer can carry it: NaN and infinity as text, text without lone
    surrogates, nesting cut at 8 levels (a deep body must not overflow the error's encoder)."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, str):
        return value if value.isascii() else value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, (dict, list, tuple)):
        if depth >= 8:
            return "..."
        if isinstance(value, dict):
            return {_json_safe(str(k), depth + 1): _json_safe(v, depth + 1) for k, v in value.items()}
        return [_json_safe(v, depth + 1) for v in value]
    return value


def _answerable(error: ValidationError) -> ValidationError:
    """The same errors with inputs a JSON answer can carry: FastAPI's 422 echoes each error's
    input, and a NaN or a lone surrogate there makes the answer itself fail (a 500)."""
    errors = error.errors()
    try:  # pydantic's own error types keep their type and context
        return ValidationError.from_exception_data(error.title, [InitErrorDetails(
            type=e["type"], loc=e["loc"], input=_json_safe(e["input"]), **({"ctx": e["ctx"]} if "ctx" in e else {}))
            for e in errors])
    except (KeyError, TypeError, ValueError):  # a type of a validator's own: its message as it was
        return ValidationError.from_exception_data(error.title, [InitErrorDetails(
            type=PydanticCustomError(e["type"], e["msg"]), loc=e["loc"], input=_json_safe(e["input"]))
            for e in errors])


def _answering(cls, data, handler):
    """A body model's wrap validator: its errors with inputs an answer can carry."""
    try:
        return handler(data)
    except ValidationError as error:
        raise _answerable(error) from None


class Answerable(BaseModel):
    """A request body whose validation errors can always be answered (see `_answerable`)."""

    _answerable_errors = model_validator(mode="wrap")(_answering)


class Strict(Answerable):
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


class Instance(Answerable):
    model_config = ConfigDict(extra="allow")
    customer_id: Optional[Id] = None
    offer: Optional[Id] = None
    price: Optional[Finite] = None
    rank: Optional[Finite] = None
    score: Optional[Finite] = None
    tower: Literal["user", "item"] = "user"

    @model_validator(mode="after")
    def _scalars(self):
        for key, value in (self.model_extra or {}).items():
            if not re.match(r"^[A-Za-z0-9_][A-Za-z0-9_\-]{0,63}$", key):
                raise ValueError(f"feature name {key!r} is not a plain name (letters, digits, '_', '-')")
            if not (value is None or isinstance(value, (bool, int, float)) or
                    (isinstance(value, str) and len(value) <= 200)):
                raise ValueError(f"feature {key!r} must be a number, a boolean or a string of up to 200 characters")
            check_value(value, f"feature {key!r}")
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
    limit: Optional[StrictInt] = Field(default=None, ge=1, le=INT64_MAX)


class TrainData(Strict):
    source: TrainSource = Field(default_factory=TrainSource)
    target_column: Literal["accepted"] = "accepted"
    feature_columns: list[Id] = Field(default_factory=list, max_length=200)
    categorical_columns: list[Id] = Field(default_factory=list, max_length=200)
    train_test_split: float = Field(default=0.2, gt=0, lt=1)
    random_state: StrictInt = Field(default=42, ge=0, le=(1 << 32) - 1, description="The training seed.")


class PytorchTrain(Strict):
    model_id: Optional[Id] = None
    model_type: Literal["two_tower"] = "two_tower"
    problem_type: Literal["binary_classification"] = "binary_classification"
    data: TrainData = Field(default_factory=TrainData)
    hyperparameters: Annotated[dict[Id, Any], AfterValidator(_storable)] = Field(max_length=100, description=(
        "SPEC §4 parameters; `predictor` is required, `from_date` / `to_date` optional; no `run_id` "
        "(the service names runs)."))


class TrainParameters(RootModel[Annotated[dict[Id, Any], Field(max_length=100), AfterValidator(_storable)]]):
    """The workbench's train request: SPEC §4 parameters, flat (no `run_id`: the service names runs)."""

    _answerable_errors = model_validator(mode="wrap")(_answering)


class BatchScoreRequest(Strict):
    run_id: Id
    top_k: StrictInt = Field(default=10, ge=1, le=1000)
    max_users: Optional[StrictInt] = Field(default=5000, ge=1, le=(1 << 31) - 1)
    scores_collection: Literal["two_tower_scores"] = "two_tower_scores"


class ExperimentStart(Strict):
    """Start an experiment (`start_experiment_job`): the challenger on `share` of the campaign's customers."""

    experiment: Annotated[StrictStr, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,79}$")]
    campaign: Id
    challenger_run_id: Id
    share: Annotated[float, Field(gt=0.0, lt=1.0, allow_inf_nan=False)] = 0.5
    promote_on_win: StrictBool = False


class ExperimentStop(Strict):
    reason: Annotated[StrictStr, Field(min_length=1, max_length=500), Text]


class ErrorAnswer(BaseModel):
    """Every 4xx/5xx answer: the reason, or for a malformed body the list of what is wrong where."""

    detail: Union[str, list[dict[str, Any]]]


ERRORS = {status: {"model": ErrorAnswer} for status in (400, 401, 404, 409, 413, 421, 422, 429, 502, 503)}


class ConceptTestRequest(Strict):
    run_id: Id
    customer_id: Id
    offers: Optional[list[Id]] = Field(default=None, max_length=10_000)
