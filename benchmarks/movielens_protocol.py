"""The published MovieLens 100K implicit protocol, through the project's frame builder and training.

Protocol (as Microsoft Recommenders' benchmark of BPR and BiVAE): every rating is an accept; per
user, a random 75/25 split of the ratings; every movie is ranked for every user, the movies of the
user's training ratings removed; K = 10; Precision@10, Recall@10 (hits / held-out ratings),
NDCG@10 and MAP (sum of precision at each hit in the top 10 / held-out ratings). Published there:
BPR 0.388 / 0.213 / 0.442 / 0.132, BiVAE 0.412 / 0.219 / 0.475 / 0.146.

Here: the exposures (one per rating, accepted = 1) are joined with the loader's customer features
and offer matrix by `build_training_frame` and trained with the default parameters except
`validation_split` 0.25 (the split is `holdout="customer"`: per customer, 25% of its exposures by
a seeded hash). The held-out ratings are never looked at while training: the number of epochs is
chosen by early stopping on a split of the training ratings, then the model is trained on all of
them for that many epochs (`select_and_train`). The exported vectors (`publishing.*_embedding_set`,
as the assets export them) are scored by `evaluation.evaluate` on the held-out ratings, beside the
popularity, EASE and random baselines on the same split.

    .venv/bin/python -m benchmarks.movielens_protocol [--seeds 42 7] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import pandas as pd

from twotower_pipeline import publishing
from twotower_pipeline.ingest import datasets
from twotower_pipeline.ingest.movielens import (customer_features_of, offer_matrix_of, offer_name,
                                                read_movielens)
from twotower_pipeline.ingest.training_frame import build_training_frame
from twotower_pipeline.model import TrainingParams, evaluation
from twotower_pipeline.model.train import TrainingResult, fit, prepare, split_of
from twotower_pipeline.runs import TrainedRun

PUBLISHED = {"BPR (published)": (0.388, 0.213, 0.442, 0.132), "BiVAE (published)": (0.412, 0.219, 0.475, 0.146)}
COLUMNS = ("precision@10", "recall@10", "ndcg@10", "map@10", "coverage@10")


def implicit_frame(directory=None) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(training frame, customer features, offer matrix): one accepted exposure per rating."""
    directory = directory or datasets.find_dataset(datasets.MOVIELENS)
    if directory is None:
        raise SystemExit(f"MovieLens 100K not found under {datasets.data_root()} (set TWOTOWER_DATA_DIR)")
    ratings, users, movies = read_movielens(directory)
    exposures = pd.DataFrame({
        "uuid": ratings["user_id"].astype(str) + "/" + ratings["item_id"].astype(str),
        "customer_id": ratings["user_id"].astype(str), "offer": ratings["item_id"].map(offer_name),
        "accepted": 1, "datetime": pd.to_datetime(ratings["timestamp"], unit="s", utc=True),
    })
    customers, offers = customer_features_of(users), offer_matrix_of(movies)
    frame, _ = build_training_frame(exposures, customers, offers, customer_key="customer_id", offer_key="offer_name")
    return frame, customers, offers


def select_and_train(frame, params: TrainingParams, held: np.ndarray, log=None) -> TrainingResult:
    """Train without looking at the held-out rows: the epochs are chosen by early stopping on the
    parameters' own split of the training rows, then the model is trained on every training row
    for that many epochs of the same run (the learning-rate schedule planned for `epochs`), and the
    last one is kept."""
    training_rows = frame[~held].reset_index(drop=True)
    chosen = fit(prepare(training_rows, params), log)
    return fit(prepare(frame, params, held=held), log, last_epoch=chosen.best_epoch)


def run_protocol(frame, customers, offers, params: TrainingParams, baselines=evaluation.BASELINES, log=None) -> dict:
    """{name: metrics} for the two-tower run and the baselines, on the split `split_of(frame, params)`;
    the two-tower's epochs are chosen on its training rows only (`select_and_train`)."""
    started = time.perf_counter()
    held = split_of(frame, params)
    result = select_and_train(frame, params, held, log=log)
    seconds = time.perf_counter() - started
    run = TrainedRun(run={"run_id": "protocol", "predictor": "ml100k"}, model=result.model)
    users = publishing.user_embedding_set(run, customers, frame)
    items = publishing.item_embedding_set(run, offers, frame)
    held_out = evaluation.HeldOut.from_frame(frame, held, users.keys, items.keys)
    results = evaluation.compare_with_baselines(evaluation.VectorScorer(users.vectors, items.vectors), held_out,
                                                baselines=baselines, seed=params.seed)
    results["two_tower"].update(seconds=seconds, epochs=result.epochs_run, best_epoch=result.epochs_run)
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42])
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="training parameters other than the defaults (JSON values)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    overrides = {k: json.loads(v) for k, v in (item.split("=", 1) for item in args.set)}
    frame, customers, offers = implicit_frame()
    print(f"MovieLens 100K implicit: {len(frame):,} exposures, {frame['customer_id'].nunique()} customers, "
          f"{frame['offer'].nunique()} offers; parameters: defaults, validation_split 0.25"
          + (f", {overrides}" if overrides else ""))
    rows, figures = [], {}
    for seed in args.seeds:
        params = TrainingParams(**{"validation_split": 0.25, "seed": seed, **overrides})
        results = run_protocol(frame, customers, offers, params, baselines=evaluation.BASELINES if seed ==
                               args.seeds[0] else ())
        figures[seed] = results
        tower = results["two_tower"]
        rows.append((f"two-tower, seed {seed} ({tower['epochs']} epochs, {tower['seconds']:.0f} s)",
                     *(tower[c] for c in COLUMNS)))
        if seed == args.seeds[0]:
            for name in evaluation.BASELINES:
                if name in results:
                    rows.append((name, *(results[name][c] for c in COLUMNS)))
    for name, values in PUBLISHED.items():
        rows.append((name, *values, float("nan")))
    header = ("model", "Precision@10", "Recall@10", "NDCG@10", "MAP", "coverage@10")
    width = max(len(r[0]) for r in rows)
    print(f"{header[0]:<{width}}  " + "  ".join(f"{h:>12}" for h in header[1:]))
    for name, *values in rows:
        print(f"{name:<{width}}  " + "  ".join(f"{v:>12.3f}" if not np.isnan(v) else f"{'':>12}" for v in values))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(figures, handle, indent=2, default=float)
    return 0


if __name__ == "__main__":
    sys.exit(main())
