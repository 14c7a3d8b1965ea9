"""The `imagepipe` command: run the stack or one service, provision, classify, deploy to AWS."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from imagepipe.core.logs import configure_logging
from imagepipe.core.settings import Settings, SettingsError

EXIT_USAGE = 2


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except SettingsError as exc:
        print(f"imagepipe: {exc}", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def cmd_run(args: argparse.Namespace) -> int:
    from imagepipe.devstack import StackError, run_local

    settings = _settings()
    configure_logging(settings.log_level, "imagepipe")
    try:
        return run_local(settings, args.endpoint_port)
    except StackError as exc:
        print(f"imagepipe run: {exc}", file=sys.stderr)
        return 1


def cmd_processor(args: argparse.Namespace) -> int:
    from processor.__main__ import main

    return main(args.rest)


def cmd_web(args: argparse.Namespace) -> int:
    settings = _settings()
    bind = args.bind or f"{settings.host}:{settings.port}"
    argv = [sys.executable, "-m", "gunicorn", "--bind", bind, "--workers", str(args.workers),
            "--worker-class", "gthread", "--threads", "8", "--access-logfile", "-",
            "imagepipe.app:create_app()"]
    os.execv(sys.executable, argv)
    return 0  # not reached


def cmd_provision(args: argparse.Namespace) -> int:
    from imagepipe.core.aws import make_clients
    from imagepipe.core.provision import provision

    settings = _settings()
    configure_logging(settings.log_level, "imagepipe")
    resources = provision(settings, make_clients(settings))
    print(f"bucket {resources.bucket}\nqueue {resources.queue_url}\n"
          f"dead-letter queue {resources.dead_letter_queue_url}\ntable {resources.table}")
    return 0


def cmd_classify(args: argparse.Namespace) -> int:
    from imagepipe.classify import classify_files

    settings = _settings()
    url = args.url or f"http://{settings.host}:{settings.port}"
    return classify_files([Path(p) for p in args.files], url, timeout=args.timeout)


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

    from imagepipe.deploy import DeployError, deploy, make_deploy_clients

    settings = _settings()
    configure_logging(settings.log_level, "imagepipe")
    parameters = _parameters(args.parameter)
    try:
        result = deploy(args.stack, make_deploy_clients(settings), parameters=parameters,
                        artifact_bucket=args.artifact_bucket)
    except (DeployError, ClientError, BotoCoreError) as exc:
        print(f"imagepipe deploy: {exc}", file=sys.stderr)
        return 1
    print(f"stack {result.stack} {result.action}")
    for key, value in sorted(result.outputs.items()):
        print(f"{key:<24} {value}")
    return 0


def cmd_destroy(args: argparse.Namespace) -> int:
    from botocore.exceptions import BotoCoreError, ClientError

    from imagepipe.deploy import DeployError, destroy, make_deploy_clients

    settings = _settings()
    configure_logging(settings.log_level, "imagepipe")
    try:
        destroy(args.stack, make_deploy_clients(settings))
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
                                  epochs=args.epochs, cache_dir=settings.cache_dir / "models")
    except (ValueError, OSError) as exc:
        print(f"imagepipe train: {exc}", file=sys.stderr)
        return 1
    validation = ("n/a" if report.validation_accuracy is None
                  else f"{report.validation_accuracy:.3f}")
    print(f"classes {', '.join(report.labels)}\nimages {report.images} "
          f"(skipped {report.skipped})\ntrain accuracy {report.train_accuracy:.3f}\n"
          f"validation accuracy {validation}\nmodel {report.model_path}\n"
          f"labels {report.labels_path}\ntook {report.seconds:.1f} s\n"
          f"serve it with IMAGEPIPE_MODEL={report.model_path.resolve()}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imagepipe", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the whole pipeline locally (moto, processor, front)")
    run.add_argument("--endpoint-port", type=int, default=4566,
                     help="port of the local AWS endpoint (default 4566)")
    run.set_defaults(func=cmd_run)

    proc = sub.add_parser("processor", help="run the processor daemon", add_help=False)
    proc.add_argument("rest", nargs=argparse.REMAINDER)
    proc.set_defaults(func=cmd_processor)

    web = sub.add_parser("web", help="run the web front under gunicorn")
    web.add_argument("--bind", help="host:port (default IMAGEPIPE_HOST:IMAGEPIPE_PORT)")
    web.add_argument("--workers", type=int, default=2)
    web.set_defaults(func=cmd_web)

    prov = sub.add_parser("provision", help="create the bucket, queues, table and notification")
    prov.set_defaults(func=cmd_provision)

    classify = sub.add_parser("classify", help="upload files as a browser would, print labels")
    classify.add_argument("files", nargs="+", metavar="FILE")
    classify.add_argument("--url", help="the web front (default http://IMAGEPIPE_HOST:PORT)")
    classify.add_argument("--timeout", type=float, default=120,
                          help="seconds to wait for each result (default 120)")
    classify.set_defaults(func=cmd_classify)

    dep = sub.add_parser("deploy", help="build the wheel, create or update the AWS stack, "
                         "print its outputs")
    dep.add_argument("--stack", required=True, help="stack name (lowercase, at most 25)")
    dep.add_argument("--parameter", "-p", action="append", default=[], metavar="KEY=VALUE",
                     help="a template parameter (repeatable); others keep their current value")
    dep.add_argument("--artifact-bucket",
                     help="bucket for the wheel and template (default "
                          "imagepipe-artifacts-ACCOUNT-REGION, created private if missing)")
    dep.set_defaults(func=cmd_deploy)

    des = sub.add_parser("destroy", help="empty the image bucket and delete the AWS stack")
    des.add_argument("--stack", required=True, help="stack name")
    des.set_defaults(func=cmd_destroy)

    train = sub.add_parser("train", help="train your own classes on a folder of labelled images")
    train.add_argument("data", metavar="DIR", help="one sub-folder of images per class")
    train.add_argument("--output", "-o", required=True, metavar="FILE.keras",
                       help="the model to write; its labels go beside it as FILE.labels.txt")
    train.add_argument("--base", default="efficientnet_lite0",
                       help="the frozen ImageNet base (efficientnet_lite0, 1 or 2)")
    train.add_argument("--epochs", type=int, default=30)
    train.set_defaults(func=cmd_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
