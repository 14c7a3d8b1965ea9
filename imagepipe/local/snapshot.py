"""The local endpoint's data across restarts: S3 bodies as files, the rest in one snapshot.

moto keeps everything in memory and loses it when its server stops. Here, in the data folder
(`make run` uses IMAGEPIPE_LOCAL_DATA, by default ~/.local/share/imagepipe/local):

- objects/ holds each S3 object's body as a file, written once when the object is put
  (`keep_bodies_in`): images take disk, not the server's memory, and a snapshot never copies
  them;
- snapshot.pickle holds moto's S3, SQS, DynamoDB and Cognito state (buckets and their keys,
  queues and their messages, tables and their items, user pools and their users), written on
  stop (tmp file, fsync, rename: a crash leaves the previous one) and read on start.

A snapshot of another moto version is set aside, not read: moto's classes may have changed.
"""

from __future__ import annotations

import logging
import os
import pickle
import threading
import types
import uuid
from pathlib import Path
from typing import IO, Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from imagepipe.local.key_maps import set_aside

logger = logging.getLogger(__name__)

SERVICES = ("s3", "sqs", "dynamodb", "cognito-idp")
SNAPSHOT = "snapshot.pickle"
OBJECTS = "objects"
FORMAT = 1
_LOCK = type(threading.Lock())
_RLOCK = type(threading.RLock())


class DiskBody:
    """An S3 object's body in a file of its own, opened only while it is read or written.

    Stands in for the SpooledTemporaryFile moto keeps each body in; unlike one, it holds no
    open file between calls, so tens of thousands of objects need no more file descriptors.
    Closing it (moto does when an object is overwritten, deleted or collected) leaves the
    file: the snapshot may still name it; `sweep` removes the files no snapshot names.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.position = 0

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return DiskBody, (str(self.path),)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if whence == os.SEEK_SET:
            self.position = offset
        elif whence == os.SEEK_CUR:
            self.position += offset
        else:
            self.position = self._size() + offset
        return self.position

    def tell(self) -> int:
        return self.position

    def read(self, size: int = -1) -> bytes:
        try:
            with open(self.path, "rb") as body:
                body.seek(self.position)
                data = body.read(size)
        except FileNotFoundError:
            logger.warning("the body file %s is gone; reading it as empty", self.path)
            data = b""
        self.position += len(data)
        return data

    def write(self, data: bytes) -> int:
        with self._open() as body:
            body.seek(self.position)
            written = body.write(data)
        self.position += written
        return written

    def truncate(self, size: int | None = None) -> int:
        size = self.position if size is None else size
        with self._open() as body:
            body.truncate(size)
        return size

    def close(self) -> None:
        """Nothing to close: no file stays open."""

    def _open(self) -> IO[bytes]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return open(self.path, "r+b" if self.path.exists() else "w+b")

    def _size(self) -> int:
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0


def keep_bodies_in(directory: Path) -> None:
    """Make moto keep every S3 object's body in a file under `directory`."""
    import tempfile

    from moto.s3 import models

    objects = directory / OBJECTS
    objects.mkdir(parents=True, exist_ok=True)

    def body(*args: Any, **kwargs: Any) -> DiskBody:
        return DiskBody(objects / uuid.uuid4().hex)

    # moto.s3.models reaches tempfile only for the bodies' SpooledTemporaryFile.
    names = {name: getattr(tempfile, name) for name in dir(tempfile) if not name.startswith("__")}
    names["SpooledTemporaryFile"] = body
    models.tempfile = types.SimpleNamespace(**names)  # type: ignore[attr-defined]


def _backends() -> dict[str, Any]:
    from moto.backends import get_backend

    return {service: get_backend(service) for service in SERVICES}  # type: ignore[call-overload]


