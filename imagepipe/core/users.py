"""The user pool: created or found by name, and the people in it.

`provision` makes the pool, its public app client and the admins group on the local endpoint
(the CloudFormation stack makes the same on AWS); `imagepipe users` and `make run` add people.
Users are created by an operator only: there is no self sign-up.
"""

from __future__ import annotations

import logging
import secrets
import string
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from imagepipe.core.aws import error_code
from imagepipe.core.identity import ADMINS_GROUP
from imagepipe.core.settings import Settings

logger = logging.getLogger(__name__)

APP_CLIENT_NAME = "imagepipe-web"
# The page and the CLI are public clients: no secret, password sign-in, refresh tokens.
AUTH_FLOWS = ("ALLOW_USER_PASSWORD_AUTH", "ALLOW_USER_SRP_AUTH", "ALLOW_REFRESH_TOKEN_AUTH")
PASSWORD_POLICY = {"MinimumLength": 12, "RequireUppercase": True, "RequireLowercase": True,
                   "RequireNumbers": True, "RequireSymbols": False}


@dataclass(frozen=True)
class UserPool:
    """The pool the front accepts tokens of, and the app client people sign in with."""

    pool_id: str
    client_id: str


@dataclass(frozen=True)
class User:
    username: str
    sub: str
    admin: bool
    enabled: bool = True


def ensure_user_pool(cognito: Any, settings: Settings) -> UserPool:
    """The pool the settings name (by ID, or else by name, created if missing), with its
    app client and admins group; safe to run again."""
    pool_id = settings.user_pool_id or _find_pool(cognito, settings.user_pool_name)
    if pool_id is None:
        pool_id = cognito.create_user_pool(
            PoolName=settings.user_pool_name,
            Policies={"PasswordPolicy": PASSWORD_POLICY},
            AdminCreateUserConfig={"AllowAdminCreateUserOnly": True},
            UsernameConfiguration={"CaseSensitive": False},
        )["UserPool"]["Id"]
        logger.info("created user pool %s (%s)", settings.user_pool_name, pool_id)
    client_id = settings.user_pool_client_id or _find_client(cognito, pool_id)
    if client_id is None:
        client_id = cognito.create_user_pool_client(
            UserPoolId=pool_id, ClientName=APP_CLIENT_NAME, GenerateSecret=False,
            ExplicitAuthFlows=list(AUTH_FLOWS), PreventUserExistenceErrors="ENABLED",
            EnableTokenRevocation=True,
        )["UserPoolClient"]["ClientId"]
        logger.info("created app client %s", client_id)
    try:
        cognito.create_group(UserPoolId=pool_id, GroupName=ADMINS_GROUP,
                             Description="see and manage every image")
    except ClientError as exc:
        if error_code(exc) != "GroupExistsException":
            raise
    return UserPool(pool_id, client_id)


def find_user_pool(cognito: Any, settings: Settings) -> UserPool | None:
    """The pool the settings name, by ID or else by name, without creating anything."""
    pool_id = settings.user_pool_id or _find_pool(cognito, settings.user_pool_name)
    if pool_id is None:
        return None
    client_id = settings.user_pool_client_id or _find_client(cognito, pool_id)
    return UserPool(pool_id, client_id) if client_id else None


def _find_pool(cognito: Any, name: str) -> str | None:
    for page in cognito.get_paginator("list_user_pools").paginate(MaxResults=60):
        for pool in page["UserPools"]:
            if pool["Name"] == name:
                return pool["Id"]
    return None


def _find_client(cognito: Any, pool_id: str) -> str | None:
    for page in cognito.get_paginator("list_user_pool_clients").paginate(UserPoolId=pool_id,
                                                                         MaxResults=60):
        for client in page["UserPoolClients"]:
            if client["ClientName"] == APP_CLIENT_NAME:
                return client["ClientId"]
    return None


def new_password() -> str:
    """A password the pool's policy accepts: 20 characters, every class present."""
    alphabet = string.ascii_letters + string.digits
    while True:
        password = "".join(secrets.choice(alphabet) for _ in range(20))
        if (any(c.islower() for c in password) and any(c.isupper() for c in password)
                and any(c.isdigit() for c in password)):
            return password


def add_user(cognito: Any, pool_id: str, username: str, admin: bool = False,
             password: str | None = None) -> tuple[User, str]:
    """Create a user (or reset an existing one's password) with a permanent password;
    the user and the password, which is shown once and kept nowhere."""
    password = password or new_password()
    try:
        cognito.admin_create_user(UserPoolId=pool_id, Username=username,
                                  MessageAction="SUPPRESS")
    except ClientError as exc:
        if error_code(exc) != "UsernameExistsException":
            raise
    cognito.admin_set_user_password(UserPoolId=pool_id, Username=username, Password=password,
                                    Permanent=True)
    if admin:
        cognito.admin_add_user_to_group(UserPoolId=pool_id, Username=username,
                                        GroupName=ADMINS_GROUP)
    return get_user(cognito, pool_id, username), password


def get_user(cognito: Any, pool_id: str, username: str) -> User:
    """One user, with their `sub` (the owner their images carry) and whether they are admin."""
    found = cognito.admin_get_user(UserPoolId=pool_id, Username=username)
    attributes = {a["Name"]: a["Value"] for a in found.get("UserAttributes", [])}
    return User(found["Username"], attributes.get("sub", ""), _is_admin(cognito, pool_id,
                                                                          found["Username"]),
                found.get("Enabled", True))


def list_users(cognito: Any, pool_id: str) -> list[User]:
    """Everyone in the pool, by name."""
    admins = {u["Username"] for page in cognito.get_paginator("list_users_in_group").paginate(
        UserPoolId=pool_id, GroupName=ADMINS_GROUP) for u in page["Users"]}
    users = []
    for page in cognito.get_paginator("list_users").paginate(UserPoolId=pool_id):
        for user in page["Users"]:
            attributes = {a["Name"]: a["Value"] for a in user.get("Attributes", [])}
            users.append(User(user["Username"], attributes.get("sub", ""),
                              user["Username"] in admins, user.get("Enabled", True)))
    return sorted(users, key=lambda u: u.username)


def _is_admin(cognito: Any, pool_id: str, username: str) -> bool:
    groups = cognito.admin_list_groups_for_user(UserPoolId=pool_id, Username=username)
    return any(g["GroupName"] == ADMINS_GROUP for g in groups.get("Groups", []))
