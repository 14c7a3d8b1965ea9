"""Settings for every service, read from the environment once at start."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from imagepipe.core.catalog import (
    DEFAULT_CACHE_DIR,
    ENGINE_AUTO,
    ENGINES,
    ModelError,
    check_model_name,
    model_cache_dir,
)

MIB = 1024 * 1024

# The two lanes of S3 events: the front's uploads, served first, and everything else.
INTERACTIVE = "interactive"
BULK = "bulk"

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class SettingsError(ValueError):
    """An environment variable holds a value the services cannot run with."""


@dataclass(frozen=True)
class EnvVar:
    """Where a setting comes from and what it is when unset (docs/configuration.md lists these)."""

    name: str
    default: str
    help: str


def _env(name: str, default: object, help: str) -> dict[str, object]:
    return {"env": EnvVar(name, "" if default is None else str(default), help)}


@dataclass(frozen=True)
class Settings:
    """Everything the three services and the CLI need to know about their surroundings."""

    endpoint_url: str | None = field(
        default=None,
        metadata=_env("AWS_ENDPOINT_URL", None, "Local AWS endpoint (moto); unset for real AWS"),
    )
    region: str = field(
        default="us-east-1", metadata=_env("AWS_DEFAULT_REGION", "us-east-1", "AWS region")
    )
    bucket: str = field(
        default="imagepipe-images",
        metadata=_env("IMAGEPIPE_BUCKET", "imagepipe-images", "Bucket the images go to"),
    )
    queue: str = field(
        default="imagepipe-events",
        metadata=_env(
            "IMAGEPIPE_QUEUE", "imagepipe-events", "SQS queue (name or URL) of S3 events"
        ),
    )
    dead_letter_queue: str = field(
        default="imagepipe-events-dlq",
        metadata=_env(
            "IMAGEPIPE_DEAD_LETTER_QUEUE", "imagepipe-events-dlq", "Dead-letter queue (name or URL)"
        ),
    )
    interactive_queue: str = field(
        default="imagepipe-interactive",
        metadata=_env(
            "IMAGEPIPE_INTERACTIVE_QUEUE", "imagepipe-interactive",
            "SQS queue (name or URL) of the front's uploads, served before IMAGEPIPE_QUEUE "
            "(off: one lane, everything on IMAGEPIPE_QUEUE)",
        ),
    )
    interactive_dead_letter_queue: str = field(
        default="imagepipe-interactive-dlq",
        metadata=_env(
            "IMAGEPIPE_INTERACTIVE_DEAD_LETTER_QUEUE", "imagepipe-interactive-dlq",
            "The interactive queue's dead-letter queue (name or URL)",
        ),
    )
    table: str = field(
        default="imagepipe-results",
        metadata=_env("IMAGEPIPE_TABLE", "imagepipe-results", "DynamoDB table of results"),
    )
    max_upload_bytes: int = field(
        default=20 * MIB,
        metadata=_env("IMAGEPIPE_MAX_UPLOAD_BYTES", 20 * MIB, "Largest image accepted, in bytes"),
    )
    max_pixels: int = field(
        default=64_000_000,
        metadata=_env(
            "IMAGEPIPE_MAX_PIXELS", 64_000_000, "Largest image accepted, in width x height"
        ),
    )
    presign_expires_seconds: int = field(
        default=300,
        metadata=_env(
            "IMAGEPIPE_PRESIGN_EXPIRES", 300, "Lifetime of a presigned upload, in seconds"
        ),
    )
    host: str = field(
        default="127.0.0.1",
        metadata=_env("IMAGEPIPE_HOST", "127.0.0.1", "Address the web front listens on"),
    )
    port: int = field(
        default=8000, metadata=_env("IMAGEPIPE_PORT", 8000, "Port the web front listens on")
    )
    web_origins: str = field(
        default="",
        metadata=_env(
            "IMAGEPIPE_WEB_ORIGINS",
            None,
            "Origins of the web page, comma-separated: the bucket's CORS rule allows exactly "
            "these",
        ),
    )
    import_allow_hosts: str = field(
        default="",
        metadata=_env(
            "IMAGEPIPE_IMPORT_ALLOW_HOSTS",
            None,
            "Addresses URL imports may reach although private or loopback: comma-separated "
            "IP, IP:port, [IPv6]:port or CIDR entries",
        ),
    )
    import_timeout_seconds: float = field(
        default=15.0,
        metadata=_env(
            "IMAGEPIPE_IMPORT_TIMEOUT", 15, "Longest a URL import may take, redirects included"
        ),
    )
    sync_wait_seconds: float = field(
        default=10.0,
        metadata=_env(
            "IMAGEPIPE_SYNC_WAIT_SECONDS",
            10,
            "How long POST /api/image_recognition waits for a result before answering 202",
        ),
    )
    receive_batch: int = field(
        default=10,
        metadata=_env("IMAGEPIPE_RECEIVE_BATCH", 10, "SQS messages per receive (1-10)"),
    )
    poll_seconds: int = field(
        default=20,
        metadata=_env("IMAGEPIPE_POLL_SECONDS", 20, "SQS long-poll wait (0-20 seconds)"),
    )
    visibility_timeout: int = field(
        default=300,
        metadata=_env(
            "IMAGEPIPE_VISIBILITY_TIMEOUT",
            300,
            "Seconds a received message stays hidden from other processors",
        ),
    )
    max_receives: int = field(
        default=5,
        metadata=_env(
            "IMAGEPIPE_MAX_RECEIVES", 5, "Receives before a message goes to the dead-letter queue"
        ),
    )
    model: str = field(
        default="efficientnet_lite0",
        metadata=_env(
            "IMAGEPIPE_MODEL",
            "efficientnet_lite0",
            "Model the processor serves: efficientnet_lite0/1/2, keras:<Application>, or a "
            ".keras file",
        ),
    )
    model_weights: Path | None = field(
        default=None,
        metadata=_env(
            "IMAGEPIPE_MODEL_WEIGHTS", None, "Weights file of a keras:<Application> model"
        ),
    )
    model_labels: Path | None = field(
        default=None,
        metadata=_env(
            "IMAGEPIPE_MODEL_LABELS", None, "Labels file of a custom .keras model (one per line)"
        ),
    )
    top_k: int = field(
        default=5, metadata=_env("IMAGEPIPE_TOP_K", 5, "Labels kept per image")
    )
    min_score: float = field(
        default=0.0,
        metadata=_env("IMAGEPIPE_MIN_SCORE", 0, "Labels scoring below this are not kept (0-1)"),
    )
    category_top_k: int = field(
        default=8,
        metadata=_env("IMAGEPIPE_CATEGORY_TOP_K", 8, "Categories (labels' parents) kept per image"),
    )
    category_min_score: float = field(
        default=0.2,
        metadata=_env("IMAGEPIPE_CATEGORY_MIN_SCORE", 0.2,
                      "Categories scoring below this are not kept (0-1)"),
    )
    unsure_below: float = field(
        default=0.3,
        metadata=_env("IMAGEPIPE_UNSURE_BELOW", 0.3,
                      "The page says \"not sure\" when the best label scores below this (0-1)"),
    )
    reuse_results: bool = field(
        default=True,
        metadata=_env(
            "IMAGEPIPE_REUSE_RESULTS", "true",
            "Reuse the result of identical bytes already labelled by the same model (false: "
            "run the model on every image)",
        ),
    )
    partial_decode: bool = field(
        # On: the decode is pixel-identical to the whole file's (docs/throughput.md).
        default=True,
        metadata=_env(
            "IMAGEPIPE_PARTIAL_DECODE", "true",
            "Decode a progressive JPEG large enough for libjpeg's 1/8 scale from its DC scans "
            "alone, read by ranged GETs up to the last of them (false: the whole file)",
        ),
    )
    partial_decode_dc: bool = field(
        # Off: top-1 agreement with today's decode is under the 99% bar (docs/throughput.md).
        default=False,
        metadata=_env(
            "IMAGEPIPE_PARTIAL_DECODE_DC", "false",
            "With IMAGEPIPE_PARTIAL_DECODE, decode from the DC scans of every component, 4:2:0 "
            "chroma too: close to the whole file's decode, not identical (false: exact)",
        ),
    )
    vips_decode: bool = field(
        # Off: top-1 agreement with today's decode is under the 99% bar (docs/throughput.md).
        default=False,
        metadata=_env(
            "IMAGEPIPE_VIPS_DECODE", "false",
            "Shrink WebP and PNG while decoding, by libvips where pyvips is installed "
            "(false: Pillow decodes every pixel)",
        ),
    )
    engine: str = field(
        default=ENGINE_AUTO,
        metadata=_env(
            "IMAGEPIPE_ENGINE", ENGINE_AUTO,
            "Inference engine: auto (LiteRT on CPU), litert or keras",
        ),
    )
    inference_threads: int = field(
        default=0,
        metadata=_env("IMAGEPIPE_INFERENCE_THREADS", 0, "LiteRT threads (0: one per core)"),
    )
    cache_dir: Path = field(
        default=DEFAULT_CACHE_DIR.expanduser(),
        metadata=_env(
            "IMAGEPIPE_CACHE_DIR", DEFAULT_CACHE_DIR, "Where converted model weights are kept"
        ),
    )
    local_data: str = field(
        default="~/.local/share/imagepipe/local",
        metadata=_env("IMAGEPIPE_LOCAL_DATA", "~/.local/share/imagepipe/local",
                      "Where make run keeps the local stack's data across runs (off: nowhere)"),
    )
    lifecycle_group: str | None = field(
        default=None,
        metadata=_env(
            "IMAGEPIPE_LIFECYCLE_GROUP", None,
            "Auto Scaling group the processor's instance belongs to: turns on its lifecycle "
            "hooks and the drain on scale-in or Spot interruption (the stack sets it)",
        ),
    )
    launch_hook: str | None = field(
        default=None,
        metadata=_env("IMAGEPIPE_LAUNCH_HOOK", None,
                      "The group's launching hook, completed once the model is loaded and warmed"),
    )
    terminate_hook: str | None = field(
        default=None,
        metadata=_env("IMAGEPIPE_TERMINATE_HOOK", None,
                      "The group's terminating hook, completed once the processor has drained"),
    )
    ready_file: Path | None = field(
        default=None,
        metadata=_env(
            "IMAGEPIPE_READY_FILE", None,
            "Marker created once the model is loaded and warmed, removed on exit (with a "
            "lifecycle group only; /run/imagepipe/ready when unset)",
        ),
    )
    rate_limit_per_minute: int = field(
        default=60,
        metadata=_env(
            "IMAGEPIPE_RATE_LIMIT_PER_MINUTE",
            60,
            "Uploads and imports per minute per user, or per client address with sign-in "
            "off (0: no limit)",
        ),
    )
    rate_limit_burst: int = field(
        default=20,
        metadata=_env(
            "IMAGEPIPE_RATE_LIMIT_BURST", 20, "Requests a client may make at once, before the rate"
        ),
    )
    trusted_proxies: int = field(
        default=0,
        metadata=_env(
            "IMAGEPIPE_TRUSTED_PROXIES",
            0,
            "Proxies in front of the web front whose X-Forwarded-For is trusted (1 behind an ALB)",
        ),
    )
    auth: bool = field(
        default=True,
        metadata=_env(
            "IMAGEPIPE_AUTH", "on",
            "Sign-in required for everything but the page, /healthz, /readyz, "
            "/api/openapi.json and /api/config (off: "
            "anyone may do anything, for a closed network only; the stack never sets it)",
        ),
    )
    user_pool_id: str | None = field(
        default=None,
        metadata=_env("IMAGEPIPE_USER_POOL_ID", None,
                      "Cognito user pool whose tokens the front accepts (make run creates one)"),
    )
    user_pool_client_id: str | None = field(
        default=None,
        metadata=_env("IMAGEPIPE_USER_POOL_CLIENT_ID", None,
                      "The pool's public app client the page and the CLI sign in with"),
    )
    user_pool_name: str = field(
        default="imagepipe-users",
        metadata=_env("IMAGEPIPE_USER_POOL", "imagepipe-users",
                      "Name of the user pool `imagepipe provision` creates or finds"),
    )
    result_expiry_days: int = field(
        default=0,
        metadata=_env("IMAGEPIPE_RESULT_EXPIRY_DAYS", 0,
                      "Results are removed this many days after they are written (0: kept); "
                      "the stack's ImageExpiryDays removes the images"),
    )
    daily_quota: int = field(
        default=1000,
        metadata=_env("IMAGEPIPE_DAILY_QUOTA", 1000,
                      "Images a user may add per UTC day (admins are exempt)"),
    )
    metrics_host: str = field(
        default="127.0.0.1",
        metadata=_env("IMAGEPIPE_METRICS_HOST", "127.0.0.1",
                      "Address the Prometheus metrics ports listen on; never the load "
                      "balancer's"),
    )
    metrics_front_port: int = field(
        default=0,
        metadata=_env("IMAGEPIPE_METRICS_FRONT_PORT", 0,
                      "Port of the front's /metrics (0: not served; `make run`: 9100)"),
    )
    metrics_processor_port: int = field(
        default=0,
        metadata=_env("IMAGEPIPE_METRICS_PROCESSOR_PORT", 0,
                      "Port of the processor's /metrics and /readyz (0: not served; "
                      "`make run`: 9101)"),
    )
    metrics_emf_file: Path | None = field(
        default=None,
        metadata=_env("IMAGEPIPE_METRICS_EMF_FILE", None,
                      "File the processor (one line per batch) and the front (one per route "
                      "and status a minute) append CloudWatch embedded-metric-format lines to; "
                      "the AWS stack ships it"),
    )
    metrics_namespace: str = field(
        default="imagepipe",
        metadata=_env("IMAGEPIPE_METRICS_NAMESPACE", "imagepipe",
                      "CloudWatch namespace of those metrics (the stack: imagepipe/<stack>)"),
    )
    results_topic: str = field(
        default="imagepipe-result-events",
        metadata=_env("IMAGEPIPE_RESULTS_TOPIC", "imagepipe-result-events",
                      "SNS topic (name or ARN) the processor publishes one event per result to "
                      "(empty: none)"),
    )
    webhook_queue: str = field(
        default="imagepipe-webhooks",
        metadata=_env("IMAGEPIPE_WEBHOOK_QUEUE", "imagepipe-webhooks",
                      "SQS queue (name or URL), subscribed to the topic, that the webhook "
                      "deliverer reads (empty: no webhooks)"),
    )
    callback_allow_hosts: str = field(
        default="",
        metadata=_env(
            "IMAGEPIPE_CALLBACK_ALLOW_HOSTS", None,
            "Addresses webhook callbacks may reach although private or loopback, as "
            "IMAGEPIPE_IMPORT_ALLOW_HOSTS (for a developer's own machine)"),
    )
    webhook_backoff_seconds: int = field(
        default=30,
        metadata=_env("IMAGEPIPE_WEBHOOK_BACKOFF", 30,
                      "Wait before the second webhook attempt; it doubles per attempt, up to "
                      "12 hours"),
    )
    webhook_give_up_seconds: int = field(
        default=86400,
        metadata=_env("IMAGEPIPE_WEBHOOK_GIVE_UP", 86400,
                      "Webhook deliveries are retried for this long after the first attempt"),
    )
    webhook_timeout_seconds: float = field(
        default=10.0,
        metadata=_env("IMAGEPIPE_WEBHOOK_TIMEOUT", 10, "Longest one webhook delivery may take"),
    )
    events_port: int = field(
        default=8001,
        metadata=_env("IMAGEPIPE_EVENTS_PORT", 8001,
                      "Port the events server (GET /api/events, server-sent events) listens on"),
    )
    events_url: str = field(
        default="/api/events",
        metadata=_env("IMAGEPIPE_EVENTS_URL", "/api/events",
                      "Where the page opens its event stream (make run: the events server's "
                      "own address)"),
    )
    events_heartbeat_seconds: float = field(
        default=15.0,
        metadata=_env("IMAGEPIPE_EVENTS_HEARTBEAT", 15,
                      "Seconds between the comments that keep an idle event stream open"),
    )
    log_level: str = field(
        default="INFO", metadata=_env("IMAGEPIPE_LOG_LEVEL", "INFO", "Logging level")
    )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Read every setting from `environ`; explicit keyword arguments win over it."""
        environ = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for f in dataclasses.fields(cls):
            if f.name in overrides:
                continue
            env: EnvVar = f.metadata["env"]
            raw = environ.get(env.name)
            if f.name == "region" and not raw:
                raw = environ.get("AWS_REGION")
            if raw is None or raw == "":
                continue
            values[f.name] = _parse(f.name, env.name, f.type, raw)
        values.update(overrides)
        settings = cls(**values)  # type: ignore[arg-type]
        settings.check()
        return settings

    def check(self) -> None:
        """Refuse values the services cannot work with, naming the variable."""
        problems = []
        if not 1 <= self.receive_batch <= 10:
            problems.append("IMAGEPIPE_RECEIVE_BATCH must be between 1 and 10")
        if not 0 <= self.poll_seconds <= 20:
            problems.append("IMAGEPIPE_POLL_SECONDS must be between 0 and 20")
        if self.max_upload_bytes < 1 or self.max_upload_bytes > 5 * 1024 * MIB:
            problems.append("IMAGEPIPE_MAX_UPLOAD_BYTES must be between 1 and 5 GiB")
        if self.max_pixels < 1:
            problems.append("IMAGEPIPE_MAX_PIXELS must be positive")
        if not 1 <= self.presign_expires_seconds <= 3600:
            problems.append("IMAGEPIPE_PRESIGN_EXPIRES must be between 1 and 3600 seconds")
        if not 1 <= self.top_k <= 1000:
            problems.append("IMAGEPIPE_TOP_K must be between 1 and 1000")
        if not 0 <= self.min_score <= 1:
            problems.append("IMAGEPIPE_MIN_SCORE must be between 0 and 1")
        if not 0 <= self.category_top_k <= 1000:
            problems.append("IMAGEPIPE_CATEGORY_TOP_K must be between 0 and 1000")
        if not 0 <= self.category_min_score <= 1:
            problems.append("IMAGEPIPE_CATEGORY_MIN_SCORE must be between 0 and 1")
        if not 0 <= self.unsure_below <= 1:
            problems.append("IMAGEPIPE_UNSURE_BELOW must be between 0 and 1")
        if self.engine not in ENGINES:
            problems.append(f"IMAGEPIPE_ENGINE must be one of {', '.join(ENGINES)}")
        if self.inference_threads < 0:
            problems.append("IMAGEPIPE_INFERENCE_THREADS must not be negative")
        try:
            check_model_name(self.model)
        except ModelError as exc:
            problems.append(f"IMAGEPIPE_MODEL: {exc}")
        if not 1 <= self.port <= 65535:
            problems.append("IMAGEPIPE_PORT must be a TCP port")
        for name, port in (("IMAGEPIPE_METRICS_FRONT_PORT", self.metrics_front_port),
                           ("IMAGEPIPE_METRICS_PROCESSOR_PORT", self.metrics_processor_port)):
            if not 0 <= port <= 65535:
                problems.append(f"{name} must be a TCP port, or 0 for none")
        if not 1 <= self.events_port <= 65535:
            problems.append("IMAGEPIPE_EVENTS_PORT must be a TCP port")
        if not 0 < self.events_heartbeat_seconds <= 55:
            problems.append("IMAGEPIPE_EVENTS_HEARTBEAT must be above 0 and at most 55 seconds "
                            "(the load balancer drops a connection idle for 60)")
        if self.rate_limit_per_minute < 0 or self.rate_limit_burst < 1:
            problems.append("IMAGEPIPE_RATE_LIMIT_PER_MINUTE must be >= 0 and "
                            "IMAGEPIPE_RATE_LIMIT_BURST >= 1")
        if self.result_expiry_days < 0:
            problems.append("IMAGEPIPE_RESULT_EXPIRY_DAYS must not be negative")
        if self.interactive_queue == self.queue:
            problems.append("IMAGEPIPE_INTERACTIVE_QUEUE must differ from IMAGEPIPE_QUEUE "
                            "(off: one lane)")
        if self.daily_quota < 1:
            problems.append("IMAGEPIPE_DAILY_QUOTA must be at least 1")
        if self.trusted_proxies < 0:
            problems.append("IMAGEPIPE_TRUSTED_PROXIES must not be negative")
        if self.sync_wait_seconds < 0:
            problems.append("IMAGEPIPE_SYNC_WAIT_SECONDS must not be negative")
        if self.webhook_backoff_seconds < 0 or self.webhook_give_up_seconds < 0:
            problems.append("IMAGEPIPE_WEBHOOK_BACKOFF and IMAGEPIPE_WEBHOOK_GIVE_UP must not "
                            "be negative")
        if not 0 < self.webhook_timeout_seconds <= 60:
            problems.append("IMAGEPIPE_WEBHOOK_TIMEOUT must be above 0 and at most 60 seconds")
        if not 0 < self.import_timeout_seconds <= 300:
            problems.append("IMAGEPIPE_IMPORT_TIMEOUT must be above 0 and at most 300 seconds")
        try:
            self.web_origin_list()
        except ValueError as exc:
            problems.append(f"IMAGEPIPE_WEB_ORIGINS: {exc}")
        try:
            self.import_allow_list()
        except ValueError as exc:
            problems.append(f"IMAGEPIPE_IMPORT_ALLOW_HOSTS: {exc}")
        try:
            self.callback_allow_list()
        except ValueError as exc:
            problems.append(f"IMAGEPIPE_CALLBACK_ALLOW_HOSTS: {exc}")
        if problems:
            raise SettingsError("; ".join(problems))

    def web_origin_list(self) -> tuple[str, ...]:
        """The page's origins; by default the front's own address and localhost on its port."""
        if not self.web_origins.strip():
            # Listening on loopback or on every interface: the browser is on this machine.
            host = "127.0.0.1" if _is_local_host(self.host) else self.host
            host = f"[{host}]" if ":" in host else host
            return tuple(dict.fromkeys(
                (f"http://{host}:{self.port}", f"http://localhost:{self.port}")
            ))
        return tuple(_origin(item) for item in self.web_origins.split(",") if item.strip())

    def import_allow_list(self) -> tuple[AllowedAddress, ...]:
        """The addresses URL imports may reach although the guard would refuse them."""
        return tuple(
            _allowed_address(item.strip())
            for item in self.import_allow_hosts.split(",")
            if item.strip()
        )

    def callback_allow_list(self) -> tuple[AllowedAddress, ...]:
        """The addresses webhook callbacks may reach although the guard would refuse them."""
        return tuple(
            _allowed_address(item.strip())
            for item in self.callback_allow_hosts.split(",")
            if item.strip()
        )

    @property
    def lanes(self) -> dict[str, tuple[str, str]]:
        """Each lane's queue and dead-letter queue, the interactive lane first (it is served
        first); only the bulk lane when the interactive one is off."""
        bulk = {BULK: (self.queue, self.dead_letter_queue)}
        if self.interactive_queue.strip().lower() in ("", "off"):
            return bulk
        return {INTERACTIVE: (self.interactive_queue, self.interactive_dead_letter_queue)} | bulk

    @property
    def issuer(self) -> str | None:
        """The `iss` of the user pool's tokens (Cognito's form, also on the local endpoint)."""
        if not self.user_pool_id:
            return None
        return f"https://cognito-idp.{self.region}.amazonaws.com/{self.user_pool_id}"

    @property
    def jwks_url(self) -> str | None:
        """Where the user pool publishes its signing keys."""
        if not self.user_pool_id:
            return None
        if self.endpoint_url:
            return f"{self.endpoint_url.rstrip('/')}/{self.user_pool_id}/.well-known/jwks.json"
        return f"{self.issuer}/.well-known/jwks.json"

    @property
    def local_data_dir(self) -> Path | None:
        """Where `make run` keeps its data, or None when IMAGEPIPE_LOCAL_DATA is off."""
        if self.local_data.strip().lower() in ("", "off"):
            return None
        return Path(self.local_data).expanduser()

    @property
    def model_cache_dir(self) -> Path:
        """Where the processor keeps converted weights and LiteRT exports."""
        return model_cache_dir(self.cache_dir)

    def environ(self) -> dict[str, str]:
        """These settings as environment variables, to hand to a child process."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool):
                out[f.metadata["env"].name] = "true" if value else "false"
            elif value is not None:
                out[f.metadata["env"].name] = str(value)
        return out


@dataclass(frozen=True)
class AllowedAddress:
    """A network URL imports may reach, on one port or on any (port None)."""

    network: IpNetwork
    port: int | None = None

    def admits(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int) -> bool:
        return address in self.network and self.port in (None, port)


def _is_local_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_unspecified


def _origin(text: str) -> str:
    """An origin as browsers send it: scheme://host[:port], nothing after."""
    text = text.strip()
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{text!r} is not an http(s) origin")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise ValueError(f"{text!r} is not an origin: nothing may follow host and port")
    try:
        _ = parts.port
    except ValueError:
        raise ValueError(f"{text!r} has a bad port") from None
    return f"{parts.scheme}://{parts.netloc.lower()}"


