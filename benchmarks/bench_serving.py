"""Real-time scoring: the scorer alone, and `/invocations` of `twotower serve` under load.

Scorer: p99 of one ranking (top 10) of 1,000 and 10,000 offers, ours (`SimilarityScorer`, the
project's top-K kernel) against the plain numpy way (one matrix-vector product, argpartition,
sort of the k best).

Service: 100,000 customers with vectors and 1,000 offers published (20,000 with --quick);
`twotower serve` started as a user starts it, in its own process, against the same MongoDB. The
load is Debian's `wrk` (C, one thread, 32 keep-alive connections) paced to a fixed rate by
`wrk_paced.lua`, a random customer's body per request (`numberoffers` 10). Each rate runs a fixed
time after a warm-up, ours and the reference alternated rate by rate. Reported: achieved rate, p50,
p99, p99.9 (wrk's histogram, timed from each request's send) and errors at 100, 500 and 1,000
requests/s, and the highest rate of a sweep (100 to 4,000 requests/s, until one misses) whose p99
stays within 5 ms with no errors; then whether every acknowledged (200) request was logged (its
presented document) exactly once. Reference: the plain way to write this endpoint on the same
stack, a minimal FastAPI app on uvicorn (one worker, access log off) holding the same vectors in
memory (a dict of numpy vectors, the offers as one matrix), ranking by cosine with argpartition,
logging nothing.
"""

from __future__ import annotations

import http.client
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

from twotower_pipeline.serving.scorer import SimilarityScorer
from twotower_pipeline.store import embeddings, names
from twotower_pipeline.store.client import MongoStore
from twotower_pipeline.store.frames import INSERT_BATCH

BIN = Path(sys.executable).parent
P99_BUDGET_MS = 5.0
PREDICTOR = "bench_serving"


# --- the scorer alone ----------------------------------------------------------------------------------
def _p99(samples: list[float]) -> float:
    return float(np.percentile(np.asarray(samples) * 1e3, 99))


def _numpy_top_k(items: np.ndarray, user: np.ndarray, k: int):
    scores = items @ user
    best = np.argpartition(-scores, k)[:k]
    return best[np.argsort(-scores[best], kind="stable")], scores


