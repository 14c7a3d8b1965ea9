"""The web front: one Flask app with the uploader, results API and page blueprints."""

from __future__ import annotations

import atexit
import json
import logging
import sys
import time
from dataclasses import replace
from functools import cache
from importlib.resources import files
from typing import Any
from urllib.parse import urlsplit

from botocore.exceptions import BotoCoreError, ClientError
from flask import Flask, Response, g, jsonify, request
from prometheus_client import CollectorRegistry
from werkzeug.exceptions import HTTPException
from werkzeug.middleware.proxy_fix import ProxyFix

from imagepipe.core.auth import authenticate, public
from imagepipe.core.aws import Clients, bucket_origins, make_clients
from imagepipe.core.errors import ApiError
from imagepipe.core.identity import TokenVerifier, fetch_jwks
from imagepipe.core.keepalive import close_on_unread_body
from imagepipe.core.metrics import (
    FRONT_METRICS,
    EmfFile,
    MetricsServer,
    RequestTally,
    build_metrics,
)
from imagepipe.core.quota import DAILY_QUOTA, DailyQuota
from imagepipe.core.records import ResultStore, StoreError
from imagepipe.core.services import EXTENSION, Services
from imagepipe.core.settings import Settings, SettingsError
from imagepipe.core.users import find_user_pool

logger = logging.getLogger(__name__)

# Where the app keeps its metrics registry, and the EMF tally when there is one (app.extensions).
METRICS = "imagepipe.metrics"
EMF_TALLY = "imagepipe.metrics.emf"
OPENAPI_PATH = "/api/openapi.json"

# Base64 makes a body 4/3 of the image; allow the form fields around it too.
_FORM_OVERHEAD = 64 * 1024

_SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    # The camera button is a file input with `capture`, which needs no camera permission.
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=(), usb=()",
}


def create_app(
    settings: Settings | None = None,
    clients: Clients | None = None,
    store: ResultStore | None = None,
    verifier: TokenVerifier | None = None,
    registry: CollectorRegistry | None = None,
) -> Flask:
    """Build the app; settings, clients and the token verifier default to the environment's.

    Its metrics go to `registry`, by default one of its own (app.extensions[METRICS]).
    """
    from results_api.routes import bp as results_bp
    from uploader.ratelimit import RATE_LIMITER, RateLimiter
    from uploader.routes import bp as uploader_bp
    from web.routes import bp as web_bp

    settings = settings or Settings.from_env()
    # People are waiting on the front: fail over to a 503 quickly rather than retry long.
    clients = clients or make_clients(settings, max_attempts=3, read_timeout=10)
    store = store or ResultStore(clients.dynamodb, settings.table)
    if settings.auth:
        settings = with_user_pool(settings, clients.cognito)
        verifier = verifier or make_verifier(settings)
    else:
        logger.warning("IMAGEPIPE_AUTH is off: anyone who reaches the front may do anything")

    app = Flask(__name__, static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_upload_bytes * 4 // 3 + _FORM_OVERHEAD
    app.config["JSON_SORT_KEYS"] = False
    app.extensions[EXTENSION] = Services(settings=settings, clients=clients, store=store,
                                         verifier=verifier if settings.auth else None)
    app.extensions[RATE_LIMITER] = RateLimiter(settings.rate_limit_per_minute,
                                               settings.rate_limit_burst)
    app.extensions[DAILY_QUOTA] = DailyQuota(clients.dynamodb, settings.table,
                                             settings.daily_quota)
    if settings.trusted_proxies:
        # Behind a load balancer the client's address is in X-Forwarded-For.
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=settings.trusted_proxies)  # type: ignore[method-assign]
    # Outermost, so it sees the server's own start_response: errors answered before the body
    # is read (413, 429, 400, 404, 405) must not leave it on a kept-alive connection.
    app.wsgi_app = close_on_unread_body(app.wsgi_app)  # type: ignore[method-assign]

    # Before sign-in, so that refused requests are timed too.
    _register_request_metrics(app, registry or CollectorRegistry())
    app.before_request(authenticate)
    app.register_blueprint(uploader_bp)
    app.register_blueprint(results_bp)
    app.register_blueprint(web_bp)
    app.add_url_rule(OPENAPI_PATH, "openapi", public(_openapi))
    _register_error_handlers(app)
    _register_security_headers(app, clients, settings.bucket, _origin_of(settings.events_url))
    return app


def openapi_document() -> dict[str, Any]:
    """The API's contract (imagepipe/openapi.json): OpenAPI 3.1, every route of the app."""
    return json.loads(_openapi_text())


@cache
def _openapi_text() -> str:
    return (files("imagepipe") / "openapi.json").read_text(encoding="utf-8")


def _openapi() -> Response:
    return Response(_openapi_text(), mimetype="application/json")


