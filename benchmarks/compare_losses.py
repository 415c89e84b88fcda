"""Offline comparison of training objectives on MovieLens 100K, to choose the defaults.

The frame is built with pandas exactly as the training frame would hold it (no MongoDB): one row
per rating = one exposure, accepted = rating >= 4, price a fixed function of the movie, score its
popularity, rank its position in the day's request of 5, customer features (age, gender,
occupation, zip_region) and offer features (title, release_year, genres, price_offer).
Each configuration trains with the same seed and 80/20 split and reports the validation metrics
of its best epoch (export-style vectors, context at the documented defaults).

    .venv/bin/python -m benchmarks.compare_losses [--quick] [--only NAME]

Measured (2-core CPU, 1 torch thread, full mode, seconds include per-epoch validation):

    configuration                           recall@10  ndcg@10  user_auc  item_auc  best_epoch  seconds
    --------------------------------------  ---------  -------  --------  --------  ----------  -------
    defaults: mixed + 0.5 pointwise            0.2756   0.2543    0.6888    0.6881          20       23
    softmax                                    0.2546   0.2371    0.6817    0.5996          15        9
    softmax, no log-Q                          0.0328   0.0269    0.5679    0.5521           6        5
    softmax, no hit removal                    0.2546   0.2339    0.6780    0.5968          14       10
    softmax + 0.5 pointwise                    0.2637   0.2458    0.6854    0.6723          13       13
    mixed                                      0.2575   0.2388    0.6713    0.5888          13       12
    pointwise only                             0.0815   0.0840    0.6782    0.6757           2        4
    pointwise_weight 1.0                       0.2633   0.2494    0.6945    0.6953          20       22
    pointwise_weight 2.0                       0.2449   0.2339    0.6962    0.7086          21       24
    temperature 0.05                           0.2544   0.2387    0.6830    0.6915          18       21
    temperature 0.1                            0.2668   0.2498    0.6829    0.6909          21       23
    no log-Q correction                        0.1673   0.1471    0.6709    0.6784          15       18
    no accidental-hit removal                  0.2752   0.2525    0.6867    0.6777          21       23
    64 catalogue negatives                     0.2617   0.2463    0.6815    0.6732          14       16
    context_dropout 0 (context as trained)     0.0218   0.0302    0.5154    0.5804           2        6
    context_dropout 0.5                        0.1549   0.1445    0.6231    0.5304           1        5
    layers 0                                   0.2499   0.2374    0.6815    0.6703          25       24
    layers 2                                   0.2556   0.2430    0.6877    0.6738          11       19
    defaults, seed 7 (other split + init)      0.2506   0.2423    0.6735    0.6688          17       23

    (random ranking: recall@10 = 0.0094; validation = 20% of exposures, seed 42)
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
from twotower_pipeline.model import evaluation
from twotower_pipeline.model.train import prepare, train_two_tower

# name -> overrides of TrainingParams; each row changes the defaults (loss "mixed" with 256 catalogue
# negatives + 0.5 x pointwise, temperature 0.2, log-Q on, hit removal on, context_dropout 1.0,
# layers 1) in the way its name says.
CONFIGS: dict[str, dict] = {
    "defaults: mixed + 0.5 pointwise": dict(),
    "softmax": dict(loss="softmax", pointwise_weight=0.0),
    "softmax, no log-Q": dict(loss="softmax", pointwise_weight=0.0, logq_correction=False),
    "softmax, no hit removal": dict(loss="softmax", pointwise_weight=0.0, remove_accidental_hits=False),
    "softmax + 0.5 pointwise": dict(loss="softmax"),
    "mixed": dict(pointwise_weight=0.0),
    "pointwise only": dict(loss="pointwise"),
    "pointwise_weight 1.0": dict(pointwise_weight=1.0),
    "pointwise_weight 2.0": dict(pointwise_weight=2.0),
    "temperature 0.05": dict(temperature=0.05),
    "temperature 0.1": dict(temperature=0.1),
    "no log-Q correction": dict(logq_correction=False),
    "no accidental-hit removal": dict(remove_accidental_hits=False),
    "64 catalogue negatives": dict(n_catalogue_negatives=64),
    "context_dropout 0 (context as trained)": dict(context_dropout=0.0),
    "context_dropout 0.5": dict(context_dropout=0.5),
    "layers 0": dict(layers=0),
    "layers 2": dict(layers=2),
    "defaults, seed 7 (other split + init)": dict(seed=7),
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


def coupon_frame(path=None) -> pd.DataFrame:
    """The UCI coupon data through the pipeline's own steps (runtime logs -> flatten -> frame)."""
    from twotower_pipeline.ingest.coupon import load_coupons
    from twotower_pipeline.ingest.flatten import flatten_runtime_logs
    from twotower_pipeline.ingest.training_frame import build_training_frame

    folder = datasets.find_dataset(datasets.COUPONS)
    if path is None and folder is None:
        raise FileNotFoundError(f"coupon data not found under {datasets.data_root()} (set TWOTOWER_DATA_DIR)")
    logs = load_coupons(path or folder / "in-vehicle-coupon-recommendation.csv")
    dates = [d["date_log"] for d in logs.presented]
    window = (min(dates), max(dates) + pd.Timedelta(seconds=1))
    exposures = flatten_runtime_logs(logs.presented, logs.responses, window).exposures
    frame, _ = build_training_frame(exposures, logs.customer_features, logs.offer_matrix)
    return frame


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="at most 8 epochs per configuration")
    parser.add_argument("--only", help="run only configurations whose name contains this")
    parser.add_argument("--epochs", type=int, help="override epochs")
    parser.add_argument("--data", choices=["movielens", "coupons"], default="movielens")
    args = parser.parse_args(argv)
    frame = movielens_frame() if args.data == "movielens" else coupon_frame()
    # 10 coupon offers: recall@10 would be 1 for any model, so rank metrics use K=3 there
    metric_k = 10 if args.data == "movielens" else 3
    print(f"{args.data} frame: {len(frame):,} exposures, {int(frame['accepted'].sum()):,} accepted, "
          f"{frame['customer_id'].nunique()} customers, {frame['offer'].nunique()} offers", file=sys.stderr)
    rows = []
    for name, overrides in CONFIGS.items():
        if args.only and args.only not in name:
            continue
        params = TrainingParams(**{"metric_k": metric_k, **overrides})
        if args.epochs or args.quick:
            params = dataclasses.replace(params, epochs=args.epochs or min(8, params.epochs))
        started = time.perf_counter()
        result = train_two_tower(frame, params)
        m = result.metrics
        rows.append([name, f"{m[f'recall@{metric_k}']:.4f}", f"{m[f'ndcg@{metric_k}']:.4f}", f"{m['user_auc']:.4f}",
                     f"{m['item_auc']:.4f}", str(result.best_epoch), f"{time.perf_counter() - started:.0f}"])
        print(f"  {name}: {rows[-1][1:]}", file=sys.stderr, flush=True)
    held_out = prepare(frame, params).held_out
    random_recall = evaluation.evaluate(evaluation.RandomScorer(held_out), held_out, ks=(metric_k,))[
        f"recall@{metric_k}"]
    header = ["configuration", f"recall@{metric_k}", f"ndcg@{metric_k}", "user_auc", "item_auc", "best_epoch",
              "seconds"]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    line = "  ".join(f"{{:{'<' if i == 0 else '>'}{w}}}" for i, w in enumerate(widths))
    print(line.format(*header))
    print(line.format(*("-" * w for w in widths)))
    for r in rows:
        print(line.format(*r))
    print(f"\n(random ranking: recall@{metric_k} = {random_recall:.4f}; validation = 20% of each customer's "
          "exposures, seed 42)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
