"""Feature encoding for one tower: fitted once on the training frame, applied to any frame.

Four kinds of input, decided per column when fitting:
- id: the tower's key (customer_id / offer); vocabulary of training values, index 0 = out of
  vocabulary, so an unseen customer or offer still gets a vector from its other features;
- categorical: object/str columns (or those named in `categorical_columns`), same vocabulary scheme;
- numeric: numbers and booleans, standardised with the training mean/std;
- multi_hot: list columns (e.g. genres), a vocabulary of list elements, padded to a fixed length
  with index 0 (= padding and out of vocabulary), averaged by an EmbeddingBag in the tower.
Context features (price, rank, score) absent from a frame take the documented defaults
(0.0, 1.0, 0.0), and always do when the encoder is `pinned_context` (a model trained with
context_dropout 1.0 never saw other values); any other feature absent at inference takes its
neutral value (index 0, the training mean, an empty list). The request's context columns
(`context_<key>`, from the request's `in_params`) are categorical or numeric like any column, and
may have missing values: a missing or absent context value, and a value not seen in training,
takes the neutral value (index 0, the training mean), which is also what an exported vector (no
request) has. Encoding is vectorised: pandas categorical codes and numpy, no per-row Python. The
fitted encoder serialises to a JSON-able dict.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch

from twotower_pipeline.ingest.context import is_context_column
from twotower_pipeline.ingest.training_frame import BOOKKEEPING_COLUMNS, CONTEXT_DEFAULTS

KINDS = ("id", "categorical", "numeric", "multi_hot")


class TowerInputs(NamedTuple):
    """Encoded tensors for n rows of one tower."""

    ids: torch.Tensor                      # [n] int64, 0 = OOV (all zeros when the tower has no id)
    categorical: torch.Tensor              # [n, C] int64 per-column codes, 0 = OOV
    numeric: torch.Tensor                  # [n, F] float32, standardised
    multi_hot: tuple[torch.Tensor, ...]    # M tensors [n, L_m] int64, 0 = padding / OOV

    def take(self, index: torch.Tensor) -> "TowerInputs":
        """Rows `index` ([b] int64) of every tensor: the batch gather of the training loop."""
        return TowerInputs(self.ids[index], self.categorical[index], self.numeric[index],
                           tuple(m[index] for m in self.multi_hot))

    @property
    def n_rows(self) -> int:  # not __len__: a NamedTuple's length is its number of fields
        return self.ids.shape[0]


@dataclass
class FeatureEncoder:
    """Fitted encoder of one tower's columns."""

    id_column: str | None = None
    id_vocabulary: list[str] = field(default_factory=list)
    categorical: dict[str, list[str]] = field(default_factory=dict)     # column -> vocabulary
    numeric: dict[str, tuple[float, float]] = field(default_factory=dict)  # column -> (mean, std)
    multi_hot: dict[str, list[str]] = field(default_factory=dict)       # column -> element vocabulary
    max_list_length: int = 32
    list_lengths: dict[str, int] = field(default_factory=dict)          # padded width per list column
    pinned_context: bool = False        # context columns always take the documented defaults

    # --- fitting ---------------------------------------------------------------------------
    @classmethod
    def fit(cls, frame: pd.DataFrame, columns: list[str], *, id_column: str | None,
            categorical_columns=(), min_frequency: int = 1, max_vocabulary: int = 1_000_000,
            max_list_length: int = 32, pinned_context: bool = False) -> "FeatureEncoder":
        enc = cls(id_column=id_column if id_column in columns else None, max_list_length=max_list_length,
                  pinned_context=pinned_context)
        for column in columns:
            values = frame[column]
            kind = "id" if column == enc.id_column else column_kind(values, column in set(categorical_columns))
            if kind == "id":
                enc.id_vocabulary = _vocabulary(values.astype(str), min_frequency, max_vocabulary)
            elif kind == "categorical":
                # missing values (request context only: the frame fills every other column) are no category
                enc.categorical[column] = _vocabulary(values.dropna().astype(str), min_frequency, max_vocabulary)
            elif kind == "numeric":
                x = values.to_numpy(dtype=np.float64)
                x = x[~np.isnan(x)]
                std = float(x.std()) if len(x) else 1.0
                enc.numeric[column] = (float(x.mean()) if len(x) else 0.0, std if std > 1e-12 else 1.0)
            elif kind == "multi_hot":
                elements = values.explode().dropna().astype(str)
                enc.multi_hot[column] = _vocabulary(elements, min_frequency, max_vocabulary)
                longest = values.str.len().max() if len(values) else 1
                enc.list_lengths[column] = max(1, min(max_list_length, 1 if pd.isna(longest) else int(longest)))
            else:
                raise ValueError(f"feature column {column!r} has dtype {values.dtype}, which the towers cannot "
                                 "use (numbers, booleans, strings and lists of strings are supported)")
        return enc

    # --- encoding --------------------------------------------------------------------------
    def encode(self, frame: pd.DataFrame) -> TowerInputs:
        n = len(frame)
        ids = (_codes(frame[self.id_column], self.id_vocabulary) if self.id_column and self.id_column in frame
               else np.zeros(n, dtype=np.int64))
        cats = np.zeros((n, len(self.categorical)), dtype=np.int64)
        for j, (column, vocab) in enumerate(self.categorical.items()):
            if column in frame:
                cats[:, j] = _codes(frame[column], vocab)
        nums = np.zeros((n, len(self.numeric)), dtype=np.float32)
        for j, (column, (mean, std)) in enumerate(self.numeric.items()):
            if column in frame and not (self.pinned_context and column in CONTEXT_DEFAULTS):
                x = pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=np.float64)
                x = np.where(np.isnan(x), mean, x)
            else:
                x = np.full(n, CONTEXT_DEFAULTS.get(column, mean), dtype=np.float64)
            nums[:, j] = (x - mean) / std
        bags = tuple(
            torch.from_numpy(_padded_codes(frame[column], vocab, self.list_lengths[column]) if column in frame
                             else np.zeros((n, self.list_lengths[column]), dtype=np.int64))
            for column, vocab in self.multi_hot.items()
        )
        return TowerInputs(torch.from_numpy(ids), torch.from_numpy(cats), torch.from_numpy(nums), bags)

    def request_context_slots(self) -> tuple[list[int], list[int]]:
        """(positions in `categorical`, positions in `numeric`) of the request-context columns:
        their neutral value is code 0, resp. the standardised training mean 0."""
        return ([j for j, c in enumerate(self.categorical) if is_context_column(c)],
                [j for j, c in enumerate(self.numeric) if is_context_column(c)])

    @property
    def request_context_columns(self) -> list[str]:
        return [c for c in self.columns if is_context_column(c)]

    def context_defaults(self) -> tuple[list[int], torch.Tensor]:
        """(positions in `numeric`, standardised default values) of the context columns present."""
        slots, values = [], []
        for j, (column, (mean, std)) in enumerate(self.numeric.items()):
            if column in CONTEXT_DEFAULTS:
                slots.append(j)
                values.append((CONTEXT_DEFAULTS[column] - mean) / std)
        return slots, torch.tensor(values, dtype=torch.float32)

    # --- description and serialisation -----------------------------------------------------
    @property
    def columns(self) -> list[str]:
        return ([self.id_column] if self.id_column else []) + [*self.categorical, *self.numeric, *self.multi_hot]

    def missing_columns(self, frame: pd.DataFrame) -> list[str]:
        """Feature columns absent from `frame` (they will take their neutral or documented value)."""
        return [c for c in self.columns if c not in frame.columns]

    def describe(self) -> dict[str, list[str]]:
        return {"id": [self.id_column] if self.id_column else [], "categorical": list(self.categorical),
                "numeric": list(self.numeric), "multi_hot": list(self.multi_hot)}

    def to_dict(self) -> dict:
        return {"id_column": self.id_column, "id_vocabulary": list(self.id_vocabulary),
                "categorical": {k: list(v) for k, v in self.categorical.items()},
                "numeric": {k: [m, s] for k, (m, s) in self.numeric.items()},
                "multi_hot": {k: list(v) for k, v in self.multi_hot.items()},
                "max_list_length": self.max_list_length, "list_lengths": dict(self.list_lengths),
                "pinned_context": self.pinned_context}

    @classmethod
    def from_dict(cls, d: dict) -> "FeatureEncoder":
        return cls(id_column=d["id_column"], id_vocabulary=list(d["id_vocabulary"]),
                   categorical={k: list(v) for k, v in d["categorical"].items()},
                   numeric={k: (float(m), float(s)) for k, (m, s) in d["numeric"].items()},
                   multi_hot={k: list(v) for k, v in d["multi_hot"].items()},
                   max_list_length=int(d["max_list_length"]),
                   list_lengths={k: int(v) for k, v in d["list_lengths"].items()},
                   pinned_context=bool(d.get("pinned_context", False)))