def _register_request_metrics(app: Flask, registry: CollectorRegistry) -> None:
    found = build_metrics(registry, FRONT_METRICS)
    requests, seconds = found["imagepipe_front_requests"], found["imagepipe_front_request_seconds"]
    app.extensions[METRICS] = registry

    @app.before_request
    def start_timer() -> None:
        g.imagepipe_started = time.perf_counter()

    @app.after_request
    def count_request(response: Response) -> Response:
        # The rule, not the path: image IDs in paths would make a series per image.
        route = request.url_rule.rule if request.url_rule is not None else "(no route)"
        requests.labels(route, request.method, str(response.status_code)).inc()
        started = g.get("imagepipe_started")
        if started is not None:
            took = time.perf_counter() - started
            seconds.labels(route, request.method).observe(took)
            tally: RequestTally | None = app.extensions.get(EMF_TALLY)
            if tally is not None:
                tally.add(route, request.method, str(response.status_code), took)
        return response


def front() -> Flask:
    """The app gunicorn serves, with its metrics on their own port when one is set."""
    app = create_app()
    settings: Settings = app.extensions[EXTENSION].settings
    if settings.metrics_front_port:
        # In the worker process: one worker (gunicorn_command), so one set of figures.
        try:
            app.extensions[f"{METRICS}.server"] = MetricsServer(
                app.extensions[METRICS], settings.metrics_host, settings.metrics_front_port)
        except OSError as exc:
            # Another worker holds it (--workers above 1): serve requests all the same.
            logger.warning("no metrics from this worker: %s:%d: %s", settings.metrics_host,
                           settings.metrics_front_port, exc)
    if settings.metrics_emf_file:
        tally = RequestTally(EmfFile(settings.metrics_emf_file), settings.metrics_namespace)
        app.extensions[EMF_TALLY] = tally.start()
        # The last minute's requests too, when gunicorn stops the worker.
        atexit.register(tally.close)
    return app


def with_user_pool(settings: Settings, cognito: Any) -> Settings:
    """The settings with the user pool's IDs, looked up by the pool's name when not given."""
    if settings.user_pool_id and settings.user_pool_client_id:
        return settings
    pool = find_user_pool(cognito, settings)
    if pool is None:
        raise SettingsError(
            f"IMAGEPIPE_AUTH is on but there is no user pool {settings.user_pool_name!r} with "
            "an app client: run `imagepipe provision` (or `make run`), set "
            "IMAGEPIPE_USER_POOL_ID and IMAGEPIPE_USER_POOL_CLIENT_ID, or set "
            "IMAGEPIPE_AUTH=off on a closed network")
    return replace(settings, user_pool_id=pool.pool_id, user_pool_client_id=pool.client_id)


def make_verifier(settings: Settings) -> TokenVerifier:
    """The verifier of the access tokens of the user pool the settings name."""
    assert settings.issuer and settings.jwks_url and settings.user_pool_client_id
    jwks_url = settings.jwks_url
    return TokenVerifier(settings.issuer, settings.user_pool_client_id,
                         jwks=lambda: fetch_jwks(jwks_url))


