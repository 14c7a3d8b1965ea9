"""Which AWS the command line talks to: real AWS, an endpoint it was given, or `make run`'s stack.

In order:
1. `AWS_ENDPOINT_URL` set: that endpoint, with credentials if there are any, else moto's.
2. Credentials from the environment or the user's AWS config: AWS, as boto3 would.
3. A local stack that `make run` recorded and that answers: that stack, said once on stderr.
4. Credentials from an instance or container role: AWS.
Otherwise one line says what to do. The role providers come last because asking for them
reaches the network (the instance metadata address), which a laptop running the local
stack should not.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TextIO

import boto3
import botocore.session
from botocore.credentials import CredentialResolver

from imagepipe.core.settings import Settings
from imagepipe.local.state import LOCAL_REGION, local_session, running_stack

# The credential providers that ask the network (ECS task role, EC2 instance role).
_ROLE_PROVIDERS = frozenset({"container-role", "iam-role"})

NO_TARGET = (
    "no AWS credentials and no local stack: start the local one with `make run` (then run "
    "this again), or give AWS credentials (AWS_PROFILE, `aws configure`, or an instance role)"
)


class NoTarget(RuntimeError):
    """Neither AWS credentials nor a running local stack were found."""


def aws_target(settings: Settings, environ: Mapping[str, str] | None = None,
               err: TextIO | None = None) -> tuple[Settings, boto3.session.Session]:
    """The settings and the boto3 session a command uses."""
    environ = os.environ if environ is None else environ
    core = botocore.session.Session()
    if settings.endpoint_url:
        found = _credentials(core, with_roles=False)
        return settings, (boto3.session.Session(botocore_session=core) if found
                          else local_session())
    if _credentials(core, with_roles=False):
        return settings, boto3.session.Session(botocore_session=core)
    stack = running_stack(environ)
    if stack is not None:
        # The stack's own settings (bucket, queue, table), unless this shell sets its own.
        merged = {"AWS_DEFAULT_REGION": LOCAL_REGION, **stack.environ,
                  **{k: v for k, v in environ.items() if k.startswith("IMAGEPIPE_")},
                  "AWS_ENDPOINT_URL": stack.endpoint_url}
        if err is not None:
            print(f"imagepipe: no AWS credentials; using the local stack at "
                  f"{stack.endpoint_url} that `make run` started", file=err)
        return Settings.from_env(merged), local_session()
    if _credentials(core, with_roles=True):
        return settings, boto3.session.Session(botocore_session=core)
    raise NoTarget(NO_TARGET)


def _credentials(core: botocore.session.Session, with_roles: bool) -> bool:
    resolver = core.get_component("credential_provider")
    if not with_roles:
        resolver = CredentialResolver(
            [p for p in resolver.providers if p.METHOD not in _ROLE_PROVIDERS])
    return resolver.load_credentials() is not None

