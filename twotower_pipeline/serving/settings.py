"""What `twotower serve` is configured with: flags and environment (see the CLI), one object."""

from __future__ import annotations

import dataclasses
from typing import Literal


@dataclasses.dataclass
class ServeSettings:
    api_key: str | None = None
    metric: Literal["cosine", "dot"] = "cosine"
    #: A customer without a stored vector: None (cannot be ranked), "local" (this process's
    #: towers) or the URL of a sidecar (`POST {url}/pytorch/invocations`, one call per request).
    sidecar: str | None = None
    #: Requests with `in_params` get a vector computed with that context (needs a sidecar).
    context_vectors: bool = True
    dagster_url: str | None = None
    campaigns: tuple[str, ...] = ()
    reload_s: float = 5.0
    max_body_bytes: int = 256 * 1024
    log_batch: int = 500