def _origin_of(url: str) -> str:
    """The origin of an absolute URL; "" for a path on our own origin."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else ""


def content_security_policy(s3_origins: tuple[str, ...], events_origin: str = "") -> str:
    """The page's CSP: only our own files, plus the bucket for uploads and thumbnails, and
    the events server when it is elsewhere (make run)."""
    s3 = " ".join(s3_origins)
    directives = {
        "default-src": "'self'",
        "script-src": "'self'",
        "style-src": "'self'",
        # blob: local previews of picked files; S3: thumbnails behind presigned GET redirects.
        "img-src": f"'self' blob: data: {s3}",
        # S3: the presigned POST of each file goes straight to the bucket.
        "connect-src": f"'self' {s3} {events_origin}",
        "object-src": "'none'",
        "base-uri": "'none'",
        "form-action": "'self'",
        "frame-ancestors": "'none'",
    }
    return "; ".join(f"{name} {value.strip()}" for name, value in directives.items())


def _register_security_headers(app: Flask, clients: Clients, bucket: str,
                               events_origin: str = "") -> None:
    policy: list[str] = []

    @app.after_request
    def security_headers(response: Response) -> Response:
        if not policy:
            # Signing needs credentials, which may come from the instance only at first use;
            # without them uploads fail anyway, so the page gets the policy without S3 then.
            try:
                policy.append(content_security_policy(bucket_origins(clients.s3, bucket),
                                                      events_origin))
            except BotoCoreError as exc:
                logger.warning("no S3 origin for the CSP yet: %s", exc)
        response.headers["Content-Security-Policy"] = (
            policy[0] if policy else content_security_policy((), events_origin)
        )
        for name, value in _SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response


def _error_response(error: ApiError) -> tuple[Any, int, dict[str, str]]:
    return jsonify(error.to_json()), error.status_code, error.headers


def _register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def api_error(error: ApiError) -> tuple[Any, int, dict[str, str]]:
        return _error_response(error)

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> tuple[Any, int, dict[str, str]]:
        status = error.code or 500
        code = (error.name or "error").lower().replace(" ", "_")
        return _error_response(ApiError(status, code, error.description or error.name))

    @app.errorhandler(StoreError)
    @app.errorhandler(ClientError)
    @app.errorhandler(BotoCoreError)
    def backend_error(error: Exception) -> tuple[Any, int, dict[str, str]]:
        logger.warning("AWS backend unavailable: %s", error)
        return _error_response(ApiError(503, "backend_unavailable",
                                        "the storage backend is unavailable; try again shortly"))

    @app.errorhandler(Exception)
    def unexpected(error: Exception) -> tuple[Any, int, dict[str, str]]:
        logger.exception("unhandled error")
        return _error_response(ApiError(500, "internal_error", "an unexpected error occurred"))


def gunicorn_command(bind: str, workers: int = 1) -> list[str]:
    """How the front is served, locally by `make run` and in production by `imagepipe web`.

    One worker process by default: its metrics are the front's (several workers would each
    count their own requests, and only the first could listen on the metrics port).
    """
    return [
        sys.executable, "-m", "gunicorn",
        "--bind", bind,
        "--workers", str(workers),
        # Threads let the synchronous API wait for a result without blocking the front; the
        # work is mostly waiting on AWS, so one process with many threads serves it.
        "--worker-class", "gthread", "--threads", "16",
        "--access-logfile", "-",
        # Longer than a load balancer's idle timeout (the ALB's is 60 s), so the server never
        # closes a kept-alive connection the balancer or a polling client is about to reuse.
        "--keep-alive", "75",
        # On SIGTERM, requests in flight get this long to finish before the workers exit.
        "--graceful-timeout", "10",
        "imagepipe.app:front()",
    ]


def run_events_server(settings: Settings) -> None:
    """`imagepipe events`: serve GET /api/events until SIGTERM, fed by a queue of its own.

    The queue is subscribed to the results topic at start, and removed with its subscription
    at a clean stop.
    """
    import asyncio

    from aiohttp import web as aioweb

    from web.events import EventHub, QueueFeed, make_events_app

    clients = make_clients(settings)
    verifier = None
    if settings.auth:
        settings = with_user_pool(settings, clients.cognito)
        verifier = make_verifier(settings)
    url, subscription = open_events_queue(clients, settings)
    hub = EventHub()
    app = make_events_app(settings, hub, verifier, settings.events_heartbeat_seconds)
    feeds: list[QueueFeed] = []

    async def start_feed(app: aioweb.Application) -> None:
        loop = asyncio.get_running_loop()
        feeds.append(QueueFeed(clients.sqs, url, lambda event: loop.call_soon_threadsafe(
            hub.publish, event), settings.poll_seconds).start())

    async def remove_queue(app: aioweb.Application) -> None:
        for feed in feeds:
            feed.stop()
        close_events_queue(clients, url, subscription)

    app.on_startup.append(start_feed)
    app.on_cleanup.append(remove_queue)
    logger.info("events server on %s:%d, fed by %s", settings.host, settings.events_port, url)
    # Open streams are cut at stop; browsers reconnect, to another instance, by Last-Event-ID.
    aioweb.run_app(app, host=settings.host, port=settings.events_port, shutdown_timeout=2,
                   print=None, access_log=None)


def open_events_queue(clients: Clients, settings: Settings) -> tuple[str, str]:
    """An events server's own queue, subscribed to the results topic: its URL and the
    subscription's ARN."""
    from imagepipe.core.aws import topic_arn
    from imagepipe.core.provision import subscribe_queue
    from web.events import instance_queue_name

    topic = topic_arn(clients.sns, settings.results_topic)
    # Events are for the streams open now: a queue that keeps them minutes, not days.
    url = clients.sqs.create_queue(QueueName=instance_queue_name(topic),
                                   Attributes={"MessageRetentionPeriod": "300"})["QueueUrl"]
    return url, subscribe_queue(clients, topic, url)


def close_events_queue(clients: Clients, url: str, subscription: str) -> None:
    """Remove an events server's queue and its subscription (a leftover only costs storage)."""
    try:
        clients.sns.unsubscribe(SubscriptionArn=subscription)
        clients.sqs.delete_queue(QueueUrl=url)
    except (BotoCoreError, ClientError) as exc:
        logger.warning("could not remove the events queue %s: %s", url, exc)
