"""The offers each customer of a campaign already accepted, held in memory for campaigns that
leave them out of a ranking (`CampaignSettings.exclude_accepted`).

Three sources make it whole: the flatten's committed accepted rows of the campaign (its days), the
response documents logged after the newest flattened day (not flattened yet), both read when the
flatten commits a day, and the accepts this process logs itself (`add`), at once. The table is two
sorted arrays (customers, offsets into the offers), not a dict of sets: millions of customers cost
what their accepts take, and the garbage collector has a handful of objects to walk.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import threading

import numpy as np
import pandas as pd

from twotower_pipeline.store import names
from twotower_pipeline.store.client import MongoStore
from twotower_pipeline.store.slices import SlicedCollection


@dataclasses.dataclass
class AcceptedOffers:
    campaign: str
    customers: np.ndarray  # sorted, distinct [n]
    offsets: np.ndarray    # [n + 1]: customer i accepted offers[offsets[i]:offsets[i + 1]]
    offers: np.ndarray
    version: tuple         # the flatten's committed days when it was read
    since: dt.datetime | None = None  # responses after this were read from the response collection
    _recent: dict = dataclasses.field(default_factory=dict)
    _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)

    @classmethod
    def of_pairs(cls, campaign: str, customers, offers, version: tuple = (), since=None) -> "AcceptedOffers":
        pairs = pd.DataFrame({"customer": pd.Series(customers, dtype=str), "offer": pd.Series(offers, dtype=str)})
        pairs = pairs.drop_duplicates().sort_values(["customer", "offer"], kind="stable")
        keys, starts = np.unique(pairs["customer"].to_numpy(dtype=str), return_index=True)
        offsets = np.append(starts, len(pairs)).astype(np.int64)
        return cls(campaign, keys, offsets, pairs["offer"].to_numpy(dtype=str), version, since)

    @classmethod
    def load(cls, store: MongoStore, campaign: str) -> "AcceptedOffers":
        flatten = SlicedCollection(store, names.FLATTEN)
        days = flatten.committed_write_ids() or {}
        rows = flatten.read(query={"predictor": campaign, "accepted": 1}, columns=["customer_id", "offer"])
        customers = rows["customer_id"].astype(str).tolist() if len(rows) else []
        offers = rows["offer"].astype(str).tolist() if len(rows) else []
        since = _day_after(max(days)) if days else None
        query = {"predictor": campaign, **({"date_log": {"$gte": since}} if since else {})}
        projection = {"_id": 0, "response.offers_accepted.offer_name": 1, "response_log.api_params.customer": 1}
        for document in store.collection(names.RESPONSES).find(query, projection, batch_size=1000):
            customer = ((document.get("response_log") or {}).get("api_params") or {}).get("customer")
            for accepted in (document.get("response") or {}).get("offers_accepted") or []:
                if customer is not None and accepted.get("offer_name") is not None:
                    customers.append(str(customer))
                    offers.append(str(accepted["offer_name"]))
        return cls.of_pairs(campaign, customers, offers, version=tuple(sorted(days.items())), since=since)

    def __len__(self) -> int:
        return len(self.offers) + sum(len(v) for v in self._recent.values())

    def of(self, customer_id: str) -> list[str]:
        """The offers the customer accepted (the table's, then this process's since)."""
        row = int(self.customers.searchsorted(customer_id))
        found = self.offers[self.offsets[row]:self.offsets[row + 1]].tolist() \
            if row < len(self.customers) and self.customers[row] == customer_id else []
        recent = self._recent.get(customer_id)
        return found + sorted(recent) if recent else found

    def add(self, customer_id: str, offers) -> None:
        """Accepts this process logged: left out from the next request on."""
        with self._lock:
            self._recent.setdefault(customer_id, set()).update(offers)

    def carry_recent(self, earlier: "AcceptedOffers") -> "AcceptedOffers":
        """Keep the accepts an earlier table had from this process that this one did not read (not
        yet shipped to the response collection)."""
        with earlier._lock:
            recent = list(earlier._recent.items())
        for customer, offers in recent:
            missing = set(offers) - set(self.of(customer))
            if missing:
                self.add(customer, missing)
        return self


def _day_after(day: str) -> dt.datetime | None:
    """The start (UTC) of the day after a flatten slice key (`YYYY-MM-DD`), None for another key."""
    try:
        return dt.datetime.fromisoformat(day).replace(tzinfo=dt.timezone.utc) + dt.timedelta(days=1)
    except ValueError:
        return None
