"""The live run's vectors in `twotower serve` at 1,000,000 customers (100,000 with --quick), 1,000
offers, d 32: start-up, memory, and a swap to another run while wrk keeps asking.

- Start-up: from starting the process to its first 200 on `/invocations` (Python and the service's
  imports, the run's vectors read from its binary snapshot in GridFS, sorted, served). Reference: the
  plain way to hold the same vectors (bench_serving's reference app: an `.npz` loaded into a dict of
  numpy vectors), started the same way.
- Memory: the service's resident set once serving, with the vectors in memory and, past a budget
  set below their size, memory-mapped; and the arrays' bytes per customer (`/health`).
- Swap: wrk paces 500 requests/s for 20 s (8 with --quick); a few seconds in, another run of the
  same size is published; reported are how long the publish took to reach the service (the journal
  check, the load, the swap) and p50 / p99 / p99.9 / errors of that window, against the same window
  without a swap (the reference row).

Setup, said plainly: each run's customer vectors are kept the way the export keeps them (its own
collection, committed, and its binary snapshot), but the run's own collection holds the first 1,000
customers only and the snapshot all of them: the service reads the snapshot, never that collection,
and writing 2,000,000 documents into the embedded server (a Python process) would take half an
hour. The publish is the real one (journal, staging, rename, verify) of those small collections.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np

from benchmarks.bench_serving import BIN, REFERENCE_APP, _call, _free_port, _start, _stop, _wrk
from twotower_pipeline.store import artefacts, embeddings, names
from twotower_pipeline.store.client import MongoStore
from twotower_pipeline.store.slices import ALL, SlicedCollection

PREDICTOR = "bench_live_swap"
KEPT_DOCUMENTS = 1_000


def _keep_run(store: MongoStore, run_id: str, customers: list[str], offers: list[str], seed: int) -> dict:
    """A run's vectors kept as the export keeps them (see the module docstring for the customers)."""
    rng = np.random.default_rng(seed)

    def unit(n):
        v = rng.normal(size=(n, 32)).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    users, items = unit(len(customers)), unit(len(offers))
    publisher = embeddings.Publisher(store)
    publisher.write_run("item", run_id, offers, items)
    publisher.write_run("user", run_id, customers[:KEPT_DOCUMENTS], users[:KEPT_DOCUMENTS])
    location = publisher.run_location("user", run_id)
    write_id = SlicedCollection(store, location).committed_slices()[ALL]["write_id"]
    artefacts.replace_artefact(store, embeddings.snapshot_name(location),
                               embeddings.VectorSnapshot(customers, users, write_id))
    store.collection(names.RUNS).insert_one({"run_id": run_id, "predictor": PREDICTOR})
    return {"customers": np.asarray(customers), "user_vectors": users, "offers": np.asarray(offers),
            "offer_vectors": items}


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _health(port: int, key: str) -> dict:
    status, text = _call(port, "GET", "/health", key)
    return json.loads(text) if status in (200, 503) else {}


def _served_run(port: int, key: str) -> dict:
    return _health(port, key).get("live_run") or {}


