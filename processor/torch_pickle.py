"""Read a legacy (non-zip) ``torch.save`` state dict without importing torch."""

from __future__ import annotations

import collections
import logging
import os
import pickle
import struct
from dataclasses import dataclass
from typing import IO, Any

import numpy as np

logger = logging.getLogger(__name__)

# Written by torch.save as the first pickle of the legacy format.
LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001

# Only little-endian dtypes: the reader refuses big-endian files (see sys_info check).
_STORAGE_DTYPES: dict[str, np.dtype] = {
    "DoubleStorage": np.dtype("<f8"),
    "FloatStorage": np.dtype("<f4"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


@dataclass(frozen=True)
class _StorageType:
    """Stand-in for a ``torch.*Storage`` class named in the pickle."""

    name: str
    dtype: np.dtype


@dataclass(frozen=True)
class _StorageRef:
    """A storage announced through ``persistent_load``; its bytes follow the pickles."""

    key: str
    dtype: np.dtype
    numel: int


@dataclass(frozen=True)
class _TensorRef:
    """A tensor view on a storage, materialised once the storage bytes are read."""

    storage: _StorageRef
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor_v2(
    storage: Any,
    storage_offset: Any,
    size: Any,
    stride: Any,
    requires_grad: Any = False,
    backward_hooks: Any = None,
    metadata: Any = None,
) -> _TensorRef:
    """Record the arguments of ``torch._utils._rebuild_tensor_v2`` after validating them."""
    if not isinstance(storage, _StorageRef):
        raise ValueError("tensor does not reference a storage")
    if not _is_int_tuple(size) or not _is_int_tuple(stride) or len(size) != len(stride):
        raise ValueError(f"invalid tensor size {size!r} / stride {stride!r}")
    if not isinstance(storage_offset, int) or storage_offset < 0:
        raise ValueError(f"invalid storage offset {storage_offset!r}")
    if any(n < 0 for n in size) or any(s < 0 for s in stride):
        raise ValueError(f"negative tensor size {size!r} or stride {stride!r}")
    # as_strided does no bounds checking, so a hostile size/stride could read foreign memory.
    if all(n > 0 for n in size):
        last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
        if last >= storage.numel:
            raise ValueError(
                f"tensor of size {size} stride {stride} offset {storage_offset} "
                f"exceeds storage {storage.key} of {storage.numel} elements"
            )
    return _TensorRef(storage, storage_offset, tuple(size), tuple(stride))


def _is_int_tuple(value: Any) -> bool:
    return isinstance(value, tuple) and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    )


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals a state dict needs, never importing anything."""

    def __init__(self, file: IO[bytes]) -> None:
        super().__init__(file)
        self.storages: dict[str, _StorageRef] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor_v2
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name, _STORAGE_DTYPES[name])
        raise ValueError(f"forbidden global in torch pickle: {module}.{name}")

    def persistent_load(self, pid: Any) -> _StorageRef:
        # pid is ('storage', storage_type, key, location, numel[, view_metadata]).
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
            raise ValueError(f"unsupported persistent id {pid!r}")
        storage_type, key, _location, numel = pid[1:5]
        if len(pid) == 6 and pid[5] is not None:
            raise ValueError("storage views are not supported")
        if not isinstance(storage_type, _StorageType):
            raise ValueError(f"unsupported storage type {storage_type!r}")
        if not isinstance(key, str) or not isinstance(numel, int) or numel < 0:
            raise ValueError(f"invalid storage key {key!r} or size {numel!r}")
        ref = self.storages.get(key)
        if ref is None:
            ref = _StorageRef(key, storage_type.dtype, numel)
            self.storages[key] = ref
        elif ref.dtype != storage_type.dtype or ref.numel != numel:
            raise ValueError(f"storage {key} declared twice with different types")
        return ref


def _load_pickle(file: IO[bytes], what: str) -> tuple[Any, _RestrictedUnpickler]:
    unpickler = _RestrictedUnpickler(file)
    try:
        return unpickler.load(), unpickler
    except ValueError:
        raise
    except Exception as exc:
        # The unpickler can fail with many types on garbage input; callers only need ValueError.
        raise ValueError(f"cannot read {what}: {exc}") from exc


def _read_storages(file: IO[bytes], storages: dict[str, _StorageRef]) -> dict[str, np.ndarray]:
    keys, _ = _load_pickle(file, "storage key list")
    if not isinstance(keys, list) or sorted(keys) != sorted(storages):
        raise ValueError("storage key list does not match the tensors in the state dict")
    data: dict[str, np.ndarray] = {}
    for key in keys:
        ref = storages[key]
        header = file.read(8)
        if len(header) != 8:
            raise ValueError(f"truncated file: missing size of storage {key}")
        (count,) = struct.unpack("<q", header)
        if count != ref.numel:
            raise ValueError(f"storage {key} has {count} elements, expected {ref.numel}")
        nbytes = count * ref.dtype.itemsize
        raw = file.read(nbytes)
        if len(raw) != nbytes:
            raise ValueError(f"truncated file: storage {key} has {len(raw)} of {nbytes} bytes")
        data[key] = np.frombuffer(raw, dtype=ref.dtype)
    return data


def _materialise(tensor: _TensorRef, storages: dict[str, np.ndarray]) -> np.ndarray:
    buffer = storages[tensor.storage.key]
    itemsize = buffer.dtype.itemsize
    if any(n == 0 for n in tensor.size):
        return np.zeros(tensor.size, dtype=buffer.dtype)
    # Tensors saved from TF ports are permuted views (e.g. HWIO storage behind an OIHW tensor).
    view = np.lib.stride_tricks.as_strided(
        buffer[tensor.offset :],
        shape=tensor.size,
        strides=tuple(s * itemsize for s in tensor.stride),
        writeable=False,
    )
    return np.array(view, copy=True, order="C")


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Return the tensors of a legacy-format ``torch.save`` state dict as numpy arrays."""
    with open(path, "rb") as file:
        head = file.read(4)
        if head.startswith(b"PK"):
            raise ValueError(f"{path}: zip-format torch files are not supported, only legacy")
        file.seek(0)
        magic, _ = _load_pickle(file, "magic number")
        if magic != LEGACY_MAGIC_NUMBER:
            raise ValueError(f"{path}: not a legacy torch.save file (bad magic number)")
        protocol, _ = _load_pickle(file, "protocol version")
        if protocol != LEGACY_PROTOCOL_VERSION:
            raise ValueError(f"{path}: unsupported torch protocol version {protocol!r}")
        sys_info, _ = _load_pickle(file, "sys_info")
        if not isinstance(sys_info, dict) or not sys_info.get("little_endian", False):
            raise ValueError(f"{path}: only little-endian torch files are supported")
        state, unpickler = _load_pickle(file, "state dict")
        if not isinstance(state, dict):
            raise ValueError(f"{path}: top-level object is {type(state).__name__}, not a dict")
        storages = _read_storages(file, unpickler.storages)

    result: dict[str, np.ndarray] = {}
    for name, value in state.items():
        if not isinstance(name, str) or not isinstance(value, _TensorRef):
            raise ValueError(f"{path}: entry {name!r} is not a tensor")
        result[name] = _materialise(value, storages)
    logger.debug("read %d tensors from %s", len(result), path)
    return result
