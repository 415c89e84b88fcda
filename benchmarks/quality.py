"""The README's quality table, in one command: MovieLens 100K under the published implicit
protocol, and the UCI coupon data with its real declines.

Neither data set's held-out rows are looked at while training: the two-tower's epochs are chosen
by early stopping on a split of the training rows, then it is trained on all of them for that many
epochs of the same run (`movielens_protocol.select_and_train`: the learning-rate schedule is the
one planned for `epochs`); the figure after "epochs" is that number.

MovieLens 100K (`benchmarks.movielens_protocol`): every rating an accept, per customer a seeded 25%
held out, the whole catalogue ranked with the customer's training movies left out, K = 10, the
exported vectors scored. Rows: popularity, EASE (lambda 500) and random on the same split; the
defaults for three seeds (mean and spread: the split, the initialisation and the sampling all
move with the seed; each seed's NDCG@10 in the label); the main alternatives at seed 42; the
defaults and the baselines again on a time-based split (the last 30 days held out) as a check
that the defaults are not fitted to one split; and the published BPR and BiVAE figures of the
protocol.

Coupons: the CSV's rows split 80/20 by scikit-learn (`train_test_split`, random_state 42); the
two-tower trains on the training rows through the pipeline's own frame (runtime logs -> flatten ->
frame) and is scored by the accept/decline AUC of the cosine of the exported vectors on the
held-out rows, against logistic regression (one-hot) and gradient-boosted trees
(`HistGradientBoostingClassifier`, categorical) on the same rows and the same columns (the driver
columns, coupon and expiration), and the trees again with the driving context added (what each
request's `in_params` carries). The two-tower is scored twice: with each held-out row's own
request context in its customer vector (`context_<key>` columns, as a serving process would embed
the customer for that request) and with the exported vectors (no request: the context neutral).

    .venv/bin/python -m benchmarks.quality [--quick] [--only movielens|coupons] [--json FILE]
    (needs `make bench`: scikit-learn)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np

from benchmarks.movielens_protocol import PUBLISHED, implicit_frame, run_protocol, select_and_train
from twotower_pipeline.model import TrainingParams, evaluation

SEEDS = (42, 7, 2026)
RANKING = ("precision@10", "recall@10", "ndcg@10", "map@10", "coverage@10")
#: name -> parameters other than the defaults (and the protocol's validation_split)
ALTERNATIVES = {
    "customer id embedding instead of its history (`user_history=\"off\"`)": {"user_history": "off"},
    "the exact softmax over the whole catalogue (`loss=\"mixed\"`)": {"loss": "mixed"},
    "in-batch + 256 sampled catalogue negatives (`loss=\"mixed\"`, `n_catalogue_negatives=256`)":
        {"loss": "mixed", "n_catalogue_negatives": 256},
    "no popularity prior (`popularity_prior=0`)": {"popularity_prior": 0.0},
    "temperature 0.2 (`temperature=0.2`)": {"temperature": 0.2},
    "a constant learning rate (`learning_rate_schedule=\"constant\"`)": {"learning_rate_schedule": "constant"},
    "the previous defaults: temperature 0.2, a constant learning rate":
        {"temperature": 0.2, "learning_rate_schedule": "constant"},
    "linear feature parts (`layers=0`)": {"layers": 0},
    "no history dropout (`history_dropout=0`)": {"history_dropout": 0.0},
    "no feature dropout (`feature_dropout=0`)": {"feature_dropout": 0.0},
    "no side features (`side_features=false`: ids and history only)": {"side_features": False},
}
COUPON_ALTERNATIVES = {
    "without the request context (`request_context=false`)": {"request_context": False},
    "no request-context dropout (`request_context_dropout=0`)": {"request_context_dropout": 0.0},
    "with the customer's history (`user_history=\"on\"`)": {"user_history": "on"},
    "catalogue softmax + 0.5 pointwise (`loss=\"mixed\"`)": {"loss": "mixed"},
    "the softmax's temperature in the BCE term too (`pointwise_temperature=0.1`)": {"pointwise_temperature": 0.1},
    "a cosine learning-rate decay (`learning_rate_schedule=\"cosine\"`)": {"learning_rate_schedule": "cosine"},
}


def movielens(quick: bool) -> list[tuple[str, dict]]:
    frame, customers, offers = implicit_frame()
    rows = []
    seeds = SEEDS[:1] if quick else SEEDS
    runs = []
    for seed in seeds:
        results = run_protocol(frame, customers, offers, TrainingParams(validation_split=0.25, seed=seed),
                               baselines=evaluation.BASELINES if seed == seeds[0] else ())
        runs.append(results["two_tower"])
        if seed == seeds[0]:
            for name in ("popularity", "ease", "random"):
                rows.append((name if name != "ease" else "EASE (lambda 500)", results[name]))
    per_seed = ", ".join(format(r["ndcg@10"], ".3f") for r in runs)
    label = (f"**two-tower, defaults** (seeds {', '.join(map(str, seeds))}: NDCG@10 {per_seed}; epochs "
             f"{', '.join(str(r['epochs']) for r in runs)}; {statistics.mean(r['seconds'] for r in runs):.0f} s a run)")
    rows.append((label, _mean_and_spread(runs)))
    for name, overrides in ({} if quick else ALTERNATIVES).items():
        results = run_protocol(frame, customers, offers, TrainingParams(validation_split=0.25, **overrides),
                               baselines=())
        rows.append((name, results["two_tower"]))
    if not quick:
        timed = run_protocol(frame, customers, offers, TrainingParams(holdout="time", holdout_days=30))
        for name, label in (("popularity", "popularity"), ("ease", "EASE")):
            rows.append((f"time split (last 30 days): {label}", timed[name]))
        rows.append(("time split (last 30 days): two-tower, defaults", timed["two_tower"]))
    for name, values in PUBLISHED.items():
        rows.append((name, dict(zip(RANKING, values))))
    return rows


def _mean_and_spread(runs: list[dict]) -> dict:
    out = {}
    for key in RANKING:
        values = [r[key] for r in runs]
        out[key] = statistics.mean(values)
        out[key + "_spread"] = (max(values) - min(values)) / 2 if len(values) > 1 else float("nan")
    return out


def coupons(quick: bool) -> list[tuple[str, float]]:
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder

    from benchmarks.compare_losses import coupon_frame
    from twotower_pipeline.ingest import datasets
    from twotower_pipeline.ingest.context import context_columns
    from twotower_pipeline.ingest.coupon import CONTEXT_NAMES, DRIVER_COLUMNS, PREDICTOR, read_coupons
    from twotower_pipeline.ingest.runtime_logs import request_uuid

    raw = read_coupons(datasets.find_dataset(datasets.COUPONS) / "in-vehicle-coupon-recommendation.csv")
    train_rows, test_rows = train_test_split(np.arange(len(raw)), test_size=0.2, random_state=42)
    y = raw["accepted"].to_numpy()
    rows = []

    def trees_auc(columns) -> float:
        x = raw[columns].to_numpy(dtype=str)
        ordinal = OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1).fit(x[train_rows])
        trees = HistGradientBoostingClassifier(categorical_features=[True] * len(columns),
                                               random_state=42).fit(ordinal.transform(x[train_rows]), y[train_rows])
        return roc_auc_score(y[test_rows], trees.predict_proba(ordinal.transform(x[test_rows]))[:, 1])

    kept = [*DRIVER_COLUMNS, "coupon", "expiration"]
    x = raw[kept].to_numpy(dtype=str)
    onehot = OneHotEncoder(handle_unknown="ignore").fit(x[train_rows])
    logistic = LogisticRegression(max_iter=2000).fit(onehot.transform(x[train_rows]), y[train_rows])
    rows.append(("logistic regression (one-hot)", roc_auc_score(
        y[test_rows], logistic.predict_proba(onehot.transform(x[test_rows]))[:, 1])))
    rows.append(("gradient-boosted trees (HistGradientBoostingClassifier)", trees_auc(kept)))
    rows.append(("gradient-boosted trees with the driving context (the request's `in_params`)",
                 trees_auc([*kept, *(c for c in CONTEXT_NAMES if c not in kept)])))

    frame = coupon_frame().reset_index(drop=True)
    row_of = {request_uuid(PREDICTOR, f"row{i:06d}"): i for i in range(len(raw))}
    held = np.isin(frame["uuid"].map(row_of).to_numpy(), test_rows)
    test = frame[held]
    without_context = test.drop(columns=context_columns(test.columns))  # as exported: no request

    def auc(**overrides) -> tuple[float, float, int]:
        """(AUC with each held-out row's own request context, AUC of the exported vectors, epochs)."""
        result = select_and_train(frame, TrainingParams(**overrides), held)
        items = result.model.item_embeddings(test)
        with_context = (result.model.user_embeddings(test) * items).sum(axis=1)
        exported = (result.model.user_embeddings(without_context) * items).sum(axis=1)
        return (roc_auc_score(test["accepted"], with_context), roc_auc_score(test["accepted"], exported),
                result.epochs_run)

    seeds = SEEDS[:1] if quick else SEEDS
    runs = [auc(seed=seed) for seed in seeds]
    for name, at in (("with each held-out row's request context", 0), ("exported vectors (no request context)", 1)):
        values = [run[at] for run in runs]
        spread = f" ± {(max(values) - min(values)) / 2:.3f}" if len(values) > 1 else ""
        rows.append((f"**two-tower, defaults**, {name} (seeds {', '.join(map(str, seeds))}; epochs "
                     f"{', '.join(str(run[2]) for run in runs)}; per seed "
                     f"{', '.join(format(v, '.3f') for v in values)}){spread}", statistics.mean(values)))
    for name, overrides in ({} if quick else COUPON_ALTERNATIVES).items():
        with_context, exported, _ = auc(**overrides)
        rows.append((f"{name} (exported vectors: {exported:.3f})", with_context))
    return rows


def markdown(movielens_rows, coupon_rows) -> str:
    lines = []
    if movielens_rows:
        lines += ["MovieLens 100K, implicit protocol (K = 10; ± is half the range over the seeds):", "",
                  "| model | Precision@10 | Recall@10 | NDCG@10 | MAP | coverage of top-10 lists |",
                  "|---|---|---|---|---|---|"]
    for name, values in movielens_rows:
        cells = []
        for key in RANKING:
            value = values.get(key, float("nan"))
            spread = values.get(key + "_spread")
            cells.append("—" if np.isnan(value) else f"{value:.3f}" + (
                f" ± {spread:.3f}" if spread is not None and not np.isnan(spread) else ""))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if coupon_rows:
        lines += ["", "Coupons, real declines (accept/decline AUC on the held-out 20% of the rows):", "",
                  "| model | AUC |", "|---|---|"]
        lines += [f"| {name} | {value:.3f} |" for name, value in coupon_rows]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one seed, no alternatives, no time split")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--only", choices=["movielens", "coupons"], help="one data set's table only")
    args = parser.parse_args(argv)
    started = time.monotonic()
    movielens_rows = movielens(args.quick) if args.only != "coupons" else []
    coupon_rows = coupons(args.quick) if args.only != "movielens" else []
    print(markdown(movielens_rows, coupon_rows))
    print(f"\n({time.monotonic() - started:.0f} s)")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"movielens": movielens_rows, "coupons": coupon_rows}, handle, indent=2, default=float)
    return 0


if __name__ == "__main__":
    sys.exit(main())
