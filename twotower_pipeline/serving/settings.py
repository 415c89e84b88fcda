"""What `twotower serve` is configured with, one object, and how the CLI's flags, the environment,
the keys file and the campaigns file make it."""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import stat
import tomllib
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
        if isinstance(self.epsilon, bool) or not isinstance(self.epsilon, (int, float)) or \
                not 0.0 <= self.epsilon <= 1.0:
            raise ValueError(f"epsilon {self.epsilon!r} is not a number within 0..1")
        if not isinstance(self.exclude_accepted, bool):
            raise ValueError(f"exclude_accepted {self.exclude_accepted!r} is not true or false")


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


#: Where `twotower serve` keeps the keys it generated (mode 0600), unless given.
SERVE_KEYS_FILE = ".twotower/serve-keys.json"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


class KeysFileError(RuntimeError):
    """The keys file cannot be used (open to others, or not the service's)."""


def serve_keys(path: str | os.PathLike) -> tuple[dict, bool]:
    """({"runtime_key", "workbench_key"}, created) from the keys file at `path`; on first start the
    file is made with both keys, mode 0600 from its creation (never widened, then narrowed).
    A file that group or others may read or write is refused."""
    path = os.fspath(path)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        parent = os.path.dirname(path)
        if parent:
            os.makedirs(parent, mode=0o700, exist_ok=True)
        keys = {"runtime_key": secrets.token_urlsafe(32), "workbench_key": secrets.token_urlsafe(32)}
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another start made it in between: use that one
            return serve_keys(path)
        with os.fdopen(fd, "w") as out:
            json.dump(keys, out)
            out.flush()
            os.fsync(out.fileno())
        return keys, True
    with os.fdopen(fd) as source:
        mode = stat.S_IMODE(os.fstat(source.fileno()).st_mode)
        if mode & 0o077:
            raise KeysFileError(f"the keys file {path} is open to group or others (mode {mode:o}): "
                                f"run `chmod 600 {path}` (or delete it to have new keys generated)")
        try:
            keys = json.load(source)
        except ValueError:
            keys = None
    if not (isinstance(keys, dict) and all(isinstance(keys.get(k), str) and keys[k]
                                           for k in ("runtime_key", "workbench_key"))):
        raise KeysFileError(f"the keys file {path} does not hold a runtime_key and a workbench_key: "
                            "delete it to have new keys generated")
    return {k: keys[k] for k in ("runtime_key", "workbench_key")}, False


def from_flags(args) -> tuple[ServeSettings, str]:
    """ServeSettings from `twotower serve`'s flags (argparse's namespace) and the environment, and
    a line saying where the keys come from (never the keys)."""
    if os.environ.get("TWOTOWER_API_KEY"):
        raise KeysFileError("TWOTOWER_API_KEY is no longer read: the runtime and the workbench have a key each "
                            "(TWOTOWER_RUNTIME_KEY, TWOTOWER_WORKBENCH_KEY, or generated into the keys file)")
    runtime_key = args.runtime_key or os.environ.get("TWOTOWER_RUNTIME_KEY") or None
    workbench_key = args.workbench_key or os.environ.get("TWOTOWER_WORKBENCH_KEY") or None
    if runtime_key and workbench_key:
        origin = "keys from the flags or the environment"
    else:
        path = args.keys_file or os.environ.get("TWOTOWER_KEYS_FILE") or SERVE_KEYS_FILE
        stored, created = serve_keys(path)
        runtime_key, workbench_key = runtime_key or stored["runtime_key"], workbench_key or stored["workbench_key"]
        origin = f"keys {'generated into' if created else 'read from'} {os.path.abspath(path)}"
    if runtime_key == workbench_key:
        raise KeysFileError("the runtime key and the workbench key are the same: a key of one group must not "
                            "open the other")
    extra = args.allowed_host or [h for h in os.environ.get("TWOTOWER_ALLOWED_HOSTS", "").split(",")]
    bind = [] if args.host in ("0.0.0.0", "::", "") else [args.host]
    hosts = tuple(dict.fromkeys(h.strip() for h in (*LOOPBACK_HOSTS, *bind, *extra) if h.strip()))
    defaults = ServeSettings()
    campaigns = {name: CampaignSettings() for name in args.campaign or ()}
    campaigns.update(campaign_policies(_option(args.campaigns_file, "TWOTOWER_CAMPAIGNS_FILE")))
    seed = _option(args.explore_seed, "TWOTOWER_EXPLORE_SEED")
    settings = ServeSettings(
        runtime_key=runtime_key, workbench_key=workbench_key, allowed_hosts=hosts, metric=args.metric,
        sidecar=_option(args.sidecar, "TWOTOWER_SIDECAR"),
        dagster_url=_option(args.dagster_url, "TWOTOWER_DAGSTER_URL"),
        campaigns=campaigns, explore_seed=None if seed is None else int(seed),
        reload_s=float(_option(args.reload_seconds, "TWOTOWER_RELOAD_SECONDS", defaults.reload_s)),
        journal_dir=_option(args.journal_dir, "TWOTOWER_JOURNAL_DIR", defaults.journal_dir),
        journal_cap_bytes=int(_option(args.journal_cap_bytes, "TWOTOWER_JOURNAL_CAP_BYTES",
                                      defaults.journal_cap_bytes)),
        journal_fsync=args.journal_fsync or os.environ.get("TWOTOWER_JOURNAL_FSYNC", "") in ("1", "true", "yes"),
        memory_budget_bytes=int(_option(args.memory_budget_bytes, "TWOTOWER_MEMORY_BUDGET_BYTES",
                                        defaults.memory_budget_bytes)),
        vector_cache_dir=_option(args.vector_cache_dir, "TWOTOWER_VECTOR_CACHE_DIR", defaults.vector_cache_dir))
    return settings, origin


def _option(flag, variable: str, default=None):
    """A flag's value, else the environment variable's (when set and not empty), else `default`."""
    if flag is not None:
        return flag
    return os.environ.get(variable) or default


def campaign_policies(path: str | None) -> dict:
    """{campaign: CampaignSettings} from a TOML file of tables, one per campaign:
    `[ml100k_movies]` / `epsilon = 0.1` / `exclude_accepted = true`. A key that is not a policy
    setting, or a value out of range, is refused naming the file and the campaign."""
    if not path:
        return {}
    with open(path, "rb") as source:
        try:
            tables = tomllib.load(source)
        except tomllib.TOMLDecodeError as error:
            raise ValueError(f"{path} is not valid TOML: {error}") from None
    policies = {}
    for campaign, table in tables.items():
        if not isinstance(table, dict):
            raise ValueError(f"{path}: {campaign} must be a table ([{campaign}]) of policy settings")
        unknown = sorted(set(table) - {"epsilon", "exclude_accepted"})
        if unknown:
            raise ValueError(f"{path}: [{campaign}] has unknown settings {unknown}: epsilon, exclude_accepted")
        try:
            policies[campaign] = CampaignSettings(**table)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{path}: [{campaign}]: {error}") from None
    return policies
