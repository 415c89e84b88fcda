"""The service's ASGI guard: the body size cap and the API key, as plain ASGI (no per-request task
or body copy), in front of every route."""

from __future__ import annotations

import secrets

from fastapi.responses import JSONResponse

from twotower_pipeline.serving.settings import ServeSettings


class Guard:
    OPEN_PATHS = ("/openapi.json", "/docs", "/docs/oauth2-redirect")

    def __init__(self, app, settings: ServeSettings):
        self.app = app
        self.settings = settings

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        if self.settings.runtime_key and scope["path"] not in self.OPEN_PATHS:
            given = headers.get(b"x-api-key", b"").decode("latin-1")
            if not secrets.compare_digest(given, self.settings.runtime_key):
                return await reject(send, 401, "missing or wrong X-API-Key header")
        limit = self.settings.max_body_bytes
        length = headers.get(b"content-length")
        if length is not None:
            if not length.isdigit():
                return await reject(send, 400, "Content-Length is not a number")
            if int(length) > limit:
                return await reject(send, 413, f"request body over {limit} bytes")
            return await self.app(scope, receive, send)
        # no length given (chunked): read the body up to the cap, then hand it on
        chunks, seen = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            seen += len(chunks[-1])
            if seen > limit:
                return await reject(send, 413, f"request body over {limit} bytes")
            if not message.get("more_body"):
                break
        replay = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

        async def replayed():
            return replay.pop() if replay else await receive()

        return await self.app(scope, replayed, send)


async def reject(send, status: int, detail: str, headers: tuple = ()) -> None:
    body = JSONResponse({"detail": detail}).body
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": body})
