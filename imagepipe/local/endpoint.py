"""The local AWS endpoint: moto's server, answering browsers' CORS from the bucket's rules.

Out of the box moto's server adds permissive CORS headers of its own (flask-cors) to every
response, so a browser would upload to the bucket whatever its CORS rules say. Here that is
off (MOTO_DISABLE_GLOBAL_CORS), so preflights are answered from the bucket's CORS rules, as
S3 does (moto refuses an origin no rule allows). moto 5.2 leaves the CORS headers off one
response S3 gives them on: a POST to a bucket, which is how a browser sends a presigned
upload. `BucketPostCors` adds them there, from the same rules.

moto's SQS also slows as its queue grows: for each message it returns, it computes every
attribute of the queue (counting all its messages) to read the retention period, and each
count asks the clock through datetime arithmetic. `speed_up_sqs` gives it the same answers
in constant time, so that the local endpoint measures like a queue, not like its length.
Its DynamoDB walks the whole table for an index query; `key_maps.speed_up_indexes` walks only
the partition asked for (IMAGEPIPE_LOCAL_KEY_MAPS=off leaves moto's walk). And to find the
service of each request, moto's server lists its own package folder (a stat per service, some
160), holding the lock every request passes: `speed_up_dispatch` lists it once.

With `--quiet` it leaves out werkzeug's log line per request (a tenth of its CPU under load):
`stack.start_moto` passes it when the endpoint's output is thrown away.

With `--data DIR` the endpoint keeps its data there across restarts (`snapshot`): S3 bodies as
files, the rest restored on start and saved on stop (SIGTERM or Ctrl-C).

Run as `python -m imagepipe.local.endpoint -H HOST -p PORT [--data DIR] [--quiet]`; `make run`
and the tests do.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from imagepipe.local import snapshot
from imagepipe.local.key_maps import OFF_VARIABLE, speed_up_indexes

logger = logging.getLogger(__name__)

StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


def bucket_cors_rules(bucket: str) -> list[Any]:
    """The CORS rules moto holds for a bucket, or [] when there is no such bucket."""
    from moto.s3.models import s3_backends

    owner = s3_backends.bucket_accounts.get(bucket)
    if owner is None:
        return []
    partition, account_id = owner
    found = s3_backends[account_id][partition].buckets.get(bucket)
    return list(found.cors) if found is not None else []


def allowed_post_headers(origin: str, rules: list[Any]) -> list[tuple[str, str]]:
    """The CORS headers S3 adds to a POST from origin: those of the first rule that allows it."""
    from moto.s3.utils import cors_matches_origin

    for rule in rules:
        methods = rule.allowed_methods or []
        if "POST" in methods and cors_matches_origin(origin, rule.allowed_origins or []):
            headers = [("Access-Control-Allow-Origin", origin), ("Vary", "Origin")]
            if rule.exposed_headers:
                headers.append(("Access-Control-Expose-Headers", ", ".join(rule.exposed_headers)))
            return headers
    return []


class BucketPostCors:
    """WSGI middleware: a browser's POST to a path-style bucket URL gets the bucket's CORS."""

    def __init__(self, app: WsgiApp,
                 rules_of: Callable[[str], list[Any]] = bucket_cors_rules) -> None:
        self.app = app
        self.rules_of = rules_of

    def __call__(self, environ: dict[str, Any], start_response: StartResponse
                 ) -> Iterable[bytes]:
        origin = environ.get("HTTP_ORIGIN")
        bucket = environ.get("PATH_INFO", "").strip("/").split("/", 1)[0]
        if environ.get("REQUEST_METHOD") != "POST" or not origin or not bucket:
            return self.app(environ, start_response)

        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            if not any(name.lower() == "access-control-allow-origin" for name, _ in headers):
                headers = headers + allowed_post_headers(origin, self.rules_of(bucket))
            return start_response(status, headers, exc_info)

        return self.app(environ, start)


def speed_up_sqs() -> bool:
    """Make moto's per-message clock reads and retention check O(1); False if moto changed.

    Same results: moto's unix_time() without an argument is the current time, and the
    retention check reads one attribute instead of all of them.
    """
    from moto.core import utils
    from moto.sqs import models

    backend = models.SQSBackend
    if not (hasattr(models, "unix_time") and hasattr(models, "unix_time_millis")
            and hasattr(backend, "is_message_valid_based_on_retention_period")):
        return False

    def unix_time(dt: Any = None) -> float:
        return time.time() if dt is None else utils.unix_time(dt)

    def unix_time_millis(dt: Any = None) -> float:
        return time.time() * 1000.0 if dt is None else utils.unix_time_millis(dt)

    def retained(self: Any, queue_name: str, message: Any) -> bool:
        period = int(self.get_queue(queue_name).message_retention_period)
        return period + message.sent_timestamp / 1000 > time.time()

    models.unix_time = unix_time
    models.unix_time_millis = unix_time_millis
    backend.is_message_valid_based_on_retention_period = retained
    return True


def speed_up_dispatch() -> bool:
    """List moto's service modules once instead of on every request; False if moto changed.

    Same answers: the list is of the folders in moto's installed package, which do not change
    while the server runs.
    """
    from moto import backends

    listed = getattr(backends, "list_of_moto_modules", None)
    if listed is None:
        return False
    modules = frozenset(listed())
    backends.list_of_moto_modules = lambda: modules
    return True


def main(argv: list[str] | None = None) -> int:
    # moto reads this once, when its settings module is first imported, which is just below.
    os.environ["MOTO_DISABLE_GLOBAL_CORS"] = "true"
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import run_simple

    parser = argparse.ArgumentParser(prog="python -m imagepipe.local.endpoint", description=__doc__)
    parser.add_argument("-H", "--host", default="127.0.0.1")
    parser.add_argument("-p", "--port", type=int, default=4566)
    parser.add_argument("--data", type=Path, default=None,
                        help="keep the data in this folder across restarts (default: memory only)")
    parser.add_argument("--quiet", action="store_true",
                        help="no log line per request (werkzeug's), only warnings and errors")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.quiet:
        # werkzeug keeps a level set before its first request.
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
    os.environ.setdefault("MOTO_PORT", str(args.port))
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))

    speed_up_sqs()
    speed_up_dispatch()
    if os.environ.get(OFF_VARIABLE, "").lower() != "off":
        speed_up_indexes()
    if args.data is not None:
        snapshot.keep_bodies_in(args.data)
        started = time.monotonic()
        if snapshot.restore(args.data):
            logger.info("restored the data in %s in %.1f s", args.data,
                        time.monotonic() - started)
    app = DomainDispatcherApplication(create_backend_app)
    try:
        run_simple(args.host, args.port, BucketPostCors(app), threaded=True,
                   request_handler=MotoRequestHandler)
    finally:
        # On SIGTERM (the stack stops the endpoint last, once nothing writes) or Ctrl-C.
        if args.data is not None:
            started = time.monotonic()
            path = snapshot.save(args.data)
            logger.info("saved the data to %s in %.1f s", path, time.monotonic() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