def _allowed_address(entry: str) -> AllowedAddress:
    """Parse "10.0.0.0/8", "127.0.0.1", "127.0.0.1:8080" or "[::1]:8080"."""
    port: int | None = None
    text = entry
    if entry.startswith("["):
        address, _, rest = entry[1:].partition("]")
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"{entry!r} is not IP, IP:port, [IPv6]:port or CIDR")
            port = _port(entry, rest[1:])
        text = address
    elif entry.count(":") == 1:
        text, _, raw_port = entry.partition(":")
        port = _port(entry, raw_port)
    try:
        network = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValueError(f"{entry!r} is not IP, IP:port, [IPv6]:port or CIDR") from None
    return AllowedAddress(network, port)


def _port(entry: str, raw: str) -> int:
    if not raw.isdigit() or not 1 <= int(raw) <= 65535:
        raise ValueError(f"{entry!r} has a bad port")
    return int(raw)


_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def _parse(name: str, var: str, kind: object, raw: str) -> object:
    kind = str(kind)
    if kind == "bool":
        flag = raw.strip().lower()
        if flag in _TRUE or flag in _FALSE:
            return flag in _TRUE
        raise SettingsError(f"{var}={raw!r} is not true or false")
    try:
        if kind == "int":
            return int(raw.replace("_", ""))
        if kind == "float":
            return float(raw)
    except ValueError:
        raise SettingsError(f"{var}={raw!r} is not a number") from None
    if kind in ("Path", "Path | None"):
        return Path(raw).expanduser()
    return raw.strip()


def documented_variables() -> list[EnvVar]:
    """Every environment variable the services read, in declaration order."""
    return [f.metadata["env"] for f in dataclasses.fields(Settings)]
