"""What `twotower serve` is configured with: flags and environment (see the CLI), one object."""

from __future__ import annotations

import dataclasses
from typing import Literal


@dataclasses.dataclass(frozen=True)
class CampaignSettings:
    """One campaign's serving policy."""

    #: The share of requests whose ranking is replaced by a uniformly drawn order of the eligible
    #: offers (`explore` 1 in the answer); each presented offer is logged with its propensity.
    epsilon: float = 0.0
    #: Leave out offers the customer already accepted.
    exclude_accepted: bool = False

    def __post_init__(self):
        if not 0.0 <= self.epsilon <= 1.0:
            raise ValueError(f"epsilon {self.epsilon} is not within 0..1")


@dataclasses.dataclass
class ServeSettings:
    #: `X-API-Key` of the runtime's and the sidecar's endpoints, and of the workbench's (runs,
    #: scores); None: that group of endpoints answers 401 (closed by default).
    runtime_key: str | None = None
    workbench_key: str | None = None
    #: Host headers the service answers (DNS rebinding: a page of another origin reaching a
    #: loopback service names its own host).
    allowed_hosts: tuple[str, ...] = ("127.0.0.1", "localhost", "::1")
    metric: Literal["cosine", "dot"] = "cosine"
    #: A customer without a vector in memory: None (cannot be ranked), "local" (this process's
    #: towers) or the URL of a sidecar (`POST {url}/pytorch/invocations`, one call per request).
    sidecar: str | None = None
    #: Requests with `in_params` get a vector computed with that context (needs a sidecar).
    context_vectors: bool = True
    dagster_url: str | None = None
    #: Campaigns served besides the live run's predictor (which is served with the defaults
    #: unless named here), each with its policy.
    campaigns: dict[str, CampaignSettings] = dataclasses.field(default_factory=dict)
    #: Seed of the exploration draws (None: from the operating system).
    explore_seed: int | None = None
    reload_s: float = 5.0
    max_body_bytes: int = 256 * 1024
    #: Runs this service may have launched and not yet finished at once (train and batch-score).
    max_concurrent_launches: int = 2
    #: The log journal: presented and response documents are appended here before a request is
    #: answered, then shipped to MongoDB; past `journal_cap_bytes` on disk the runtime answers 503.
    journal_dir: str = ".twotower/serving/journal"
    journal_cap_bytes: int = 1 << 30
    #: fsync each batch of appends before answering (survives a machine crash, not only a kill -9).
    journal_fsync: bool = False
    log_batch: int = 500
    #: Bytes of customer vectors held in memory; a larger run is served from a memory-mapped file
    #: in `vector_cache_dir`.
    memory_budget_bytes: int = 2 << 30
    vector_cache_dir: str = ".twotower/serving/vectors"
