"""What `imagepipe login` keeps: the refresh token and where it signs in, never the password.

The file is `$XDG_CONFIG_HOME/imagepipe/credentials.json` (by default
`~/.config/imagepipe/credentials.json`), mode 0600 in a folder of mode 0700: the refresh token
signs its holder in for as long as the pool lets it live (30 days on AWS).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path

FILE_NAME = "credentials.json"


@dataclass(frozen=True)
class SavedLogin:
    """A signed-in user of one front: enough to get fresh access tokens without a password."""

    front: str
    region: str
    user_pool_id: str
    client_id: str
    endpoint: str | None
    username: str
    refresh_token: str


def login_file(environ: Mapping[str, str] | None = None) -> Path:
    """Where the sign-in is kept."""
    environ = os.environ if environ is None else environ
    base = environ.get("XDG_CONFIG_HOME") or ""
    if base:
        root = Path(base)
    else:
        home = environ.get("HOME")
        root = (Path(home) if home else Path.home()) / ".config"
    return root / "imagepipe" / FILE_NAME


def save_login(login: SavedLogin, environ: Mapping[str, str] | None = None) -> Path:
    """Write the sign-in, readable by its owner only, replacing any earlier one."""
    path = login_file(environ)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    # mkdir's mode is masked by the umask and ignored for a folder that exists already.
    path.parent.chmod(0o700)
    temporary = path.with_name(f".{FILE_NAME}.{os.getpid()}.tmp")
    # Created 0600 from the start, so the token is never readable by others, not even briefly.
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as out:
            json.dump(asdict(login), out, indent=2)
        temporary.replace(path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        raise
    return path


def load_login(environ: Mapping[str, str] | None = None) -> SavedLogin | None:
    """The kept sign-in; None when there is none, or it is unreadable (sign in again)."""
    try:
        body = json.loads(login_file(environ).read_text())
        values = {f.name: body[f.name] for f in fields(SavedLogin)}
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not all(isinstance(v, str) for k, v in values.items() if k != "endpoint"):
        return None
    return SavedLogin(**values)


def forget_login(environ: Mapping[str, str] | None = None) -> bool:
    """Remove the kept sign-in; whether there was one."""
    try:
        login_file(environ).unlink()
    except FileNotFoundError:
        return False
    return True
