"""The `imagepipe` command: run the stack or a service, sign in, classify, users, bulk tools,
deploy, train."""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imagepipe.core.logs import configure_logging
from imagepipe.core.settings import BULK, INTERACTIVE, Settings, SettingsError

LANES = (INTERACTIVE, BULK)

EXIT_USAGE = 2


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except SettingsError as exc:
        print(f"imagepipe: {exc}", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def _reports_aws_errors(func: Callable[[argparse.Namespace], int]
                        ) -> Callable[[argparse.Namespace], int]:
    """Turn an AWS failure into one line on stderr and exit status 1, not a traceback."""
    @functools.wraps(func)
    def wrapper(args: argparse.Namespace) -> int:
        from botocore.exceptions import BotoCoreError, ClientError

        from imagepipe.core.records import StoreError

        try:
            return func(args)
        except (ClientError, BotoCoreError, StoreError) as exc:
            print(f"imagepipe {args.command}: {exc}", file=sys.stderr)
            return 1
    return wrapper


@dataclass(frozen=True)
class _Aws:
    """The settings, session and clients of a command that talks to AWS."""

    settings: Settings
    session: Any
    clients: Any


def _aws() -> _Aws:
    """Real AWS, the endpoint given, or `make run`'s stack (imagepipe.cli.target says which)."""
    from imagepipe.cli.target import NoTarget, aws_target
    from imagepipe.core.aws import make_clients

    settings = _settings()
    configure_logging(settings.log_level, "imagepipe")
    try:
        settings, session = aws_target(settings, err=sys.stderr)
    except (NoTarget, SettingsError) as exc:
        print(f"imagepipe: {exc}", file=sys.stderr)
        sys.exit(1)
    return _Aws(settings, session, make_clients(settings, session))


def cmd_run(args: argparse.Namespace) -> int:
    from imagepipe.local.stack import StackError, run_local

    settings = _settings()
    configure_logging(settings.log_level, "imagepipe")
    try:
        return run_local(settings, args.endpoint_port, fresh=args.fresh)
    except StackError as exc:
        print(f"imagepipe run: {exc}", file=sys.stderr)
        return 1


def cmd_processor(args: argparse.Namespace) -> int:
    from processor.__main__ import main

    return main(args.rest)


def cmd_web(args: argparse.Namespace) -> int:
    settings = _settings()
    bind = args.bind or f"{settings.host}:{settings.port}"
    from imagepipe.app import gunicorn_command

    os.execv(sys.executable, gunicorn_command(bind, args.workers))
    return 0  # not reached


def cmd_events(args: argparse.Namespace) -> int:
    settings = _settings()
    from imagepipe.app import run_events_server
    from imagepipe.core.logs import configure_logging

    configure_logging(settings.log_level, "events")
    run_events_server(settings)
    return 0


@_reports_aws_errors
def cmd_provision(args: argparse.Namespace) -> int:
    from imagepipe.core.provision import provision

    aws = _aws()
    resources = provision(aws.settings, aws.clients)
    if resources.interactive_queue_url:
        print(f"interactive queue {resources.interactive_queue_url}")
    print(f"bucket {resources.bucket}\nqueue {resources.queue_url}\n"
          f"dead-letter queue {resources.dead_letter_queue_url}\ntable {resources.table}\n"
          f"user pool {resources.user_pool_id}\napp client {resources.user_pool_client_id}")
    return 0


def _front(url: str | None, settings: Settings) -> str:
    """The front a command calls: --url, else the one signed in to, else IMAGEPIPE_HOST:PORT."""
    from imagepipe.cli.saved_login import load_login

    if url:
        return url.rstrip("/")
    login = load_login()
    return login.front if login is not None else f"http://{settings.host}:{settings.port}"


def cmd_classify(args: argparse.Namespace) -> int:
    from imagepipe.cli.classify import classify_files
    from imagepipe.cli.signin import SignInError, front_session

    front = _front(args.url, _settings())
    try:
        session = front_session(front)
    except SignInError as exc:
        print(f"imagepipe classify: {exc}", file=sys.stderr)
        return 1
    return classify_files([Path(p) for p in args.files], front, timeout=args.timeout,
                          session=session)


def cmd_token(args: argparse.Namespace) -> int:
    from imagepipe.cli.signin import SignInError, access_token

    try:
        token = access_token(_front(args.url, _settings()))
    except SignInError as exc:
        print(f"imagepipe token: {exc}", file=sys.stderr)
        return 1
    # Nothing to print where the front asks nobody to sign in; curl then sends an empty one.
    print(token or "")
    return 0


def _read_password(username: str) -> str:
    """IMAGEPIPE_PASSWORD, else asked without echo, else (a pipe) the first line of stdin."""
    password = os.environ.get("IMAGEPIPE_PASSWORD")
    if password:
        return password
    if sys.stdin.isatty():
        import getpass

        return getpass.getpass(f"password for {username}: ")
    return sys.stdin.readline().rstrip("\r\n")


def cmd_login(args: argparse.Namespace) -> int:
    from imagepipe.cli.http import new_session
    from imagepipe.cli.saved_login import SavedLogin, load_login, save_login
    from imagepipe.cli.signin import SignInError, front_auth_config, sign_in

    front = _front(args.url, _settings())
    try:
        config = front_auth_config(new_session(), front)
    except SignInError as exc:
        print(f"imagepipe login: {exc}", file=sys.stderr)
        return 1
    if not config.required:
        print(f"{front} does not ask anyone to sign in (IMAGEPIPE_AUTH=off there): "
              "nothing to do")
        return 0
    kept = load_login()
    username = args.username or (kept.username if kept is not None else "")
    if not username and sys.stdin.isatty():
        username = input("username: ").strip()
    if not username:
        print("imagepipe login: which user? imagepipe login USERNAME", file=sys.stderr)
        return EXIT_USAGE
    password = _read_password(username)
    try:
        tokens = sign_in(config, username, password)
    except SignInError as exc:
        print(f"imagepipe login: {exc}", file=sys.stderr)
        return 1
    path = save_login(SavedLogin(
        front=front, region=config.region, user_pool_id=config.user_pool_id,
        client_id=config.client_id, endpoint=config.endpoint, username=username,
        refresh_token=tokens["RefreshToken"]))
    print(f"signed in to {front} as {username} (kept in {path})")
    return 0


def cmd_logout(args: argparse.Namespace) -> int:
    from imagepipe.cli.saved_login import forget_login, load_login
    from imagepipe.cli.signin import revoke

    login = load_login()
    if login is None:
        forget_login()  # an unreadable file is forgotten too
        print("not signed in")
        return 0
    problem = revoke(login)
    forget_login()
    if problem is not None:
        # Forgotten here all the same; the token then lives until it expires.
        print(f"imagepipe logout: the user pool did not revoke the refresh token: {problem}",
              file=sys.stderr)
    print(f"signed out {login.username} from {login.front}")
    return 0


def _parameters(pairs: list[str]) -> dict[str, str]:
    parameters = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            print(f"imagepipe deploy: --parameter wants KEY=VALUE, got {pair!r}", file=sys.stderr)
            sys.exit(EXIT_USAGE)
        parameters[key] = value
    return parameters


def cmd_deploy(args: argparse.Namespace) -> int:
    from botocore.exceptions import BotoCoreError, ClientError

    from imagepipe.cli.deploy import DeployError, deploy, make_deploy_clients

    settings = _settings()
    configure_logging(settings.log_level, "imagepipe")
    parameters = _parameters(args.parameter)
    try:
        result = deploy(args.stack, make_deploy_clients(settings), parameters=parameters,
                        artifact_bucket=args.artifact_bucket, refresh_image=args.refresh_ami)
    except (DeployError, ClientError, BotoCoreError) as exc:
        print(f"imagepipe deploy: {exc}", file=sys.stderr)
        return 1
    print(f"stack {result.stack} {result.action}")
    for key, value in sorted(result.outputs.items()):
        print(f"{key:<24} {value}")
    return 0


def cmd_destroy(args: argparse.Namespace) -> int:
    from botocore.exceptions import BotoCoreError, ClientError

    from imagepipe.cli.deploy import DeployError, destroy, make_deploy_clients

    settings = _settings()
    configure_logging(settings.log_level, "imagepipe")
    try:
        destroy(args.stack, make_deploy_clients(settings), delete_data=args.delete_data)
    except (DeployError, ClientError, BotoCoreError) as exc:
        print(f"imagepipe destroy: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from processor.train import train_classifier

    settings = _settings()
    configure_logging(settings.log_level, "imagepipe")
    try:
        report = train_classifier(Path(args.data), Path(args.output), base=args.base,
                                  epochs=args.epochs, cache_dir=settings.model_cache_dir,
                                  nested=args.nested)
    except (ValueError, OSError) as exc:
        print(f"imagepipe train: {exc}", file=sys.stderr)
        return 1
    validation = ("n/a" if report.validation_accuracy is None
                  else f"{report.validation_accuracy:.3f}")
    print(f"classes {', '.join(report.labels)}\nimages {report.images} "
          f"(skipped {report.skipped})\ntrain accuracy {report.train_accuracy:.3f}\n"
          f"validation accuracy {validation}\nmodel {report.model_path}\n"
          f"labels {report.labels_path}\n"
          + (f"parents {report.parents_path}\n" if report.parents_path else "")
          + f"took {report.seconds:.1f} s\n"
          f"serve it with IMAGEPIPE_MODEL={report.model_path.resolve()}")
    return 0


def _user_pool_id(aws: _Aws, command: str) -> str:
    """The pool IMAGEPIPE_USER_POOL_ID names, else the one named IMAGEPIPE_USER_POOL."""
    from imagepipe.core.users import find_user_pool

    pool = find_user_pool(aws.clients.cognito, aws.settings)
    if pool is None:
        print(f"imagepipe {command}: no user pool named {aws.settings.user_pool_name}: set "
              "IMAGEPIPE_USER_POOL_ID (the stack's UserPoolId output) or IMAGEPIPE_USER_POOL",
              file=sys.stderr)
        sys.exit(1)
    return pool.pool_id


def _owner_prefix(aws: _Aws, username: str) -> str:
    """users/<sub>/: objects under it belong to that user."""
    from botocore.exceptions import ClientError

    from imagepipe.core.aws import error_code
    from imagepipe.core.ids import USERS_PREFIX
    from imagepipe.core.users import get_user

    try:
        user = get_user(aws.clients.cognito, _user_pool_id(aws, "upload"), username)
    except ClientError as exc:
        if error_code(exc) != "UserNotFoundException":
            raise
        print(f"imagepipe upload: no user {username!r} in the user pool", file=sys.stderr)
        sys.exit(1)
    return f"{USERS_PREFIX}{user.sub}/"


@_reports_aws_errors
def cmd_upload(args: argparse.Namespace) -> int:
    from imagepipe.cli.bulk import key_prefix, run_upload

    aws = _aws()
    settings, clients = aws.settings, aws.clients
    prefix = args.prefix
    if args.owner:
        prefix = _owner_prefix(aws, args.owner) + key_prefix(prefix)
    try:
        return run_upload(settings, clients, [Path(p) for p in args.paths], prefix,
                          args.concurrency, args.wait, args.timeout)
    except (FileNotFoundError, ValueError) as exc:
        print(f"imagepipe upload: {exc}", file=sys.stderr)
        return EXIT_USAGE


@_reports_aws_errors
def cmd_users_add(args: argparse.Namespace) -> int:
    from imagepipe.core.users import add_user

    aws = _aws()
    user, password = add_user(aws.clients.cognito, _user_pool_id(aws, "users add"),
                              args.name, admin=args.admin)
    print(f"username  {user.username}\nsub       {user.sub}\n"
          f"admin     {'yes' if user.admin else 'no'}\npassword  {password}")
    print("imagepipe users add: the password is shown only this once and kept nowhere; "
          "running this again sets a new one", file=sys.stderr)
    return 0


@_reports_aws_errors
def cmd_users_list(args: argparse.Namespace) -> int:
    from imagepipe.core.users import list_users

    aws = _aws()
    users = list_users(aws.clients.cognito, _user_pool_id(aws, "users list"))
    rows = [("NAME", "SUB", "ADMIN", "ENABLED")]
    rows += [(u.username, u.sub, "yes" if u.admin else "no", "yes" if u.enabled else "no")
             for u in users]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        print("  ".join([*(c.ljust(w) for c, w in zip(row[:3], widths, strict=True)), row[3]]))
    return 0


@_reports_aws_errors
def cmd_backfill(args: argparse.Namespace) -> int:
    from imagepipe.cli.backfill import MISSING, MODEL_CHANGED, backfill
    from imagepipe.core.catalog import describe_model
    from imagepipe.core.records import ResultStore

    aws = _aws()
    settings, clients = aws.settings, aws.clients
    mode = MODEL_CHANGED if args.model_changed else MISSING
    try:
        # The model the processors serve, as their results name it, without loading it.
        info = describe_model(settings.model, settings.model_weights, settings.model_labels)
        model = (info.name, info.version)
    except ValueError as exc:
        print(f"imagepipe backfill: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.lane not in settings.lanes:
        print(f"imagepipe backfill: no {args.lane} lane (IMAGEPIPE_INTERACTIVE_QUEUE is off)",
              file=sys.stderr)
        return EXIT_USAGE
    report = backfill(settings, clients, ResultStore(clients.dynamodb, settings.table),
                      args.prefix, mode, model, args.rate, dry_run=args.dry_run,
                      lane=args.lane)
    return 1 if report.not_sent else 0


@_reports_aws_errors
def cmd_results(args: argparse.Namespace) -> int:
    from imagepipe.cli.export import iter_results, write_results
    from imagepipe.core.records import ResultStore

    aws = _aws()
    settings, clients = aws.settings, aws.clients
    store = ResultStore(clients.dynamodb, settings.table)
    records = iter_results(store, label=args.label, status=args.status,
                           min_score=args.min_score, limit=args.limit)
    try:
        write_results(records, args.format, sys.stdout)
    except BrokenPipeError:
        # `imagepipe results | head` closed the pipe: not an error. Point stdout at devnull
        # so the interpreter's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


@_reports_aws_errors
def cmd_status(args: argparse.Namespace) -> int:
    from imagepipe.cli.queue_status import collect_status, print_status
    from imagepipe.core.aws import client_config
    from imagepipe.core.records import ResultStore

    aws = _aws()
    settings, clients = aws.settings, aws.clients
    cloudwatch = aws.session.client(
        "cloudwatch", endpoint_url=settings.endpoint_url, config=client_config(settings))
    status = collect_status(settings, clients, ResultStore(clients.dynamodb, settings.table),
                            cloudwatch, args.recent)
    if args.json:
        print(json.dumps(status.to_json(), indent=2))
    else:
        print_status(status, sys.stdout, args.recent)
    return 0


@_reports_aws_errors
def cmd_reindex(args: argparse.Namespace) -> int:
    from imagepipe.core.records.reindex import reindex

    aws = _aws()
    result = reindex(aws.clients.dynamodb, aws.settings.table)
    print(f"reindexed {result.rewritten} results ({result.skipped} rewritten meanwhile)")
    return 0


@_reports_aws_errors
def cmd_dlq_redrive(args: argparse.Namespace) -> int:
    from imagepipe.cli.dlq import redrive
    from imagepipe.cli.progress import ProgressLine
    from imagepipe.core.aws import queue_url

    aws = _aws()
    settings, clients = aws.settings, aws.clients
    lanes = settings.lanes
    if args.to not in lanes or (args.lane and args.lane not in lanes):
        print("imagepipe dlq redrive: no interactive lane (IMAGEPIPE_INTERACTIVE_QUEUE is off)",
              file=sys.stderr)
        return EXIT_USAGE
    target = lanes[args.to][0]
    left = args.max
    not_moved = 0
    # Every lane's dead letters by default; they go to the bulk lane unless told otherwise,
    # since nobody is waiting at a screen for a message that failed five times.
    for lane in [args.lane] if args.lane else list(lanes):
        if left is not None and left <= 0:
            break
        report = redrive(clients.sqs, queue_url(clients.sqs, lanes[lane][1]),
                         queue_url(clients.sqs, target), left, ProgressLine())
        print(f"moved {report.moved} messages from the {lane} dead-letter queue to {target}")
        not_moved += report.not_moved
        left = None if left is None else left - report.moved - report.not_moved
    return 1 if not_moved else 0


def _score(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:  # also refuses NaN
        raise argparse.ArgumentTypeError("must be between 0 and 1")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _add_bulk_commands(sub: Any) -> None:
    from imagepipe.cli.bulk import default_concurrency
    from imagepipe.cli.export import FORMATS

    upload = sub.add_parser("upload", help="put image files and folders straight into the bucket")
    upload.add_argument("paths", nargs="+", metavar="PATH", help="files and folders (recursive)")
    upload.add_argument("--prefix", default="", help="key prefix in the bucket (default none)")
    upload.add_argument("--owner", metavar="USERNAME",
                        help="the images belong to this user: keys go under users/<sub>/")
    upload.add_argument("--concurrency", type=_positive, default=default_concurrency(),
                        help="parallel uploads (default %(default)s)")
    upload.add_argument("--wait", action="store_true",
                        help="then wait for the results; exit 1 if any image failed")
    upload.add_argument("--timeout", type=float, default=300,
                        help="with --wait: give up after this many seconds without a new "
                             "result (default 300)")
    upload.set_defaults(func=cmd_upload)

    back = sub.add_parser("backfill", help="queue the bucket's objects that lack a result")
    back.add_argument("--prefix", default="", help="only keys starting with this")
    which = back.add_mutually_exclusive_group()
    which.add_argument("--only-missing", action="store_true",
                       help="objects without a result (the default)")
    which.add_argument("--model-changed", action="store_true",
                       help="objects whose result is from another model or version than "
                            "IMAGEPIPE_MODEL's")
    back.add_argument("--rate", type=float, default=50,
                      help="messages per second at most, 0 for no limit (default 50)")
    back.add_argument("--dry-run", action="store_true", help="list what would be queued")
    back.add_argument("--lane", choices=LANES, default=BULK,
                      help="the queue to send to (default bulk)")
    back.set_defaults(func=cmd_backfill)

    results = sub.add_parser("results", help="list or export results")
    results.add_argument("--label", help="results whose top label this is, best score first")
    results.add_argument("--min-score", type=_score, help="top score at least this (0-1)")
    results.add_argument("--status", choices=("done", "failed", "pending"))
    results.add_argument("--format", choices=FORMATS, default="table")
    results.add_argument("--limit", type=_positive, help="at most this many (default all)")
    results.set_defaults(func=cmd_results)

    status = sub.add_parser("status", help="queue depths, results by status, live processors")
    status.add_argument("--json", action="store_true", help="as JSON")
    status.add_argument("--recent", type=float, default=120,
                        help="processors seen within this many seconds (default 120)")
    status.set_defaults(func=cmd_status)

    reindex = sub.add_parser(
        "reindex", help="once, after upgrading a table: move older results into the sharded "
        "feed and the pending/failed index (a scan)")
    reindex.set_defaults(func=cmd_reindex)

    dlq = sub.add_parser("dlq", help="the dead-letter queue")
    dlq_sub = dlq.add_subparsers(dest="dlq_command", required=True, metavar="ACTION")
    redrive = dlq_sub.add_parser("redrive", help="move dead-letter messages back to the queue")
    redrive.add_argument("--max", type=_positive, help="move at most this many")
    redrive.add_argument("--lane", choices=LANES,
                         help="only this lane's dead-letter queue (default both)")
    redrive.add_argument("--to", choices=LANES, default=BULK,
                         help="the lane to move them to (default bulk)")
    redrive.set_defaults(func=cmd_dlq_redrive)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imagepipe", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the whole pipeline locally (moto, processor, front)")
    run.add_argument("--endpoint-port", type=int, default=4566,
                     help="port of the local AWS endpoint (default 4566)")
    run.add_argument("--fresh", action="store_true",
                     help="wipe the data kept from earlier runs (IMAGEPIPE_LOCAL_DATA) first")
    run.set_defaults(func=cmd_run)

    proc = sub.add_parser("processor", help="run the processor daemon", add_help=False)
    proc.add_argument("rest", nargs=argparse.REMAINDER)
    proc.set_defaults(func=cmd_processor)

    web = sub.add_parser("web", help="run the web front under gunicorn")
    web.add_argument("--bind", help="host:port (default IMAGEPIPE_HOST:IMAGEPIPE_PORT)")
    web.add_argument("--workers", type=int, default=1,
                     help="gunicorn worker processes (default 1: each would count its own "
                          "metrics, and only one could serve them)")
    web.set_defaults(func=cmd_web)

    events = sub.add_parser("events", help="run the events server (GET /api/events) beside "
                            "the front")
    events.set_defaults(func=cmd_events)

    prov = sub.add_parser("provision", help="create the bucket, queues, table and notification")
    prov.set_defaults(func=cmd_provision)

    classify = sub.add_parser("classify", help="upload files as a browser would, print labels")
    classify.add_argument("files", nargs="+", metavar="FILE")
    classify.add_argument("--url", help="the web front (default: the one signed in to, "
                          "else http://IMAGEPIPE_HOST:PORT)")
    classify.add_argument("--timeout", type=float, default=120,
                          help="seconds to wait for each result (default 120)")
    classify.set_defaults(func=cmd_classify)

    login = sub.add_parser("login", help="sign in to the front; keeps a refresh token, "
                           "never the password")
    login.add_argument("username", nargs="?", metavar="USERNAME",
                       help="default: the one signed in last, else asked")
    login.add_argument("--url", help="the web front (default: the one signed in to last, "
                       "else http://IMAGEPIPE_HOST:PORT)")
    login.set_defaults(func=cmd_login)

    token = sub.add_parser("token", help="print a fresh access token of the kept sign-in "
                           "(for curl and scripts)")
    token.add_argument("--url", help="the web front (default: the one signed in to)")
    token.set_defaults(func=cmd_token)

    logout = sub.add_parser("logout", help="forget (and revoke) the kept sign-in")
    logout.set_defaults(func=cmd_logout)

    users = sub.add_parser("users", help="the people in the user pool (AWS credentials)")
    users_sub = users.add_subparsers(dest="users_command", required=True, metavar="ACTION")
    add = users_sub.add_parser("add", help="add a user, or set a new password for one; "
                               "prints the password once")
    add.add_argument("name", metavar="NAME")
    add.add_argument("--admin", action="store_true",
                     help="in the admins group: sees every image")
    add.set_defaults(func=cmd_users_add)
    listing = users_sub.add_parser("list", help="name, sub, admin, enabled")
    listing.set_defaults(func=cmd_users_list)

    dep = sub.add_parser("deploy", help="build the wheel, create or update the AWS stack, "
                         "print its outputs")
    dep.add_argument("--stack", required=True, help="stack name (lowercase, at most 25)")
    dep.add_argument("--parameter", "-p", action="append", default=[], metavar="KEY=VALUE",
                     help="a template parameter (repeatable); others keep their current value")
    dep.add_argument("--artifact-bucket",
                     help="bucket for the wheel and template (default "
                          "imagepipe-artifacts-ACCOUNT-REGION, created private if missing)")
    dep.add_argument("--refresh-ami", action="store_true",
                     help="pin the newest processor AMI (ProcessorImageId's parameter) instead "
                          "of keeping the stack's")
    dep.set_defaults(func=cmd_deploy)

    des = sub.add_parser("destroy", help="delete the AWS stack, keeping its images and results")
    des.add_argument("--stack", required=True, help="stack name")
    des.add_argument("--delete-data", action="store_true",
                     help="also delete the image bucket, the results table and the access logs")
    des.set_defaults(func=cmd_destroy)

    train = sub.add_parser("train", help="train your own classes on a folder of labelled images")
    train.add_argument("data", metavar="DIR", help="one sub-folder of images per class")
    train.add_argument("--output", "-o", required=True, metavar="FILE.keras",
                       help="the model to write; its labels go beside it as FILE.labels.txt")
    train.add_argument("--base", default="efficientnet_lite0",
                       help="the frozen ImageNet base (efficientnet_lite0, 1 or 2)")
    train.add_argument("--epochs", type=int, default=30)
    train.add_argument("--nested", action="store_true",
                       help="class folders sit in folders of their kinds (DIR/animal/cat/): "
                            "write NAME.parents.json so results get parents and categories")
    train.set_defaults(func=cmd_train)

    _add_bulk_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
