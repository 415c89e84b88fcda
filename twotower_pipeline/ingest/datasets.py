"""Where the public data sets are: TWOTOWER_DATA_DIR, else `../shared/data` beside the project.

MovieLens 100K: https://grouplens.org/datasets/movielens/100k/ (unzip to `<dir>/ml-100k`).
UCI in-vehicle coupon recommendation: https://archive.ics.uci.edu/dataset/603 (CSV to
`<dir>/in-vehicle-coupon/in-vehicle-coupon-recommendation.csv`).
"""

from __future__ import annotations

import os
from pathlib import Path

MOVIELENS = "ml-100k"
COUPONS = "in-vehicle-coupon"
_PROJECT_ROOT = Path(__file__).resolve().parents[2]


def data_root() -> Path:
    configured = os.environ.get("TWOTOWER_DATA_DIR")
    return Path(configured).expanduser() if configured else _PROJECT_ROOT.parent / "shared" / "data"


def find_dataset(name: str) -> Path | None:
    """The data set's folder, or None when it is not on this machine."""
    path = data_root() / name
    return path if path.is_dir() else None