# --- column roles --------------------------------------------------------------------------------
def column_kind(values: pd.Series, categorical: bool = False) -> str | None:
    """'categorical' | 'numeric' | 'multi_hot', or None for a dtype the towers cannot use."""
    if categorical:
        return "categorical"
    if pd.api.types.is_bool_dtype(values) or pd.api.types.is_numeric_dtype(values):
        return "numeric"
    if pd.api.types.is_datetime64_any_dtype(values) or isinstance(values.dtype, pd.PeriodDtype):
        return None
    non_null = values.dropna()
    if len(non_null) and isinstance(non_null.iloc[0], (list, tuple, np.ndarray)):
        return "multi_hot"
    return "categorical"


def side_feature_columns(frame: pd.DataFrame, *, user_id_column: str, item_id_column: str,
                         target_column: str, exclude=()) -> tuple[list[str], list[str]]:
    """(customer attribute columns, offer attribute columns): the frame's other usable columns that
    its customer key, resp. offer key, determines (one value per key). Context (price, rank, score
    and the request's `context_<key>`), bookkeeping, target and key columns are never side features;
    a column constant over the whole frame carries nothing."""
    skip = {user_id_column, item_id_column, target_column, *CONTEXT_DEFAULTS, *BOOKKEEPING_COLUMNS, *exclude}
    user_side, item_side = [], []
    for column in frame.columns:
        if column in skip or is_context_column(column) or column_kind(frame[column]) is None:
            continue
        values = frame[column]
        if column_kind(values) == "multi_hot":
            values = values.astype(str)  # lists are unhashable; their text compares the same
        if values.nunique() <= 1:
            continue
        # missing values do not break the dependence: training refuses them with a clear message
        if (values.groupby(frame[user_id_column], sort=False).nunique() <= 1).all():
            user_side.append(column)
        elif (values.groupby(frame[item_id_column], sort=False).nunique() <= 1).all():
            item_side.append(column)
    return user_side, item_side


