"""A user's own exposures file (CSV or Parquet) as runtime logs, checked in full before use.

One row per offer shown. Required columns: `customer_id`, `offer`, `accepted` (0/1, also
true/false and yes/no) and `timestamp` (ISO 8601 with a UTC offset or `Z`, or epoch seconds; a
time without a timezone is refused rather than guessed). Optional: `price` and `score` (numeric;
an absent column or empty cell is 0.0) and `request_id` (rows sharing one are one request, shown
in timestamp then file order; without it, or where it is empty, each row is its own request).
A column named `context_<key>` is the request's context: the request's `in_params[key]` (its
first row's value; numbers when every non-empty cell is one, an empty cell is a key not sent).
Every other column is a customer feature, taken from the customer's latest row.

The whole file is validated before anything is built: the first problem found raises
:class:`ImportFileError`, naming the file, the column, the first bad row and how many rows are
bad. In a CSV, rows are counted as a spreadsheet shows them (the header is line 1, so the first
data row is line 2); in Parquet, data rows are counted from 1.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import numpy as np
import pandas as pd

from twotower_pipeline.ingest.context import is_context_column
from twotower_pipeline.ingest.runtime_logs import RuntimeLogs, build_runtime_logs

REQUIRED = ("customer_id", "offer", "accepted", "timestamp")
OPTIONAL = ("price", "score", "request_id")
CSV_SUFFIXES = (".csv", ".csv.gz")
PARQUET_SUFFIXES = (".parquet", ".pq")
_ACCEPTED = {"1": 1, "1.0": 1, "true": 1, "yes": 1, "0": 0, "0.0": 0, "false": 0, "no": 0}
_ISO_WITH_ZONE = re.compile(
    r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?\s*(Z|[+-]\d{2}(:?\d{2})?)$", re.IGNORECASE
)
_LINE = "__line__"
_ISO_NAIVE = re.compile(r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?)?$", re.IGNORECASE)
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")
#: Epoch seconds at or beyond this (year 5138) are almost surely milliseconds.
_MAX_EPOCH_SECONDS = 1e11


class ImportFileError(ValueError):
    """A file that cannot be imported as it is; `column`, `line` and `n_bad` say where."""

    def __init__(self, message: str, *, path: Path, column: str | None = None, line: int | None = None,
                 n_bad: int = 0):
        super().__init__(message)
        self.path = path
        self.column = column
        self.line = line
        self.n_bad = n_bad


def _read(path: Path) -> tuple[pd.DataFrame, str, int]:
    """The file as a frame, the word for a row position ("line"/"row") and the offset to it."""
    name = path.name.lower()
    if name.endswith(CSV_SUFFIXES):
        # Strings only, so every cell can be checked as the user wrote it; blank lines are kept
        # (and dropped below) so that row positions stay the file's line numbers.
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, skip_blank_lines=False)
        return frame, "line", 2
    if name.endswith(PARQUET_SUFFIXES):
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise ImportError(
                f"reading {path} needs pyarrow, which is not installed: pip install pyarrow"
            ) from None
        frame = pq.read_table(path).to_pandas()
        # A stored pandas index comes back as the index: named ones are data, unnamed ones are not.
        frame = frame.reset_index(drop=all(n is None for n in frame.index.names))
        return frame, "row", 1
    raise ImportFileError(
        f"{path}: unknown file type; expected a name ending in {', '.join(CSV_SUFFIXES + PARQUET_SUFFIXES)}",
        path=path,
    )


def _text(values: pd.Series) -> pd.Series:
    """Cells as stripped strings; missing cells (None/NaN/NA) -> ""; whole floats without `.0`."""
    if pd.api.types.is_float_dtype(values) and values.notna().any():
        finite = values.dropna()
        if (finite == finite.round()).all():
            values = values.astype("Int64")
    missing = values.isna()
    out = values.astype(object).where(~missing, "").astype(str).str.strip()
    return out


def _utc_timestamps(values: pd.Series) -> tuple[pd.Series, pd.Series]:
    """(timestamps, bad mask) for ISO 8601 with a zone, or epoch seconds."""
    if pd.api.types.is_datetime64_any_dtype(values):
        if values.dt.tz is None:
            return values, pd.Series(True, index=values.index)
        return values.dt.tz_convert("UTC"), values.isna()
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        seconds = values.astype(float)
        bad = ~np.isfinite(seconds) | (seconds.abs() >= _MAX_EPOCH_SECONDS)
        when = pd.to_datetime(seconds.where(~bad, 0.0), unit="s", utc=True)
        return when, bad
    text = _text(values)
    numeric = text.str.match(_NUMBER)
    iso = text.str.match(_ISO_WITH_ZONE)
    seconds = pd.to_numeric(text.where(numeric, "0"), errors="coerce").astype(float)
    too_big = numeric & (seconds.abs() >= _MAX_EPOCH_SECONDS)
    when = pd.Series(pd.NaT, index=values.index, dtype="datetime64[ns, UTC]")
    ok_numeric = numeric & ~too_big
    if ok_numeric.any():
        when[ok_numeric] = pd.to_datetime(seconds[ok_numeric], unit="s", utc=True)
    if iso.any():
        when[iso] = pd.to_datetime(text[iso].str.upper(), format="ISO8601", utc=True, errors="coerce")
    bad = ~(ok_numeric | iso) | when.isna()
    return when, bad


def _numbers(values: pd.Series) -> tuple[pd.Series, pd.Series]:
    """(floats, bad mask); empty cells are 0.0."""
    if pd.api.types.is_bool_dtype(values):
        return values.astype(float), pd.Series(False, index=values.index)
    if pd.api.types.is_numeric_dtype(values):
        numbers = values.astype(float)
        return numbers.fillna(0.0), ~np.isfinite(numbers.fillna(0.0))
    text = _text(values)
    numbers = pd.to_numeric(text.where(text != "", "0"), errors="coerce").astype(float)
    return numbers.fillna(0.0), ~np.isfinite(numbers)


def _check(path: Path, column: str, bad: pd.Series, frame: pd.DataFrame, unit: str, offset: int, problem):
    """Raise for the first bad row; `problem` is a text, or a function of the first bad value giving one."""
    if not bad.any():
        return
    first = bad.index[bad.to_numpy()][0]
    line = int(first) + offset
    n_bad = int(bad.sum())
    value = frame.at[first, column]
    if callable(problem):
        problem = problem(value)
    raise ImportFileError(
        f"{path}: column {column!r}, {unit} {line}: {problem} (value {value!r}); "
        f"{n_bad} bad row{'s' if n_bad != 1 else ''} in all",
        path=path, column=column, line=line, n_bad=n_bad,
    )


def _timestamp_problem(value) -> str:
    problem = "expected an ISO 8601 time with a timezone (e.g. 2024-03-01T09:30:00Z) or epoch seconds"
    text = str(value).strip()
    if isinstance(value, (pd.Timestamp, np.datetime64, dt.datetime)) or _ISO_NAIVE.match(text):
        return problem + "; this time has no timezone (add Z or an offset such as +02:00)"
    if _NUMBER.match(text) and abs(float(text)) >= _MAX_EPOCH_SECONDS:
        return problem + "; this number is too large for seconds (milliseconds?)"
    return problem


def _feature_column(values: pd.Series) -> pd.Series:
    """A CSV feature column as numbers when every non-empty cell is one, else strings (empty -> None)."""
    if not (pd.api.types.is_string_dtype(values) or values.dtype == object):
        return values
    text = _text(values)
    present = text != ""
    numbers = pd.to_numeric(text.where(present, None), errors="coerce")
    if present.any() and numbers[present].notna().all():
        whole = numbers[present]
        return numbers.astype("Int64") if (whole == whole.round()).all() else numbers.astype(float)
    return text.astype(object).where(present, None)


def _first_undecodable(path: Path) -> str:
    """Where the file stops being UTF-8, as a line number (the decoder's own offset is per chunk)."""
    raw = path.read_bytes()
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        return f"not UTF-8 text: byte {raw[error.start:error.start + 1]!r} on line {line}"
    return "not UTF-8 text"


def read_exposures_file(path: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(exposures table, features): the validated exposures, and row by row the customer's
    feature columns, with `customer_id` and `__line__` (the row's position as reported).

    Raises :class:`ImportFileError` at the first problem, before anything is built.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"exposures file {path} is missing")
    if path.stat().st_size == 0:
        raise ImportFileError(f"{path}: the file is empty", path=path)
    try:
        raw, unit, offset = _read(path)
    except UnicodeDecodeError:
        raise ImportFileError(f"{path}: {_first_undecodable(path)}; save it as UTF-8 CSV", path=path) from None
    except pd.errors.EmptyDataError:
        raise ImportFileError(f"{path}: no header line and no data", path=path) from None
    except (pd.errors.ParserError, OSError, ValueError) as error:
        if isinstance(error, ImportFileError):
            raise
        raise ImportFileError(f"{path}: cannot be read as {path.suffix.lstrip('.') or 'a table'}: {error}",
                              path=path) from None
    raw.columns = [str(c).strip() for c in raw.columns]
    missing = [c for c in REQUIRED if c not in raw.columns]
    if missing:
        raise ImportFileError(
            f"{path}: missing required column(s) {', '.join(repr(c) for c in missing)} "
            f"(found: {', '.join(repr(c) for c in raw.columns)})",
            path=path, column=missing[0],
        )
    blank = raw.apply(_text).eq("").all(axis=1)
    frame = raw[~blank]
    if frame.empty:
        raise ImportFileError(f"{path}: no data rows", path=path)

    customer = _text(frame["customer_id"])
    _check(path, "customer_id", customer == "", frame, unit, offset, "empty customer id")
    offer = _text(frame["offer"])
    _check(path, "offer", offer == "", frame, unit, offset, "empty offer")
    accepted = _text(frame["accepted"]).str.lower().map(_ACCEPTED)
    _check(path, "accepted", accepted.isna(), frame, unit, offset, "expected 0/1, true/false or yes/no")
    when, bad = _utc_timestamps(frame["timestamp"])
    _check(path, "timestamp", bad, frame, unit, offset, _timestamp_problem)
    numeric = {}
    for column in ("price", "score"):
        if column in frame.columns:
            numeric[column], bad = _numbers(frame[column])
            _check(path, column, bad, frame, unit, offset, "expected a number")
        else:
            numeric[column] = pd.Series(0.0, index=frame.index)

    line = pd.Series(frame.index.to_numpy() + offset, index=frame.index)
    if "request_id" in frame.columns:
        request_id = _text(frame["request_id"])
        grouped = request_id != ""
        owners = customer[grouped].groupby(request_id[grouped]).transform("nunique")
        mixed = pd.Series(False, index=frame.index)
        mixed[owners.index] = owners.to_numpy() > 1
        _check(path, "request_id", mixed, frame, unit, offset, "this request's rows name more than one customer_id")
        request = ("r:" + request_id).where(grouped, unit + ":" + line.astype(str))
    else:
        request = unit + ":" + line.astype(str)

    table = pd.DataFrame(
        {
            "request": request.astype(str),
            "customer_id": customer.astype(str),
            "offer": offer.astype(str),
            "accepted": accepted.astype(int),
            "datetime": when,
            "price": numeric["price"].astype(float),
            "score": numeric["score"].astype(float),
        }
    )
    features = pd.DataFrame({"customer_id": customer.astype(str), _LINE: line.astype(int)}, index=frame.index)
    for column in frame.columns:
        if is_context_column(column):
            table[column] = _feature_column(frame[column]).to_numpy(dtype=object)
        elif column not in REQUIRED + OPTIONAL:
            features[column] = _feature_column(frame[column])
    return table.reset_index(drop=True), features.reset_index(drop=True)


def load_exposures_file(path: str | Path, *, predictor: str, channel: str = "import") -> RuntimeLogs:
    table, features = read_exposures_file(path)
    feature_columns = [c for c in features.columns if c not in ("customer_id", _LINE)]
    offers = table.groupby("offer", sort=True)["price"].median()
    offer_matrix = pd.DataFrame(
        {
            "offer_name": offers.index.astype(str),
            "offer_id": np.arange(1, len(offers) + 1),
            "price": offers.to_numpy(dtype=float),
            "cost": 0.0,
            "static_offers": False,
        }
    )
    # The customer's latest row (by timestamp, then by position in the file) gives the features.
    order = np.lexsort((features[_LINE].to_numpy(), table["datetime"].to_numpy()))
    latest = features.iloc[order].drop_duplicates("customer_id", keep="last")
    customer_features = latest[["customer_id", *feature_columns]].sort_values("customer_id").reset_index(drop=True)
    return build_runtime_logs(
        table, predictor=predictor, channel=channel,
        offer_matrix=offer_matrix, customer_features=customer_features,
        response_delay=dt.timedelta(seconds=30),
    )