def run(uri: str, quick: bool) -> list[dict]:
    if shutil.which("wrk") is None:
        return [{"figure": "live-run swap: skipped (wrk is not installed)", "ours": 0.0, "reference": 0.0,
                 "unit": "-"}]
    n_customers = 100_000 if quick else 1_000_000
    seconds, swap_at = (8, 3.0) if quick else (20, 6.0)
    prefix = f"swap{uuid.uuid4().hex[:6]}_"
    store = MongoStore(uri, prefix)
    work = Path(tempfile.mkdtemp(prefix="twotower-bench-swap-"))
    rows = []
    try:
        customers = [f"c{i:07d}" for i in np.random.default_rng(3).permutation(n_customers)]
        offers = [f"o{i:04d}" for i in range(1_000)]
        started = time.monotonic()
        first = _keep_run(store, "swap_a", customers, offers, seed=1)
        _keep_run(store, "swap_b", customers, offers, seed=2)
        embeddings.Publisher(store).publish("swap_a")
        matrix = store.collection(names.OFFER_MATRIX)
        matrix.insert_many([{"offer_name": o, "offer_id": i, "price": 1.0, "cost": 0.4} for i, o in enumerate(offers)])
        print(f"  two runs of {n_customers:,} customers kept and one published in {time.monotonic() - started:.0f} s",
              flush=True)
        np.savez(work / "vectors.npz", **first)
        lines = [json.dumps({"campaign": PREDICTOR, "channel": "app", "customer": c, "numberoffers": 10})
                 for c in customers[:200_000]]
        bodies = work / "bodies.jsonl"
        bodies.write_text("\n".join(lines) + "\n")
        key = secrets.token_urlsafe(24)
        base_env = {k: v for k, v in os.environ.items() if not k.startswith("TWOTOWER_")}
        env = {**base_env, "MONGODB_URI": uri, "TWOTOWER_DATABASE_PREFIX": prefix, "TWOTOWER_RUNTIME_KEY": key,
               "TWOTOWER_WORKBENCH_KEY": secrets.token_urlsafe(24), "TWOTOWER_RELOAD_SECONDS": "1"}
        command = [str(BIN / "twotower"), "serve"]

        def start(name: str, budget: int | None):
            folder = work / name
            folder.mkdir()
            extra = {"TWOTOWER_JOURNAL_DIR": str(folder / "journal"), "TWOTOWER_VECTOR_CACHE_DIR": str(folder / "v")}
            if budget is not None:
                extra["TWOTOWER_MEMORY_BUDGET_BYTES"] = str(budget)
            port = _free_port()
            began = time.monotonic()
            process, _ = _start(name, [*command, "--port", str(port)], {**env, **extra}, port, work,
                                lines[0].encode(), key)
            return process, port, time.monotonic() - began

        # start-up and memory: in memory, then memory-mapped, then the reference app
        served, port, startup = start("in-memory", None)
        live = _served_run(port, key)
        rss = _rss_bytes(served.pid)
        (work / "reference_app.py").write_text(REFERENCE_APP)
        reference_port = _free_port()
        began = time.monotonic()
        reference, _ = _start("reference", [str(BIN / "uvicorn"), "reference_app:app", "--host", "127.0.0.1",
                                            "--port", str(reference_port), "--log-level", "warning",
                                            "--no-access-log"],
                              {**base_env, "BENCH_REFERENCE_VECTORS": str(work / "vectors.npz"),
                               "BENCH_REFERENCE_CAMPAIGN": PREDICTOR}, reference_port, work, lines[0].encode(), key)
        reference_startup = time.monotonic() - began
        reference_rss = _rss_bytes(reference.pid)
        _stop(reference)
        print(f"  start-up: ours {startup:.1f} s (load {live.get('load_seconds')} s), reference "
              f"{reference_startup:.1f} s;"
              f" resident {rss / 2**20:,.0f} MiB, reference {reference_rss / 2**20:,.0f} MiB; "
              f"{live.get('customer_vector_bytes', 0) / n_customers:.0f} bytes per customer in the arrays", flush=True)

        # the swap under load, after a window of the same load without one
        _wrk(port, bodies, key, 200, 3)  # warm-up
        steady = _wrk(port, bodies, key, 500, seconds)
        published = {}

        def publish_later():
            time.sleep(swap_at)
            began = time.monotonic()
            embeddings.Publisher(store).publish("swap_b")
            published["publish_s"] = time.monotonic() - began
            while _served_run(port, key).get("run_id") != "swap_b" and time.monotonic() - began < 120:
                time.sleep(0.05)
            published["served_s"] = time.monotonic() - began

        publisher = threading.Thread(target=publish_later)
        publisher.start()
        swapped = _wrk(port, bodies, key, 500, seconds)
        publisher.join()
        after = _served_run(port, key)
        _stop(served)
        served, port, mapped_startup = start("memory-mapped", 1 << 20)
        mapped = _served_run(port, key)
        mapped_rss = _rss_bytes(served.pid)
        _stop(served)
        print(f"  swap: publish {published.get('publish_s', 0):.1f} s, served {published.get('served_s', 0):.1f} s "
              f"after the publish began (load {after.get('load_seconds')} s); memory-mapped: start-up "
              f"{mapped_startup:.1f} s, resident {mapped_rss / 2**20:,.0f} MiB, mapped {mapped.get('memory_mapped')}",
              flush=True)
        for label, result in (("steady", steady), ("swap", swapped)):
            print(f"  {label}: achieved {result['achieved']:,.0f}/s, p50 {result['p50']:.2f} ms, p99 "
                  f"{result['p99']:.2f} ms, p99.9 {result['p999']:.2f} ms, errors {result['errors']}, steal "
                  f"{result['steal']:.0%}", flush=True)
        n = f"{n_customers:,} customers"
        rows = [
            {"figure": f"start-up to the first answer, {n} (ours: snapshot -> sorted arrays)", "ours": startup,
             "reference": reference_startup, "unit": "s (reference: .npz into a dict of vectors; lower is better)"},
            {"figure": f"resident memory serving, {n}", "ours": rss / 2**20, "reference": reference_rss / 2**20,
             "unit": f"MiB (arrays {live.get('customer_vector_bytes', 0) / n_customers:.0f} bytes per customer)"},
            {"figure": f"resident memory serving, {n}, memory-mapped past a 1 MiB budget", "ours": mapped_rss / 2**20,
             "reference": rss / 2**20, "unit": "MiB (reference: ours in memory)"},
            {"figure": f"a swap to another run of {n}: publish begun -> served", "ours": published.get("served_s", 0),
             "reference": after.get("load_seconds") or 0.0, "unit": "s (reference: the service's own load time)"},
            {"figure": "p99 at 500 req/s in a window with that swap vs one without", "ours": swapped["p99"],
             "reference": steady["p99"], "unit": f"ms (errors: {swapped['errors']} and {steady['errors']}; p99.9 "
                                                 f"{swapped['p999']:.1f} and {steady['p999']:.1f} ms)"},
        ]
    finally:
        shutil.rmtree(work, ignore_errors=True)
        for name in store.client.list_database_names():
            if name.startswith(prefix):
                store.client.drop_database(name)
    return rows