def request_context_columns(frame: pd.DataFrame, exclude=()) -> list[str]:
    """The frame's request-context columns (`context_<key>`) the customer tower can read: a usable
    dtype and more than one value (missing counts as one: present against absent is information)."""
    return [c for c in frame.columns if is_context_column(c) and c not in set(exclude)
            and column_kind(frame[c]) in ("categorical", "numeric") and frame[c].nunique(dropna=False) > 1]


def _vocabulary(values: pd.Series, min_frequency: int, max_vocabulary: int) -> list[str]:
    """Values by descending frequency (ties by value, so fitting is deterministic); index i+1."""
    counts = values.value_counts(sort=False)
    counts = counts[counts >= min_frequency]
    order = pd.DataFrame({"value": counts.index.astype(str), "n": counts.to_numpy()})
    order = order.sort_values(["n", "value"], ascending=[False, True], kind="stable")
    return order["value"].head(max_vocabulary).tolist()


def _codes(values: pd.Series, vocabulary: list[str]) -> np.ndarray:
    """Index of each value in `vocabulary` plus one; 0 for unseen or missing values."""
    if pd.api.types.infer_dtype(values, skipna=True) not in ("string", "empty"):
        values = values.astype(str).where(values.notna())  # missing stays missing: code 0
    return pd.Categorical(values, categories=vocabulary).codes.astype(np.int64) + 1


def _padded_codes(values: pd.Series, vocabulary: list[str], width: int) -> np.ndarray:
    """[n, width] element codes of list values, left-aligned, 0-padded, truncated to `width`."""
    n = len(values)
    exploded = values.reset_index(drop=True).explode()
    position = exploded.groupby(level=0, sort=False).cumcount().to_numpy()
    row = exploded.index.to_numpy()
    codes = _codes(exploded, vocabulary)
    keep = (position < width) & exploded.notna().to_numpy()
    out = np.zeros((n, width), dtype=np.int64)
    out[row[keep], position[keep]] = codes[keep]
    return out
