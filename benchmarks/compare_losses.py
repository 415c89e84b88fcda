"""Offline comparison of training objectives on MovieLens 100K, to choose the defaults.

The frame is built with pandas exactly as the training frame would hold it (no MongoDB): one row
per rating = one exposure, accepted = rating >= 4, price a fixed function of the movie, score its
popularity, rank its position in the day's request of 5, customer features (age, gender,
occupation, zip_region) and offer features (title, release_year, genres, price_offer).
Each configuration trains with the same seed and 80/20 split and reports the validation metrics
of its best epoch (export-style vectors, context at the documented defaults).

    .venv/bin/python -m benchmarks.compare_losses [--quick] [--only NAME]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time

import numpy as np
import pandas as pd

from twotower_pipeline.ingest import datasets
from twotower_pipeline.ingest.movielens import ACCEPT_RATING, GENRES, offer_name, read_movielens
from twotower_pipeline.model.config import TrainingParams
from twotower_pipeline.model.train import train_two_tower

# name -> overrides of TrainingParams; the rest are the library defaults (context_dropout 1.0,
# temperature 0.1, log-Q on, hit removal on, 256 catalogue negatives, layers 1)
CONFIGS: dict[str, dict] = {
    "softmax": dict(loss="softmax", pointwise_weight=0.0),
    "softmax, no log-Q": dict(loss="softmax", pointwise_weight=0.0, logq_correction=False),
    "softmax, no hit removal": dict(loss="softmax", pointwise_weight=0.0, remove_accidental_hits=False),
    "mixed": dict(loss="mixed", pointwise_weight=0.0),
    "pointwise": dict(loss="pointwise"),
    "softmax + 1.0 pw": dict(loss="softmax", pointwise_weight=1.0),
    "mixed + 0.5 pw": dict(loss="mixed", pointwise_weight=0.5),
    "mixed + 1.0 pw": dict(loss="mixed", pointwise_weight=1.0),
    "mixed + 2.0 pw": dict(loss="mixed", pointwise_weight=2.0),
    "mixed + 1.0 pw, t=0.05": dict(loss="mixed", pointwise_weight=1.0, temperature=0.05),
    "mixed + 1.0 pw, t=0.2": dict(loss="mixed", pointwise_weight=1.0, temperature=0.2),
    "mixed + 1.0 pw, no log-Q": dict(loss="mixed", pointwise_weight=1.0, logq_correction=False),
    "mixed + 1.0 pw, 64 catalogue negatives": dict(loss="mixed", pointwise_weight=1.0, n_catalogue_negatives=64),
    "mixed + 1.0 pw, context_dropout 0": dict(loss="mixed", pointwise_weight=1.0, context_dropout=0.0),
    "mixed + 1.0 pw, context_dropout 0.5": dict(loss="mixed", pointwise_weight=1.0, context_dropout=0.5),
    "mixed + 1.0 pw, layers 0": dict(loss="mixed", pointwise_weight=1.0, layers=0),
    "mixed + 1.0 pw, layers 2": dict(loss="mixed", pointwise_weight=1.0, layers=2),
    "mixed + 0.5 pw, t=0.2": dict(loss="mixed", pointwise_weight=0.5, temperature=0.2),
    "defaults (mixed + 0.5 pw)": dict(),
    "defaults, seed 7 (noise gauge)": dict(seed=7),
}


def movielens_frame(directory=None) -> pd.DataFrame:
    """The MovieLens 100K training frame (see module docstring)."""
    directory = directory or datasets.find_dataset(datasets.MOVIELENS)
    if directory is None:
        raise FileNotFoundError(f"MovieLens 100K not found under {datasets.data_root()} (set TWOTOWER_DATA_DIR)")
    ratings, users, movies = read_movielens(directory)
    counts = ratings["item_id"].value_counts()
    popularity = (np.log1p(counts) / np.log1p(counts.max())).round(6)
    price = (2.99 + (movies["item_id"] % 3)).astype(float)
    when = pd.to_datetime(ratings["timestamp"], unit="s", utc=True)
    ratings = ratings.assign(datetime=when, day=when.dt.strftime("%Y%m%d")).sort_values(
        ["user_id", "timestamp", "item_id"], kind="stable").reset_index(drop=True)
    position = ratings.groupby(["user_id", "day"]).cumcount()
    request = ratings["user_id"].astype(str) + "/" + ratings["day"] + "/" + (position // 5).astype(str)
    frame = pd.DataFrame({
        "uuid": request, "predictor": "ml100k_movies", "channel": "web",
        "customer_id": ratings["user_id"].astype(str), "offer": ratings["item_id"].map(offer_name),
        "offer_name": ratings["item_id"].map(offer_name),
        "accepted": (ratings["rating"] >= ACCEPT_RATING).astype("int64"),
        "price": ratings["item_id"].map(dict(zip(movies["item_id"], price))).astype(float),
        "rank": (position % 5 + 1).astype(float),
        "score": ratings["item_id"].map(popularity).astype(float),
        "datetime": ratings["datetime"],
    })
    customers = pd.DataFrame({
        "customer_id": users["user_id"].astype(str), "age": users["age"].astype(float),
        "gender": users["gender"].astype(str), "occupation": users["occupation"].astype(str),
        "zip_region": users["zip"].str[:1].where(users["zip"].str[:1].str.isdigit(), "other"),
    })
    year = pd.to_datetime(movies["release_date"], format="%d-%b-%Y", errors="coerce").dt.year.astype(float)
    flags = movies[list(GENRES)].to_numpy(dtype=bool)
    offers = pd.DataFrame({
        "offer": movies["item_id"].map(offer_name), "title": movies["title"].astype(str),
        "release_year": year.fillna(year.median()),
        "genres": [[g for g, on in zip(GENRES, row) if on] for row in flags],
        "price_offer": price,
    })
    return frame.merge(customers, on="customer_id", how="left").merge(offers, on="offer", how="left")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="at most 8 epochs per configuration")
    parser.add_argument("--only", help="run only configurations whose name contains this")
    parser.add_argument("--epochs", type=int, help="override epochs")
    args = parser.parse_args(argv)
    frame = movielens_frame()
    print(f"MovieLens 100K frame: {len(frame):,} exposures, {int(frame['accepted'].sum()):,} accepted, "
          f"{frame['customer_id'].nunique()} customers, {frame['offer'].nunique()} offers", file=sys.stderr)
    rows = []
    for name, overrides in CONFIGS.items():
        if args.only and args.only not in name:
            continue
        params = TrainingParams(**overrides)
        if args.epochs or args.quick:
            params = dataclasses.replace(params, epochs=args.epochs or min(8, params.epochs))
        started = time.perf_counter()
        result = train_two_tower(frame, params)
        m = result.metrics
        rows.append([name, f"{m['recall@10']:.4f}", f"{m['ndcg@10']:.4f}", f"{m['user_auc']:.4f}",
                     f"{m['item_auc']:.4f}", str(result.best_epoch), f"{time.perf_counter() - started:.0f}"])
        print(f"  {name}: {rows[-1][1:]}", file=sys.stderr, flush=True)
    random_recall = result.metrics["random_recall@10"]
    header = ["configuration", "recall@10", "ndcg@10", "user_auc", "item_auc", "best_epoch", "seconds"]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    line = "  ".join(f"{{:{'<' if i == 0 else '>'}{w}}}" for i, w in enumerate(widths))
    print(line.format(*header))
    print(line.format(*("-" * w for w in widths)))
    for r in rows:
        print(line.format(*r))
    print(f"\n(random ranking: recall@10 = {random_recall:.4f}; validation = 20% of exposures, seed 42)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
