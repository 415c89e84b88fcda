"""The PyTorch serving sidecar's model side (SPEC §8): a stored run's user or item tower embeds
feature rows sent in a request (a cold-start customer, or a customer with a request's context).

Model ids are the documented `two_tower_user_{run_id}` / `two_tower_item_{run_id}`; both name the
same stored artefact (the `two_tower_model` asset's GridFS file). A few runs stay loaded.
"""

from __future__ import annotations

import collections
import re
import threading

import numpy as np
import pandas as pd

from twotower_pipeline import publishing
from twotower_pipeline.ingest.context import is_context_column
from twotower_pipeline.ingest.training_frame import CONTEXT_DEFAULTS
from twotower_pipeline.runs import TrainedRun
from twotower_pipeline.store import artefacts, embeddings, names
from twotower_pipeline.store.client import MongoStore

MODEL_ID = re.compile(r"^two_tower_(user|item)_(.+)$")
TOWER_KEYS = {"user": "customer_id", "item": "offer"}
#: Runs kept loaded (an artefact is read from GridFS once, then served from memory).
CACHED_RUNS = 4


def parse_model_id(model_id: str) -> tuple[str, str]:
    """(tower, run_id) of a documented model id; ValueError naming the expected form otherwise."""
    match = MODEL_ID.match(model_id) if isinstance(model_id, str) else None
    if match is None or not embeddings.RUN_ID_PATTERN.match(match.group(2)):
        raise ValueError(f"model_id {model_id!r} is not two_tower_user_<run_id> or two_tower_item_<run_id>")
    return match.group(1), match.group(2)


class TowerService:
    """Stored runs' towers, loaded on first use and kept (the newest `CACHED_RUNS`)."""

    def __init__(self, store: MongoStore):
        self.store = store
        self._runs: collections.OrderedDict[str, TrainedRun] = collections.OrderedDict()
        self._lock = threading.Lock()

    @property
    def loaded(self) -> int:
        return len(self._runs)

    def run(self, run_id: str) -> TrainedRun:
        with self._lock:
            if run_id in self._runs:
                self._runs.move_to_end(run_id)
                return self._runs[run_id]
        run = artefacts.load_artefact(self.store, "two_tower_model", run_id=run_id)  # LookupError when unknown
        with self._lock:
            self._runs[run_id] = run
            while len(self._runs) > CACHED_RUNS:
                self._runs.popitem(last=False)
        return run

    def stored_features(self, tower: str, keys: list[str]) -> list[dict]:
        """The stored feature documents of `keys` (customer features or the offer matrix)."""
        location, key = ((names.CUSTOMER_FEATURES, names.CUSTOMER_KEY) if tower == "user"
                         else (names.OFFER_MATRIX, names.OFFER_KEY))
        return list(self.store.collection(location).find({key: {"$in": sorted(set(keys))}}, {"_id": 0}))

    def embed(self, run_id: str, tower: str, rows: list[dict]) -> np.ndarray:
        """[len(rows), embedding_dim] unit vectors of feature rows with `run_id`'s `tower`, built
        the way the export builds them (`publishing.embedding_frame`). A row names its key
        (`customer_id` / `offer`); price, rank and score are the exposure's context (documented
        defaults when absent) and so are `context_<key>` fields (a request's `in_params[key]`);
        any other field it sends replaces the stored feature of that key,
        and features neither sent nor stored take the encoder's neutral value."""
        run = self.run(run_id)
        key = TOWER_KEYS[tower]
        stored_key = names.CUSTOMER_KEY if tower == "user" else names.OFFER_KEY
        keys = [str(row[key]) for row in rows]
        stored = {str(d[stored_key]): d for d in self.stored_features(tower, keys)}
        features, context = [], []
        for name, row in zip(keys, rows):
            sent = {k: v for k, v in row.items() if k not in (key, "tower") and v is not None}
            context.append({k: sent.pop(k) for k in list(sent) if k in CONTEXT_DEFAULTS or is_context_column(k)})
            features.append({**stored.get(name, {}), **sent, stored_key: name})
        if len(set(keys)) == len(keys):
            frame = publishing.embedding_frame(tower, keys, pd.DataFrame(features), pd.DataFrame(context))
            return publishing.embed(run, tower, frame)
        # a key sent twice (with different features, say): each row on its own
        return np.concatenate([publishing.embed(run, tower, publishing.embedding_frame(
            tower, [name], pd.DataFrame([row]), pd.DataFrame([extra]))) for name, row, extra in
            zip(keys, features, context)])

    def customer_vector(self, run_id: str, customer_id: str, in_params: dict) -> np.ndarray:
        """One customer's vector for one request: its stored features and the request's context
        (`TwoTowerModel.customer_vector`, the export's typing of one row)."""
        run = self.run(run_id)
        [features] = self.stored_features("user", [customer_id]) or [None]
        return run.model.customer_vector(customer_id, features, in_params)
