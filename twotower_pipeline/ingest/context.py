"""A request's context (`in_params`, SPEC §7) as exposure columns: `in_params[key]` -> `context_<key>`.

The runtime request carries `in_params: {...}` (time of day, channel, in the coupon data the
driving context); the presented document logs it as it was sent. The flatten keeps each key as an
exposure column `context_<key>`, the training frame keeps those columns, and the customer tower
reads them (`model.features`). One rule decides what is kept, here, for the flatten and for the
serving side alike (`context_row`):

- a value is a scalar: a string of at most `MAX_TEXT_LENGTH` characters, a finite number or a
  boolean; `None` (and NaN) is an absent key, the same as not sending it;
- a key is 1..`MAX_KEY_LENGTH` characters of letters, digits, `_` and `-` (a column name that is
  also a plain MongoDB field name);
- at most `MAX_KEYS` keys of one request are kept (in sorted key order);
- anything else (a list, a dict, a date, an over-long string, a bad key, an `in_params` that is
  not a dict) is dropped and counted by reason (`DROP_REASONS`); the exposure itself is kept, since
  the context is optional and the accept/decline is still good data.
"""

from __future__ import annotations

import math
import re
from collections import Counter

import numpy as np

CONTEXT_PREFIX = "context_"
MAX_TEXT_LENGTH = 256
MAX_KEY_LENGTH = 64
MAX_KEYS = 32
#: Why a context value was dropped (counted per flatten as `dropped_context_<reason>`).
DROP_REASONS = ("malformed", "bad_key", "non_scalar", "too_long", "too_many")
#: A usable key (the serving side validates requests with the same pattern).
KEY_PATTERN = rf"^[A-Za-z0-9_-]{{1,{MAX_KEY_LENGTH}}}$"
_KEY = re.compile(KEY_PATTERN)


def context_column(key: str) -> str:
    return CONTEXT_PREFIX + key


def is_context_column(column) -> bool:
    return isinstance(column, str) and column.startswith(CONTEXT_PREFIX) and len(column) > len(CONTEXT_PREFIX)


def context_columns(columns) -> list[str]:
    """The request-context columns among `columns`, in their order."""
    return [c for c in columns if is_context_column(c)]


def context_values(in_params) -> tuple[dict[str, object], Counter]:
    """({`context_<key>`: value} of the usable entries of `in_params`, Counter of dropped entries by
    reason). `in_params` absent (None) is an empty context, not a dropped one."""
    dropped: Counter = Counter()
    if in_params is None:
        return {}, dropped
    if not isinstance(in_params, dict):
        dropped["malformed"] += 1
        return {}, dropped
    kept: dict[str, object] = {}
    for key in sorted(in_params, key=str):
        value = in_params[key]
        if isinstance(value, np.generic):  # a numpy scalar from a caller's frame
            value = value.item()
        if not isinstance(key, str) or not _KEY.match(key):
            dropped["bad_key"] += 1
            continue
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue  # absent
        if isinstance(value, bool):
            pass
        elif isinstance(value, (int, float)):
            if not math.isfinite(value):
                dropped["non_scalar"] += 1
                continue
        elif isinstance(value, str):
            if len(value) > MAX_TEXT_LENGTH:
                dropped["too_long"] += 1
                continue
        else:
            dropped["non_scalar"] += 1
            continue
        if len(kept) == MAX_KEYS:
            dropped["too_many"] += 1
            continue
        kept[context_column(key)] = value
    return kept, dropped


def context_row(in_params) -> dict[str, object]:
    """A request's `in_params` as the columns the customer tower reads (`context_<key>`), by the
    flatten's rule: unusable entries are left out (they then take the neutral value, as an absent
    key does). Keys the model was not trained on are harmless: the encoder ignores them."""
    return context_values(in_params)[0]