def scorer_rows(quick: bool) -> list[dict]:
    rows = []
    rng = np.random.default_rng(0)
    repeats = 2_000 if quick else 10_000
    for n_offers in (1_000, 10_000):
        vectors = rng.normal(size=(n_offers, 32)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        scorer = SimilarityScorer("bench", [f"o{i}" for i in range(n_offers)], vectors)
        users = rng.normal(size=(repeats, 32)).astype(np.float32)
        ours, reference = [], []
        for user in users:  # alternated, so both see the same machine state
            start = time.perf_counter()
            scorer.rank(user, 10)
            ours.append(time.perf_counter() - start)
            start = time.perf_counter()
            _numpy_top_k(vectors, user / np.linalg.norm(user), 10)
            reference.append(time.perf_counter() - start)
        rows.append({"figure": f"scorer p99, top 10 of {n_offers:,} offers", "ours": _p99(ours),
                     "reference": _p99(reference), "unit": "ms (reference: numpy argpartition)"})
    return rows


# --- the service under load ------------------------------------------------------------------------
WRK_SCRIPT = Path(__file__).with_name("wrk_paced.lua")
#: wrk's connections: a connection carries one request at a time, so 32 keep the pacing on time until
#: a request takes 32 / rate (16 ms at 2,000 requests/s, 3x the p99 budget); past that the service
#: has fallen behind anyway, and the sends that came late are counted.
CONNECTIONS = 32
REPORTED_RATES = (100, 500, 1000)
SWEEP = (100, 200, 300, 500, 750, 1000, 1500, 2000, 3000, 4000)
WARM_UP_RATE = 200
#: The last seconds of each wrk run send nothing, so what was sent is answered before wrk stops.
GRACE_S = 0.5
START_TIMEOUT_S = 180.0
LOGGED_DEADLINE_S = 120.0
#: Where the service may say how many log documents it has not shipped yet (tried in order).
HEALTH_PATHS = ("/health", "/api/v1/algorithms/two-tower/health")
#: Answers to the start-up probe that waiting does not change: a wrong key, host or body.
REFUSED = frozenset({400, 401, 403, 405, 413, 422})


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _publish(store: MongoStore, n_customers: int, n_offers: int) -> dict[str, np.ndarray]:
    """Publish a run of random unit vectors; returns them (the reference holds the same ones)."""
    rng = np.random.default_rng(1)
    customers = [f"c{i:06d}" for i in range(n_customers)]
    offers = [f"o{i:04d}" for i in range(n_offers)]

    def unit(n):
        v = rng.normal(size=(n, 32)).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    user_vectors, offer_vectors = unit(n_customers), unit(n_offers)
    publisher = embeddings.Publisher(store)
    publisher.write_run("user", "bench_run", customers, user_vectors)
    publisher.write_run("item", "bench_run", offers, offer_vectors)
    publisher.publish("bench_run")
    store.collection(names.RUNS).insert_one({"run_id": "bench_run", "predictor": PREDICTOR})
    matrix = store.collection(names.OFFER_MATRIX)
    for start in range(0, n_offers, INSERT_BATCH):
        matrix.insert_many([{"offer_name": o, "offer_id": i, "price": 1.0, "cost": 0.4}
                            for i, o in enumerate(offers[start:start + INSERT_BATCH], start)])
    return {"customers": np.asarray(customers), "user_vectors": user_vectors,
            "offers": np.asarray(offers), "offer_vectors": offer_vectors}


REFERENCE_APP = '''
"""The reference /invocations: the vectors in memory, cosine, top k by argpartition; no logging."""
import os
import uuid
from typing import Optional

import numpy as np
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field

data = np.load(os.environ["BENCH_REFERENCE_VECTORS"])
CAMPAIGN = os.environ["BENCH_REFERENCE_CAMPAIGN"]
offers = [str(offer) for offer in data["offers"]]
matrix = np.ascontiguousarray(data["offer_vectors"] / np.linalg.norm(data["offer_vectors"], axis=1, keepdims=True))
users = {str(c): v / np.linalg.norm(v) for c, v in zip(data["customers"], data["user_vectors"])}
app = FastAPI()


class Invocation(BaseModel):
    campaign: str
    subcampaign: Optional[str] = None
    channel: str = "default"
    customer: str
    numberoffers: int = Field(default=1, ge=1, le=100)
    userid: Optional[str] = None
    in_params: dict = {}


@app.post("/invocations")
async def invocations(request: Invocation):
    vector = users.get(request.customer)
    if request.campaign != CAMPAIGN or vector is None:
        raise HTTPException(404, "unknown campaign or customer")
    scores = matrix @ vector
    k = min(request.numberoffers, len(offers))
    best = np.argpartition(-scores, k - 1)[:k]
    best = best[np.argsort(-scores[best])]
    return {"final_result": [{"rank": rank, "result": {"offer": offers[i], "offer_name": offers[i],
                                                       "score": float(scores[i])}}
                             for rank, i in enumerate(best, 1)],
            "explore": 0, "uuid": str(uuid.uuid4())}
'''


def _call(port: int, method: str, path: str, key: str, body: bytes | None = None) -> tuple[int | None, str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(method, path, body, {"Content-Type": "application/json", "X-API-Key": key})
        answer = connection.getresponse()
        return answer.status, answer.read().decode("utf-8", "replace")
    except OSError as error:
        return None, str(error)
    finally:
        connection.close()


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) or "(empty)"
    except OSError as error:
        return f"(unreadable: {error})"


def _start(name: str, command: list[str], env: dict, port: int, cwd: Path, probe: bytes,
           key: str) -> tuple[subprocess.Popen, int]:
    """Start `command` (stdout and stderr into `cwd`/`name`.log) and wait until a real request is
    answered 200. Returns the process and how many 200s that took (requests the service logs)."""
    log_path = cwd / f"{name}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    deadline = time.monotonic() + START_TIMEOUT_S
    last = "no answer yet"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} ({' '.join(command)}) exited with status {process.returncode} before "
                               f"answering; the end of its output ({log_path}):\n{_tail(log_path)}")
        status, text = _call(port, "POST", "/invocations", key, probe)
        if status == 200:
            return process, 1
        last = f"{status} {text[:300]}" if status else text
        if status in REFUSED:  # no waiting cures these (503 and 404 can: nothing live yet)
            _stop(process)
            raise RuntimeError(f"{name} refused the benchmark's request: {last}; the end of its output "
                               f"({log_path}):\n{_tail(log_path)}")
        time.sleep(0.5)
    _stop(process)
    raise RuntimeError(f"{name} did not answer POST /invocations with 200 within {START_TIMEOUT_S:.0f} s (last "
                       f"answer: {last}); the end of its output ({log_path}):\n{_tail(log_path)}")


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _wrk(port: int, bodies: Path, key: str, rate: int, seconds: int) -> dict:
    """One wrk run at `rate` requests/s for `seconds`; its WRK_RESULT line, with figures derived.
    wrk times a request from its send; after the run it adds to its histogram the samples a paced
    client would have seen behind a response slower than twice a connection's interval (32 / rate),
    so a stall far over the budget is not hidden; the sends that came late are counted as well."""
    env = {**os.environ, "BENCH_WRK_RATE": str(rate), "BENCH_WRK_BODIES": str(bodies), "BENCH_WRK_API_KEY": key,
           "BENCH_WRK_SEED": str(rate), "BENCH_WRK_SEND_S": str(seconds - GRACE_S)}
    command = ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", "--timeout", "2s", "--latency",
               "-s", str(WRK_SCRIPT), f"http://127.0.0.1:{port}/invocations"]
    stolen = _steal_s()
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=seconds + 60)
    stolen = _steal_s() - stolen
    line = next((line for line in done.stdout.splitlines() if line.startswith("WRK_RESULT ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"{' '.join(command)} failed (status {done.returncode}):\n"
                           f"{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    result = json.loads(line.split(" ", 1)[1])
    socket_errors = sum(result[name] for name in ("connect", "read", "write", "timeout"))
    achieved = result["responses"] / result["window_s"] if result["window_s"] > 0 else 0.0
    behind = achieved < 0.95 * rate or result["late"] > 0.01 * max(result["sent"], 1)
    return {**result, "rate": rate, "achieved": achieved, "errors": socket_errors + result["non200"],
            "steal": stolen / (seconds * (os.cpu_count() or 1)),
            "unseen": max(result["sent"] - result["responses"], 0), "behind": behind,
            "p50": result["p50_us"] / 1e3, "p99": result["p99_us"] / 1e3, "p999": result["p999_us"] / 1e3}


def _steal_s() -> float:
    """CPU seconds the hypervisor gave other guests, all cores (Linux's `steal`; 0 where unknown):
    a run during which neighbours took much of the machine says so beside its figures."""
    try:
        with open("/proc/stat") as stat:
            return int(stat.readline().split()[8]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def _holds(result: dict) -> bool:
    return result["p99"] <= P99_BUDGET_MS and result["errors"] == 0 and not result["behind"]


def _describe(label: str, r: dict) -> str:
    errors = f"{r['errors']} errors"
    if r["errors"]:
        kinds = {name: r[name] for name in ("non200", "connect", "read", "write", "timeout") if r[name]}
        errors += " (" + ", ".join(f"{name} {count}" for name, count in kinds.items()) + ")"
    verdict = "holds" if _holds(r) else ("fell behind" if r["behind"] else
                                         f"p99 over {P99_BUDGET_MS:.0f} ms" if r["p99"] > P99_BUDGET_MS else "errors")
    late = f", {r['late']} sent late" if r["late"] else ""
    return (f"  {label:<9} {r['rate']:>5} req/s: achieved {r['achieved']:,.0f}/s, p50 {r['p50']:.2f} ms, "
            f"p99 {r['p99']:.2f} ms, p99.9 {r['p999']:.2f} ms, {errors}{late}, steal {r['steal']:.0%}: {verdict}")


def _sweep(ports: dict[str, int], bodies: Path, key: str, seconds: int) -> dict[str, dict]:
    """A warm-up of each service, then SWEEP's rates, the services alternated at each rate (a shared
    machine's slow spell then falls on both). A service goes up the rates while they hold (p99 within
    the budget, no errors, on time); a rate that misses is run a second time, whose result stands
    (both are printed); after its first miss a service runs only the REPORTED_RATES still to come.
    Returns, per service, its results by rate, the highest rate held before its first miss (0 if
    none), and the counts for the logging check."""
    sides = {label: {"results": {}, "best": 0, "missed": False, "ok": 0, "unseen": 0} for label in ports}
    runs = [(WARM_UP_RATE, True)] + [(rate, False) for rate in SWEEP]
    for rate, warm_up in runs:
        for label, port in ports.items():
            side = sides[label]
            if side["missed"] and rate not in REPORTED_RATES and not warm_up:
                continue
            for attempt in (1, 2):  # a miss is run once more: on a shared machine one slow spell is not a verdict
                time.sleep(1.0)  # what the last run left queued drains first
                result = _wrk(port, bodies, key, rate, max(2, seconds // 3) if warm_up else seconds)
                side["ok"], side["unseen"] = side["ok"] + result["ok"], side["unseen"] + result["unseen"]
                print(_describe(label, result) + (" (warm-up)" if warm_up else "") +
                      (" (the second run of this rate)" if attempt == 2 else ""), flush=True)
                if warm_up or _holds(result) or side["missed"]:
                    break
            if warm_up:
                continue
            side["results"][rate] = result
            if _holds(result) and not side["missed"]:
                side["best"] = rate
            else:
                side["missed"] = True
    return sides


def _pending_logs(port: int, keys: tuple[str, ...]) -> int | None:
    """Log documents the service says it has not shipped yet (a field naming pending log or journal
    documents in its health answer, e.g. `journal.documents_pending`); None where it says nothing of
    the kind. A failing service answers its health with 503 and still says it."""
    def find(value, path: str) -> list[int]:
        if isinstance(value, dict):
            return [n for k, v in value.items() for n in find(v, f"{path}.{k}".lower())]
        name = path.rsplit(".", 1)[-1]
        counted = "pending" in name and "doc" in name and ("log" in path or "journal" in path)
        return [value] if counted and isinstance(value, int) and not isinstance(value, bool) else []

    for path in HEALTH_PATHS:
        for key in keys:
            status, text = _call(port, "GET", path, key)
            if status in (200, 503):
                try:
                    found = find(json.loads(text), "")
                except ValueError:
                    found = []
                if found:
                    return sum(found)
    return None


def _wait_logged(store: MongoStore, port: int, keys: tuple[str, ...]) -> dict:
    """Count the benchmark's presented documents once the count stops growing: unchanged for 1 s with
    nothing pending by the service's health answer, or unchanged for 5 s, or at the deadline."""
    presented = store.collection(names.PRESENTED)
    started = time.monotonic()
    count, since, pending = -1, started, None
    while time.monotonic() - started < LOGGED_DEADLINE_S:
        now_count = presented.count_documents({"predictor": PREDICTOR})
        pending = _pending_logs(port, keys)
        now = time.monotonic()
        if now_count != count:
            count, since = now_count, now
        elif (pending == 0 and now - since >= 1.0) or now - since >= 5.0:
            break
        time.sleep(0.5)
    return {"logged": count, "pending": pending, "waited_s": time.monotonic() - started}


def _distinct_uuids(store: MongoStore) -> int | None:
    try:
        counted = list(store.collection(names.PRESENTED).aggregate(
            [{"$match": {"predictor": PREDICTOR}}, {"$group": {"_id": "$uuid"}}, {"$count": "n"}]))
    except Exception as error:  # the embedded server may not do this aggregation
        print(f"  (distinct uuids not counted: {type(error).__name__}: {error})", flush=True)
        return None
    return counted[0]["n"] if counted else 0


def _logging_verdict(acknowledged: int, unseen: int, logged: int, distinct: int | None) -> str:
    """Every acknowledged request logged exactly once? `unseen` requests were sent but wrk stopped
    before their answer: the service may have answered and logged them."""
    problems = []
    if distinct is not None and distinct != logged:
        problems.append(f"{logged - distinct:,} duplicates")
    if logged < acknowledged:
        problems.append(f"at least {acknowledged - logged:,} acknowledged requests not logged")
    if logged > acknowledged + unseen:
        problems.append(f"{logged - acknowledged - unseen:,} more documents than requests sent")
    if problems:
        return "FAILED: " + ", ".join(problems)
    extra = f", and {logged - acknowledged} of the {unseen} sent but unanswered when wrk stopped" if unseen else ""
    return f"each acknowledged request logged once{extra}"


def _sweep_table(ours: dict, reference: dict) -> str:
    """The two sweeps side by side, as a markdown table for the README."""
    def cells(result):
        if result is None:
            return ["-"] * 6
        errors = str(result["errors"]) + (" (behind)" if result["behind"] else "")
        return [f"{result['achieved']:,.0f}", f"{result['p50']:.2f}", f"{result['p99']:.2f}",
                f"{result['p999']:.2f}", errors, f"{result['steal']:.0%}"]

    head = ["offered req/s", "ours achieved", "p50 ms", "p99 ms", "p99.9 ms", "errors", "steal",
            "reference achieved", "p50 ms", "p99 ms", "p99.9 ms", "errors", "steal"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for rate in sorted(set(ours) | set(reference)):
        lines.append("| " + " | ".join([f"{rate:,}", *cells(ours.get(rate)), *cells(reference.get(rate))]) + " |")
    return "\n".join(lines)


def _skipped(reason: str) -> list[dict]:
    print(f"  bench_serving: the service rows are skipped: {reason}", file=sys.stderr, flush=True)
    return [{"figure": f"/invocations under load: skipped ({reason})", "ours": 0.0, "reference": 0.0,
             "unit": "-"}]


def service_rows(uri: str, quick: bool) -> list[dict]:
    if shutil.which("wrk") is None:
        return _skipped("wrk is not installed; `make bench` installs Debian's wrk with apt-get where it can")
    n_customers = 20_000 if quick else 100_000
    seconds = 4 if quick else 10
    prefix = f"bench{uuid.uuid4().hex[:6]}_"
    store = MongoStore(uri, prefix)
    work = Path(tempfile.mkdtemp(prefix="twotower-bench-serving-"))
    keep = False
    try:
        published = _publish(store, n_customers, 1_000)
        np.savez(work / "vectors.npz", **published)
        bodies = work / "bodies.jsonl"
        lines = [json.dumps({"campaign": PREDICTOR, "channel": "app", "customer": str(c), "numberoffers": 10})
                 for c in published["customers"]]
        bodies.write_text("\n".join(lines) + "\n")
        probe = lines[0].encode()
        runtime_key, workbench_key = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
        base_env = {k: v for k, v in os.environ.items() if not k.startswith("TWOTOWER_")}
        (work / "journal").mkdir()
        (work / "vectors").mkdir()
        env = {**base_env, "MONGODB_URI": uri, "TWOTOWER_DATABASE_PREFIX": prefix,
               "TWOTOWER_RUNTIME_KEY": runtime_key, "TWOTOWER_WORKBENCH_KEY": workbench_key,
               "TWOTOWER_JOURNAL_DIR": str(work / "journal"), "TWOTOWER_VECTOR_CACHE_DIR": str(work / "vectors")}

        (work / "reference_app.py").write_text(REFERENCE_APP)
        reference_env = {**base_env, "BENCH_REFERENCE_VECTORS": str(work / "vectors.npz"),
                         "BENCH_REFERENCE_CAMPAIGN": PREDICTOR}
        ports = {"ours": _free_port(), "reference": _free_port()}
        while ports["reference"] == ports["ours"]:
            ports["reference"] = _free_port()
        processes = []
        try:
            served, acknowledged = _start(
                "twotower-serve", [str(BIN / "twotower"), "serve", "--port", str(ports["ours"])], env,
                ports["ours"], work, probe, runtime_key)
            processes.append(served)
            processes.append(_start(
                "reference", [str(BIN / "uvicorn"), "reference_app:app", "--host", "127.0.0.1",
                              "--port", str(ports["reference"]), "--workers", "1", "--log-level", "warning",
                              "--no-access-log"],
                reference_env, ports["reference"], work, probe, runtime_key)[0])
            swept = _sweep(ports, bodies, runtime_key, seconds)
            ours, reference = swept["ours"], swept["reference"]
            acknowledged += ours["ok"]
            logged = _wait_logged(store, ports["ours"], (runtime_key, workbench_key))
        finally:
            for process in processes:
                _stop(process)
        after_stop = store.collection(names.PRESENTED).count_documents({"predictor": PREDICTOR})
        distinct = _distinct_uuids(store)
        verdict = _logging_verdict(acknowledged, ours["unseen"], logged["logged"], distinct)
        print(f"  logging: {acknowledged:,} requests acknowledged (200), {ours['unseen']} sent but unanswered when "
              f"wrk stopped; {logged['logged']:,} presented documents logged after waiting {logged['waited_s']:.1f} s "
              f"(pending by the health answer: {logged['pending']}), {after_stop:,} once the service had stopped, "
              f"{distinct} distinct uuids: {verdict}", flush=True)
        print(_sweep_table(ours["results"], reference["results"]), flush=True)
    except BaseException:
        keep = True
        print(f"  bench_serving: its files are kept in {work}", file=sys.stderr, flush=True)
        raise
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
        for name in store.client.list_database_names():
            if name.startswith(prefix):
                store.client.drop_database(name)

    mine, theirs = ours["results"], reference["results"]
    unit = "ms (reference: FastAPI + numpy, vectors in memory, no logging)"
    top = ": the top held, the figure is a floor" if SWEEP[-1] in (ours["best"], reference["best"]) else ""
    return [
        {"figure": "/invocations p50 at 500 req/s (wrk, paced)", "ours": mine[500]["p50"],
         "reference": theirs[500]["p50"], "unit": unit},
        {"figure": "/invocations p99 at 500 req/s", "ours": mine[500]["p99"], "reference": theirs[500]["p99"],
         "unit": f"ms (errors: ours {mine[500]['errors']}, reference {theirs[500]['errors']})"},
        {"figure": "/invocations p99.9 at 500 req/s", "ours": mine[500]["p999"], "reference": theirs[500]["p999"],
         "unit": "ms"},
        {"figure": "/invocations p99 at 1,000 req/s", "ours": mine[1000]["p99"], "reference": theirs[1000]["p99"],
         "unit": f"ms (achieved: ours {mine[1000]['achieved']:,.0f}/s, reference {theirs[1000]['achieved']:,.0f}/s; "
                 f"errors: ours {mine[1000]['errors']}, reference {theirs[1000]['errors']})"},
        {"figure": f"highest rate with p99 <= {P99_BUDGET_MS:.0f} ms, no errors", "ours": ours["best"],
         "reference": reference["best"], "unit": f"req/s (sweep {SWEEP[0]:,} to {SWEEP[-1]:,}{top})"},
        {"figure": "presented documents logged vs requests acknowledged (200)", "ours": logged["logged"],
         "reference": acknowledged, "unit": f"documents ({verdict})"},
    ]


def run(uri: str, quick: bool) -> list[dict]:
    return scorer_rows(quick) + service_rows(uri, quick)
