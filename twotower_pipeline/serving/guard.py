"""The service's ASGI guard, in front of every route: the Host allowlist, the key of each group of
endpoints, and the body size cap, as plain ASGI (no per-request task or body copy).

Closed by default: the runtime group (the runtime's and the sidecar's calls) asks for the runtime
key, everything else but the schema pages and the liveness probe for the workbench key (what
reads pipeline state or launches runs, and any route nobody classified); a group without a key
configured answers 401. A Host header outside the allowlist is refused first: a page of another
origin that reaches a loopback service through DNS rebinding names its own host there.
"""

from __future__ import annotations

import secrets

from fastapi.responses import JSONResponse

from twotower_pipeline.serving.settings import ServeSettings

RUNTIME, WORKBENCH = "runtime", "workbench"
#: Open without a key: the schema and its pages, and the probe (it changes nothing).
OPEN_PATHS = frozenset({"/openapi.json", "/docs", "/docs/oauth2-redirect"})
PROBE_PATHS = frozenset({"/health"})
RUNTIME_PATHS = frozenset({"/invocations", "/invocate", "/response", "/pytorch/invocations", "/pytorch/models",
                           "/pytorch/health"})


def key_group(method: str, path: str) -> str | None:
    """Which key a request needs: RUNTIME, WORKBENCH, or None (open)."""
    path = path.rstrip("/") or "/"  # FastAPI redirects `/invocations/`: the same group answers it
    if path in OPEN_PATHS or (path in PROBE_PATHS and method in ("GET", "HEAD")):
        return None
    if path in RUNTIME_PATHS:
        return RUNTIME
    return WORKBENCH  # /api/v1/..., POST /pytorch/train, and whatever route is added unclassified


def request_host(raw: bytes) -> str:
    """The host of a Host header, lower case, without its port, an IPv6 address without brackets."""
    return normal_host(raw.decode("latin-1"))


def normal_host(host: str) -> str:
    host = host.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        return host[1:end] if end > 0 else host
    if host.count(":") == 1:
        host = host.partition(":")[0]
    return host[:-1] if host.endswith(".") else host


class Guard:
    def __init__(self, app, settings: ServeSettings):
        self.app = app
        self.settings = settings
        self.hosts = frozenset(normal_host(host) for host in settings.allowed_hosts)
        self.keys = {RUNTIME: settings.runtime_key.encode() if settings.runtime_key else None,
                     WORKBENCH: settings.workbench_key.encode() if settings.workbench_key else None}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        hosts = [value for name, value in scope["headers"] if name == b"host"]
        if len(hosts) != 1:
            return await reject(send, 400, "a request needs exactly one Host header")
        host = request_host(hosts[0])
        if host not in self.hosts:
            shown = host if len(host) <= 100 else host[:100] + "..."
            return await reject(send, 421, f"host {shown!r} is not served here: allow it with `twotower serve "
                                           f"--allowed-host {shown}` (or TWOTOWER_ALLOWED_HOSTS)")
        headers = dict(scope["headers"])
        group = key_group(scope["method"], scope["path"])
        if group is not None:
            expected = self.keys[group]
            if expected is None:
                return await reject(send, 401, f"the {group} endpoints are closed: this service was started without "
                                               f"a {group} key", _challenge(group))
            # bytes, in constant time: a header that is not ASCII is a wrong key, never an error
            if not secrets.compare_digest(headers.get(b"x-api-key", b""), expected):
                return await reject(send, 401, f"this endpoint needs the {group} key in the X-API-Key header",
                                    _challenge(group))
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


def _challenge(group: str) -> tuple:
    return ((b"www-authenticate", f'X-API-Key realm="{group}"'.encode()),)


async def reject(send, status: int, detail: str, headers: tuple = ()) -> None:
    body = JSONResponse({"detail": detail}).body
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": body})