class _Pickler(pickle.Pickler):
    """Records the body files the snapshot names, so that the others can be removed."""

    def __init__(self, file: IO[bytes]) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.bodies: set[Path] = set()

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, DiskBody):
            self.bodies.add(obj.path)
        elif isinstance(getattr(obj, "_value_buffer", None), DiskBody):
            # An S3 object: its body file by name, where moto's own pickling copies the bytes.
            state = {k: v for k, v in obj.__dict__.items() if k != "lock"}
            return _new_object, (type(obj),), state, None, None, _set_object_state
        # moto guards some models with locks: a restored model gets a new, free one.
        elif isinstance(obj, _LOCK):
            return threading.Lock, ()
        elif isinstance(obj, _RLOCK):
            return threading.RLock, ()
        elif isinstance(obj, rsa.RSAPrivateKey):
            # A user pool's signing key: kept, so that tokens issued before a restart verify.
            return _private_key, (obj.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption()),)
        return NotImplemented


def _new_object(cls: type) -> Any:
    return cls.__new__(cls)


def _set_object_state(obj: Any, state: dict[str, Any]) -> None:
    obj.__dict__.update(state)
    obj.lock = threading.Lock()


def _private_key(pem: bytes) -> Any:
    return serialization.load_pem_private_key(pem, password=None)


class _Unpickler(pickle.Unpickler):
    """Records the body files the snapshot names, as it makes them."""

    def __init__(self, file: IO[bytes]) -> None:
        super().__init__(file)
        self.bodies: set[Path] = set()

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == (__name__, "DiskBody"):
            def body(path: str) -> DiskBody:
                made = DiskBody(path)
                self.bodies.add(made.path)
                return made
            return body
        # Our own file, in the user's own folder: the classes are moto's and ours.
        return super().find_class(module, name)


def save(directory: Path) -> Path:
    """Write moto's state to directory/snapshot.pickle (atomically); return its path."""
    import moto
    from moto.s3.models import s3_backends

    state = {
        "format": FORMAT,
        "moto": moto.__version__,
        "backends": {service: {account: dict(regions) for account, regions in backends.items()}
                     for service, backends in _backends().items()},
        "bucket_accounts": dict(s3_backends.bucket_accounts),
    }
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / SNAPSHOT
    temporary = path.with_name(path.name + ".tmp")
    tables = [table for regions in state["backends"]["dynamodb"].values()
              for backend in regions.values() for table in backend.tables.values()]
    with open(temporary, "wb") as out, set_aside(tables):
        pickler = _Pickler(out)
        pickler.dump(state)
        out.flush()
        os.fsync(out.fileno())
    temporary.replace(path)
    sweep(directory, pickler.bodies)
    return path


def restore(directory: Path) -> bool:
    """Load the snapshot in `directory` into moto, if there is one of this moto; True if so."""
    import moto
    from moto.s3.models import s3_backends

    path = directory / SNAPSHOT
    if not path.exists():
        sweep(directory, set())
        return False
    try:
        with open(path, "rb") as source:
            unpickler = _Unpickler(source)
            state = unpickler.load()
    except Exception as exc:  # a truncated or foreign file must not stop the stack
        return _set_aside(path, f"it could not be read ({exc})")
    if state.get("format") != FORMAT or state.get("moto") != moto.__version__:
        return _set_aside(path, f"it was written by moto {state.get('moto')}, this is "
                                f"moto {moto.__version__}")
    backends = _backends()
    for service, accounts in state["backends"].items():
        for account, regions in accounts.items():
            for region, backend in regions.items():
                backends[service][account][region] = backend
    s3_backends.bucket_accounts.update(state["bucket_accounts"])
    sweep(directory, unpickler.bodies)
    return True


def _set_aside(path: Path, why: str) -> bool:
    aside = path.with_name(path.name + ".old")
    path.replace(aside)
    logger.warning("starting with no data: the snapshot %s was set aside as %s because %s",
                   path, aside.name, why)
    return False


def sweep(directory: Path, keep: set[Path]) -> int:
    """Remove the body files under directory/objects that `keep` does not name."""
    removed = 0
    objects = directory / OBJECTS
    if not objects.is_dir():
        return 0
    for path in objects.iterdir():
        if path not in keep:
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def wipe(directory: Path) -> None:
    """Forget the local data: the snapshot and every body file."""
    (directory / SNAPSHOT).unlink(missing_ok=True)
    sweep(directory, set())
