"""Training throughput on the CPU: our loop (pre-encoded tensors, batches by index slicing of a
permutation) against a straightforward PyTorch loop of the same model and loss (DataLoader over a
TensorDataset, default settings), same data, same threads, alternating, median of the repeats.

Both train the in-batch softmax with log-Q correction and accidental-hit removal (no pointwise
term, no input noise, so the work per step is the same); examples/s = accepted training pairs
per second of training (validation excluded).
"""

from __future__ import annotations

import dataclasses
import statistics
import time

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, TensorDataset

from twotower_pipeline.model import losses
from twotower_pipeline.model.config import TrainingParams
from twotower_pipeline.model.features import TowerInputs
from twotower_pipeline.model.towers import TwoTowerModel
from twotower_pipeline.model.train import PreparedData, _torch_settings, fit, prepare


def _frame(quick: bool) -> tuple[str, pd.DataFrame]:
    from twotower_pipeline.ingest import datasets
    if datasets.find_dataset(datasets.MOVIELENS) is not None:
        from benchmarks.compare_losses import movielens_frame
        return "MovieLens 100K", movielens_frame()
    rng = np.random.default_rng(0)  # fallback: 2,000 customers x 500 offers, random accepts
    n = 20_000 if quick else 100_000
    customers, offers = rng.integers(0, 2000, n), rng.integers(0, 500, n)
    return "synthetic", pd.DataFrame({
        "customer_id": customers.astype(str), "offer": offers.astype(str),
        "accepted": (rng.random(n) < 0.5).astype(int), "price": (offers % 3).astype(float),
        "rank": rng.integers(1, 6, n).astype(float), "score": rng.random(n),
        "segment": (customers % 7).astype(str),
    })


def reference_loop(data: PreparedData, epochs: int) -> float:
    """The plain way: a DataLoader over a TensorDataset; same model, same loss. Returns examples/s."""
    params = data.params
    rows = torch.from_numpy(data.accepted_train_rows)
    u, i = data.user_inputs.take(rows), data.item_inputs.take(rows)
    n_items = len(data.offers)
    item_keys = torch.from_numpy(data.item_codes)[rows]
    probabilities = losses.sampling_probabilities(data.item_codes[data.accepted_train_rows], n_items)
    log_q = torch.from_numpy(losses.mixed_log_q(probabilities, params.batch_size).astype(np.float32))
    n_user_bags = len(u.multi_hot)
    dataset = TensorDataset(u.ids, u.categorical, u.numeric, *u.multi_hot,
                            i.ids, i.categorical, i.numeric, *i.multi_hot, item_keys)
    loader = DataLoader(dataset, batch_size=params.batch_size, shuffle=True)
    with _torch_settings(params):
        model = TwoTowerModel(params, data.user_encoder, data.item_encoder)
        optimizer = torch.optim.Adam(model.parameters(), lr=params.learning_rate)
        model.train()
        examples, started = 0, time.perf_counter()
        for _ in range(epochs):
            for batch in loader:
                ub = TowerInputs(batch[0], batch[1], batch[2], tuple(batch[3:3 + n_user_bags]))
                rest = batch[3 + n_user_bags:]
                ib = TowerInputs(rest[0], rest[1], rest[2], tuple(rest[3:-1]))
                ids = rest[-1]
                loss = losses.in_batch_softmax_loss(model.user_tower(ub), model.item_tower(ib), ids,
                                                    temperature=params.temperature, log_q=log_q[ids],
                                                    remove_accidental_hits=True)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                examples += len(ids)
        return examples / (time.perf_counter() - started)


def run(uri: str, quick: bool) -> list[dict]:  # uri: unused (no database involved)
    source, frame = _frame(quick)
    epochs, repeats = (1, 3) if quick else (2, 5)
    rows = []
    for batch_size in (1024,) if quick else (1024, 256):
        params = TrainingParams(batch_size=batch_size, epochs=epochs, stopping_rounds=0, loss="softmax",
                                pointwise_weight=0.0, context_dropout=0.0, id_dropout=0.0)
        data = prepare(frame, params)
        ours, reference = [], []
        for _ in range(repeats):
            ours.append(fit(dataclasses.replace(data, params=params)).examples_per_second)
            reference.append(reference_loop(data, epochs))
        rows.append({"figure": f"training throughput, batch {batch_size}, CPU ({source}, "
                               f"{len(data.accepted_train_rows):,} accepted pairs): ours vs DataLoader loop",
                     "ours": statistics.median(ours), "reference": statistics.median(reference),
                     "unit": "examples/s"})
    return rows


if __name__ == "__main__":
    import sys

    from benchmarks.run import format_table
    print(format_table(run("", quick="--quick" in sys.argv)))
