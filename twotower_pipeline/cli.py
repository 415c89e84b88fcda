"""`twotower`: the embedded server, data loaders and the demo, for use outside the Dagster UI."""

from __future__ import annotations

import argparse
import os
import sys

from pymongo.errors import PyMongoError

from twotower_pipeline.store.client import MongoStore, redact_text, resolve_uri
from twotower_pipeline.store.embedded import EmbeddedMongo


def _store() -> MongoStore:
    return MongoStore(resolve_uri(os.environ.get("MONGODB_URI")), os.environ.get("TWOTOWER_DATABASE_PREFIX", ""))


def cmd_server(args) -> int:
    server = EmbeddedMongo(args.data_dir)
    if args.action == "start":
        print(f"embedded MongoDB running at {server.uri()} (data in {server.data_dir})")
    elif args.action == "stop":
        print("stopped" if server.stop() else "no embedded server was running")
    else:
        uri = server.running_uri()
        print(f"running at {uri} (data in {server.data_dir})" if uri else f"not running (data dir {server.data_dir})")
    return 0


def cmd_load(args) -> int:
    from twotower_pipeline.ingest import datasets
    from twotower_pipeline.ingest.runtime_logs import write_runtime_logs

    if args.source == "movielens":
        from twotower_pipeline.ingest.movielens import load_movielens

        logs = load_movielens(args.path or _dataset(datasets.MOVIELENS))
    elif args.source == "coupons":
        from twotower_pipeline.ingest.coupon import load_coupons

        folder = args.path or _dataset(datasets.COUPONS)
        logs = load_coupons(
            os.path.join(folder, "in-vehicle-coupon-recommendation.csv") if os.path.isdir(folder) else folder
        )
    elif args.source == "simulate":
        from twotower_pipeline.ingest.simulator import simulate_traffic

        logs = simulate_traffic(n_requests=args.requests, seed=args.seed).logs
    else:
        from twotower_pipeline.ingest.importer import load_exposures_file

        if not args.path or not args.predictor:
            raise SystemExit("`twotower load file` needs --path FILE and --predictor NAME")
        logs = load_exposures_file(args.path, predictor=args.predictor)
    outcome = write_runtime_logs(_store(), logs, replace=args.replace)
    print(
        f"{logs.predictor}: {outcome['presented']} presented, {outcome['responses']} responses, "
        f"{outcome['exposures']} exposures ({'written' if outcome['written'] else 'already loaded'})"
    )
    return 0


def _dataset(name: str) -> str:
    from twotower_pipeline.ingest import datasets

    path = datasets.find_dataset(name)
    if path is None:
        raise SystemExit(f"{name} not found under {datasets.data_root()}: pass --path or set TWOTOWER_DATA_DIR")
    return str(path)


def cmd_export_embeddings(args) -> int:
    from twotower_pipeline import publishing
    from twotower_pipeline.runs import TrainedRun  # noqa: F401 - registers the artefact kind
    from twotower_pipeline.store import artefacts

    store = _store()
    run = artefacts.load_artefact(store, "two_tower_model", run_id=args.run_id)
    outcome = publishing.export_run(store, run)
    if outcome["recovered"]:
        print(outcome["recovered"])
    print(f"run {run.run_id}: {outcome['users']} user and {outcome['items']} item embeddings published to "
          f"{publishing.USER_EMBEDDINGS} and {publishing.ITEM_EMBEDDINGS} (previous: {outcome['previous_run_id']})")
    return 0


def cmd_rollback_embeddings(args) -> int:
    from twotower_pipeline import publishing

    outcome = publishing.rollback_run(_store())
    if outcome["recovered"]:
        print(outcome["recovered"])
    print(f"rolled back: the runtime serves run {outcome['run_id']} again ({outcome['users']} users, "
          f"{outcome['items']} offers, verified); run {outcome['previous_run_id']} is the previous one")
    return 0


def cmd_embeddings_status(args) -> int:
    from twotower_pipeline import publishing
    from twotower_pipeline.store.embeddings import Publisher

    publisher = Publisher(_store(), publishing.DATABASE)
    if args.recover:
        print(publisher.recover() or "nothing to recover")
    journal = publisher.status()
    print(f"state {journal.get('state')}: live run {journal.get('live_run_id')}, previous run "
          f"{journal.get('previous_run_id')}, published at {journal.get('published_at')}")
    if journal.get("state") == "publishing":
        print(f"a publish of {journal.get('target_run_id')} was interrupted: run with --recover to finish or undo it")
        return 1
    if journal.get("live_run_id"):
        problems = publisher.verify().problems()
        print("live pair verified" if not problems else "live pair FAILS verification: " + "; ".join(problems))
        return 1 if problems else 0
    return 0


def cmd_concept_test(args) -> int:
    import json

    from twotower_pipeline import offline

    answer = offline.concept_test(_store(), args.run_id, args.customer_id, args.offers or None)
    print(json.dumps(answer, indent=2))
    return 0 if answer["success"] else 1


