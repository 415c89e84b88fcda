"""`twotower serve`: the runtime endpoints (SPEC §7), the PyTorch sidecar (§8) and the workbench
API (§9) in one FastAPI application, put together here from their routers (`routes/`)."""

from __future__ import annotations

import contextlib
import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pymongo.errors import PyMongoError

from twotower_pipeline.serving.guard import Guard
from twotower_pipeline.serving.routes import runtime as runtime_routes
from twotower_pipeline.serving.routes import sidecar as sidecar_routes
from twotower_pipeline.serving.routes import workbench as workbench_routes
from twotower_pipeline.serving.schemas import ERRORS
from twotower_pipeline.serving.settings import ServeSettings
from twotower_pipeline.serving.state import Runtime
from twotower_pipeline.store.client import MongoStore, redact_text

log = logging.getLogger("twotower.serving")


def create_app(store: MongoStore, settings: ServeSettings | None = None) -> FastAPI:
    settings = settings or ServeSettings()
    runtime = Runtime(store, settings)

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        runtime.start()
        try:
            yield
        finally:
            runtime.stop()

    app = FastAPI(title="twotower_pipeline runtime", version="1", lifespan=lifespan, responses=ERRORS, description=(
        "Ranks offers with the live two-tower embeddings (SPEC §7), serves the towers (§8) and the "
        "workbench API (§9)."))
    app.state.runtime = runtime

    @app.exception_handler(PyMongoError)
    async def _storage_unavailable(_request: Request, error: PyMongoError):
        log.error("MongoDB error: %s", redact_text(str(error), store.uri))
        return JSONResponse({"detail": f"storage unavailable ({type(error).__name__})"}, status_code=503)

    for routes in (runtime_routes, sidecar_routes, workbench_routes):
        app.include_router(routes.router)
    app.add_middleware(Guard, settings=settings)
    return app