def cmd_serve(args) -> int:
    import logging

    import uvicorn

    from twotower_pipeline.serving.app import create_app
    from twotower_pipeline.serving.settings import from_flags

    settings, origin = from_flags(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    store = _store()
    print(f"twotower serve: http://{args.host}:{args.port} (MongoDB {store.describe()}; OpenAPI at /docs); "
          f"X-API-Key: {origin}; Host headers answered: {', '.join(settings.allowed_hosts)}", flush=True)
    uvicorn.run(create_app(store, settings), host=args.host, port=args.port, log_level="warning",
                access_log=False, timeout_graceful_shutdown=30)
    return 0


def cmd_demo(args) -> int:
    from twotower_pipeline.demo import run_demo

    return run_demo()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="twotower", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    server = commands.add_parser("server", help="start, stop or check the embedded MongoDB server")
    server.add_argument("action", choices=["start", "stop", "status"])
    server.add_argument("--data-dir", default=None, help="default: TWOTOWER_EMBEDDED_DIR or .twotower/mongodb")
    server.set_defaults(handler=cmd_server)

    load = commands.add_parser("load", help="write runtime logs from a data source")
    load.add_argument("source", choices=["movielens", "coupons", "simulate", "file"])
    load.add_argument("--path", help="data folder or file (default: the public data under TWOTOWER_DATA_DIR)")
    load.add_argument("--predictor", help="predictor name for `file`")
    load.add_argument("--requests", type=int, default=20_000, help="requests to simulate")
    load.add_argument("--seed", type=int, default=42)
    load.add_argument("--replace", action="store_true", help="rewrite even if already loaded")
    load.set_defaults(handler=cmd_load)

    export = commands.add_parser("export-embeddings", help="publish a stored run's user and item embeddings")
    export.add_argument("--run-id", required=True, help="the run to publish (see ecosystem_meta.two_tower_runs)")
    export.set_defaults(handler=cmd_export_embeddings)

    rollback = commands.add_parser("rollback-embeddings",
                                   help="put the previously published run back live, both towers together")
    rollback.set_defaults(handler=cmd_rollback_embeddings)

    status = commands.add_parser("embeddings-status", help="which run the runtime serves, verified")
    status.add_argument("--recover", action="store_true", help="finish or undo an interrupted publish first")
    status.set_defaults(handler=cmd_embeddings_status)

    concept = commands.add_parser("concept-test", help="rank offers for one customer with one run (SPEC §6)")
    concept.add_argument("--run-id", required=True)
    concept.add_argument("--customer-id", required=True)
    concept.add_argument("--offers", nargs="*", help="offer names (default: the run's whole catalogue)")
    concept.set_defaults(handler=cmd_concept_test)

    serve = commands.add_parser("serve", help="the runtime (/invocations, /response), the PyTorch sidecar "
                                "(/pytorch/*) and the workbench API (/api/v1/...)")
    serve.add_argument("--host", default="127.0.0.1", help="bind address")
    serve.add_argument("--port", type=int, default=8010)
    serve.add_argument("--runtime-key", help="X-API-Key of /invocations, /response and the sidecar's endpoints "
                       "(default: TWOTOWER_RUNTIME_KEY, else the keys file)")
    serve.add_argument("--workbench-key", help="X-API-Key of /api/v1/... and POST /pytorch/train (default: "
                       "TWOTOWER_WORKBENCH_KEY, else the keys file)")
    serve.add_argument("--keys-file", help="keys not given are read from here, generated on first start (mode 0600; "
                       "default: TWOTOWER_KEYS_FILE or .twotower/serve-keys.json)")
    serve.add_argument("--allowed-host", action="append", help="a Host header answered besides the loopback names "
                       "and the bind address (repeatable; default: TWOTOWER_ALLOWED_HOSTS, comma-separated)")
    serve.add_argument("--metric", choices=["cosine", "dot"], default="cosine")
    serve.add_argument("--sidecar", help="a customer without a stored vector: 'local' (this process's towers) or a "
                       "sidecar URL (default: TWOTOWER_SIDECAR; unset: such a customer cannot be ranked)")
    serve.add_argument("--dagster-url", help="the Dagster webserver that train and batch-score launch runs on "
                       "(default: TWOTOWER_DAGSTER_URL, e.g. http://127.0.0.1:3000)")
    serve.add_argument("--campaign", action="append", help="a campaign served besides the live run's predictor")
    serve.add_argument("--campaigns-file", help="a TOML file of per-campaign policies: [name] epsilon = 0.1, "
                       "exclude_accepted = true (default: TWOTOWER_CAMPAIGNS_FILE)")
    serve.add_argument("--explore-seed", type=int, help="seed of the exploration draws (default: "
                       "TWOTOWER_EXPLORE_SEED; unset: from the operating system)")
    serve.add_argument("--reload-seconds", type=float, help="how often the live run is checked (default: "
                       "TWOTOWER_RELOAD_SECONDS or 5)")
    serve.add_argument("--journal-dir", help="the log journal: appended before each answer, shipped to MongoDB "
                       "(default: TWOTOWER_JOURNAL_DIR or .twotower/serving/journal)")
    serve.add_argument("--journal-cap-bytes", type=int, help="past this much unshipped on disk, requests are "
                       "answered 503 (default: TWOTOWER_JOURNAL_CAP_BYTES or 1 GiB)")
    serve.add_argument("--journal-fsync", action="store_true", help="fsync each group of appends before answering "
                       "(survives a machine crash; default: TWOTOWER_JOURNAL_FSYNC)")
    serve.add_argument("--memory-budget-bytes", type=int, help="customer vectors past this are memory-mapped from "
                       "--vector-cache-dir (default: TWOTOWER_MEMORY_BUDGET_BYTES or 2 GiB)")
    serve.add_argument("--vector-cache-dir", help="where memory-mapped vectors are written (default: "
                       "TWOTOWER_VECTOR_CACHE_DIR or .twotower/serving/vectors)")
    serve.set_defaults(handler=cmd_serve)

    demo = commands.add_parser("demo", help="load sample logs and materialise every asset")
    demo.set_defaults(handler=cmd_demo)

    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except (ValueError, LookupError, OSError, RuntimeError, PyMongoError) as error:
        print(f"twotower {args.command}: {redact_text(str(error), os.environ.get('MONGODB_URI'))}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
