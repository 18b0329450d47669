"""Read pickles and ``torch.save`` archives without running any code from them.

The DyWeight release ships its coefficients as Python pickles written with EDM's ``torch_utils.persistence``
helpers (``network-snapshot-*.pkl``) and as ``torch.save`` archives (FLUX). An ordinary ``pickle.load``
of such a file can run arbitrary code: EDM's ``_reconstruct_persistent_obj`` even ``exec``s the Python
source embedded in the file. This module never does that:

* plain pickles go through :class:`RestrictedUnpickler`, whose ``find_class`` hands out only our own
  inert rebuilders for tensors (``torch._utils._rebuild_tensor_v2``/``_rebuild_parameter``, storages via
  ``torch.storage._load_from_bytes`` read back with ``torch.load(weights_only=True)``), numpy arrays and
  scalars, ``collections.OrderedDict`` and a few builtin containers. Everything else is refused with
  :class:`UnsafePickleError`;
* EDM's ``torch_utils.persistence._reconstruct_persistent_obj`` is replaced by a function that returns a
  :class:`PersistentRecord` (the recorded class name and state dictionary). The embedded ``module_src``
  is dropped, never compiled or run;
* the release's loss objects refer to its sampler functions (``solvers.heun_sampler`` …) as plain
  attributes. Such references become inert :class:`ExternalReference` values (a name, nothing more);
  anything that tries to call or instantiate one is refused;
* ``torch.save`` zip archives (and legacy ``torch.save`` files) are read with
  ``torch.load(weights_only=True)`` — torch's own restricted unpickler — whose refusal is re-raised as
  :class:`UnsafePickleError`.
"""

from __future__ import annotations

import _compat_pickle
import collections
import dataclasses
import io
import math
import pickle
import re
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

__all__ = ["UnsafePickleError", "PersistentRecord", "ExternalReference", "RestrictedUnpickler",
           "safe_loads", "load_release_object"]

_ZIP_MAGIC = b"PK\x03\x04"
_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # the first object of a legacy (non-zip) torch.save file
_SAMPLER_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*_sampler")
_NUMPY_MULTIARRAY = ("numpy.core.multiarray", "numpy._core.multiarray")
_NUMPY_NUMERIC = ("numpy.core.numeric", "numpy._core.numeric")


class UnsafePickleError(ValueError):
    """A file that cannot be read safely (it asks to run code, or is not a readable pickle)."""

    def __init__(self, source, problem: str):
        self.source = str(source)
        super().__init__(f"'{self.source}': {problem}")


@dataclasses.dataclass
class PersistentRecord:
    """What EDM's ``persistence`` recorded for one object: its class name and state dictionary.

    The module source the file carries is deliberately not kept (it is never run).
    """

    class_name: str
    state: dict
    module_name: Optional[str] = None
    version: Any = None


class ExternalReference:
    """An inert stand-in for a function the file names (e.g. ``solvers.heun_sampler``); never callable."""

    __slots__ = ("module", "name")

    def __init__(self, module: str, name: str):
        self.module, self.name = module, name

    @property
    def qualified_name(self) -> str:
        return f"{self.module}.{self.name}"

    def __call__(self, *args, **kwargs):
        raise pickle.UnpicklingError(
            f"the file tries to call `{self.qualified_name}`; DyWeight only reads data from release files")

    def __setstate__(self, state):
        raise pickle.UnpicklingError(f"the file tries to modify `{self.qualified_name}`")

    def __reduce__(self):
        raise TypeError("an ExternalReference is not meant to be pickled again")

    def __repr__(self) -> str:
        return f"<reference to {self.qualified_name}>"

    def __eq__(self, other):
        return isinstance(other, ExternalReference) and other.qualified_name == self.qualified_name

    def __hash__(self):
        return hash(self.qualified_name)


class _PlainDict(dict):
    """What ``dnnlib.EasyDict`` becomes: a plain dict (attribute access is not needed)."""


# --- inert rebuilders handed out by find_class ---------------------------------------------------------

def _refuse(what: str):
    raise pickle.UnpicklingError(what)


def _load_storage_from_bytes(data):
    """``torch.storage._load_from_bytes``: the bytes of a ``torch.save``, read with ``weights_only=True``."""
    if not isinstance(data, (bytes, bytearray)):
        _refuse("a tensor storage must be given as bytes")
    storage = torch.load(io.BytesIO(bytes(data)), weights_only=True, map_location="cpu")
    if not isinstance(storage, (torch.TypedStorage, torch.UntypedStorage)):
        _refuse(f"expected a tensor storage, found {type(storage).__name__}")
    return storage


def _int_tuple(value, what: str) -> tuple:
    if not isinstance(value, (tuple, list, torch.Size)) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in value):
        _refuse(f"a tensor's {what} must be a tuple of integers")
    return tuple(value)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    """``torch._utils._rebuild_tensor_v2`` without hooks, metadata or autograd state, bounds-checked.

    torch itself does not check that size/stride stay inside the storage (a crafted file could read
    arbitrary memory), so every element the view can reach must lie inside the storage.
    """
    if not isinstance(storage, torch.TypedStorage):
        _refuse("a tensor must be rebuilt from a typed tensor storage")
    if not isinstance(storage_offset, int) or isinstance(storage_offset, bool):
        _refuse("a tensor's storage offset must be an integer")
    size, stride = _int_tuple(size, "size"), _int_tuple(stride, "stride")
    if len(size) != len(stride) or storage_offset < 0 or any(v < 0 for v in size + stride):
        _refuse("a tensor's size, stride and offset must be non-negative and of matching length")
    if all(size):
        last = storage_offset + sum((n - 1) * step for n, step in zip(size, stride))
        if last >= storage._size():  # _size(): the element count, without TypedStorage's deprecation warning
            _refuse(f"a tensor of size {size} reaches past the end of its storage ({storage._size()} elements)")
    return torch._utils._rebuild_tensor(storage, storage_offset, size, stride).detach()


def _rebuild_tensor(storage, storage_offset, size, stride):
    return _rebuild_tensor_v2(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *extra):
    """``torch._utils._rebuild_parameter(_with_state)``: the plain tensor (hooks and state ignored)."""
    if not isinstance(data, torch.Tensor):
        _refuse("a parameter must wrap a tensor")
    return data.detach()


def _torch_size(values=()):
    return torch.Size(_int_tuple(values, "size"))


def _check_dtype(dtype) -> np.dtype:
    if not isinstance(dtype, np.dtype):
        _refuse("a numpy array needs a numpy dtype")
    if dtype.hasobject:
        _refuse("numpy arrays of Python objects are not read")
    return dtype


def _numpy_dtype(obj, align=False, copy=False):
    if not isinstance(obj, str):
        _refuse("a numpy dtype must be named by a string")
    dtype = np.dtype(obj, align=bool(align), copy=bool(copy))
    return _check_dtype(dtype)


def _numpy_reconstruct(subtype, shape, dtype):
    """``numpy.core.multiarray._reconstruct``: an empty ndarray that the following BUILD fills."""
    if subtype is not np.ndarray:
        _refuse("only plain numpy arrays are read")
    if math.prod(_int_tuple(shape, "shape")) != 0:
        _refuse("numpy's array placeholder must be empty (its data comes with the array's state)")
    return np.ndarray.__new__(np.ndarray, (0,), np.uint8)


def _numpy_scalar(dtype, data=None):
    dtype = _check_dtype(dtype)
    if not isinstance(data, (bytes, bytearray)) or len(data) != dtype.itemsize:
        _refuse("a numpy scalar must be given as raw bytes of its dtype's size")
    return np.frombuffer(bytes(data), dtype=dtype)[0].copy()


def _numpy_frombuffer(buffer, dtype, shape, order):
    dtype = _check_dtype(dtype)
    if not isinstance(buffer, (bytes, bytearray, memoryview)) or order not in ("C", "F"):
        _refuse("a numpy buffer must be raw bytes in C or F order")
    return np.frombuffer(bytes(buffer), dtype=dtype).reshape(_int_tuple(shape, "shape"), order=order).copy()


def _codecs_encode(text, encoding="utf-8"):
    """``_codecs.encode``, which protocol-2 pickles use for bytes."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        _refuse("only latin-1 encoded bytes are read")
    return text.encode("latin1")


def _reconstruct_persistent_obj(meta):
    """Stand-in for EDM's ``torch_utils.persistence._reconstruct_persistent_obj``: no ``exec``, ever.

    Returns the recorded class name and state dictionary; ``meta['module_src']`` is dropped unread.
    """
    if not isinstance(meta, dict):
        _refuse("an EDM persistent object must be described by a dictionary")
    if meta.get("type") != "class":
        _refuse(f"unknown EDM persistent object type {meta.get('type')!r}")
    class_name = meta.get("class_name")
    if not isinstance(class_name, str):
        _refuse("an EDM persistent object must name its class")
    state = meta.get("state")
    if state is None:
        state = {}
    if not isinstance(state, dict):
        _refuse(f"the state of the EDM persistent object '{class_name}' is not a dictionary")
    module_name = meta.get("module_name")
    return PersistentRecord(class_name=class_name, state=dict(state),
                            module_name=module_name if isinstance(module_name, str) else None,
                            version=meta.get("version"))


def _allowed_globals() -> dict:
    allowed = {
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
        ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
        ("torch.storage", "_load_from_bytes"): _load_storage_from_bytes,
        ("torch", "Size"): _torch_size,
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("builtins", "set"): set,
        ("builtins", "frozenset"): frozenset,
        ("builtins", "bytearray"): bytearray,
        ("builtins", "complex"): complex,
        ("_codecs", "encode"): _codecs_encode,
        ("numpy", "dtype"): _numpy_dtype,
        ("numpy", "ndarray"): np.ndarray,
        ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
        ("dnnlib.util", "EasyDict"): _PlainDict,
        ("dnnlib", "EasyDict"): _PlainDict,
    }
    for module in _NUMPY_MULTIARRAY:
        allowed[(module, "_reconstruct")] = _numpy_reconstruct
        allowed[(module, "scalar")] = _numpy_scalar
    for module in _NUMPY_NUMERIC:
        allowed[(module, "_frombuffer")] = _numpy_frombuffer
    return allowed


_ALLOWED = _allowed_globals()


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds tensors, arrays, plain containers and scalars — and nothing else."""

    def find_class(self, module, name):
        # Python 2 names (``__builtin__.set`` …) that protocol 0–2 pickles use, as pickle's fix_imports maps them
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        found = _ALLOWED.get((module, name))
        if found is not None:
            return found
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if module == "solvers" and _SAMPLER_NAME.fullmatch(name):
            return ExternalReference(module, name)  # the release's loss object names its samplers
        raise pickle.UnpicklingError(f"the file refers to `{module}.{name}`")

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("the file uses persistent ids (is it a torch.save archive?)")


def _explain(source, error: BaseException) -> UnsafePickleError:
    return UnsafePickleError(
        source,
        f"refused to load it ({error}). DyWeight reads only tensors, arrays, plain containers and numbers "
        "from release files and never runs code from them; this file is not a DyWeight release file, or it "
        "has been tampered with")


def _check_plain(value, source, depth: int = 0) -> None:
    """Refuse object arrays or anything else that is not plain data in the loaded structure."""
    if depth > 64:
        raise UnsafePickleError(source, "the data is nested too deeply")
    if isinstance(value, (str, bytes, bytearray, int, float, complex, bool, type(None), torch.dtype,
                          torch.Tensor, ExternalReference, np.generic)):
        return
    if isinstance(value, np.ndarray):
        if value.dtype.hasobject:
            raise UnsafePickleError(source, "refused to load it: numpy arrays of Python objects are not read")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            _check_plain(key, source, depth + 1)
            _check_plain(item, source, depth + 1)
        return
    if isinstance(value, (list, tuple, set, frozenset)):
        for item in value:
            _check_plain(item, source, depth + 1)
        return
    if isinstance(value, PersistentRecord):
        _check_plain(value.state, source, depth + 1)
        return
    raise UnsafePickleError(source, f"refused to load it: unexpected {type(value).__name__} object")


def safe_loads(data: bytes, source="<bytes>") -> Any:
    """Unpickle ``data`` with :class:`RestrictedUnpickler`; :class:`UnsafePickleError` for anything else."""
    try:
        value = RestrictedUnpickler(io.BytesIO(data)).load()
    except UnsafePickleError:
        raise
    except Exception as error:  # UnpicklingError, and whatever a malformed stream raises
        raise _explain(source, error) from None
    _check_plain(value, source)
    return value


def _torch_load(data: bytes, source) -> Any:
    try:
        value = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UnsafePickleError(
            source,
            f"refused to load this torch.save archive: torch's safe loader (weights_only=True) rejected it "
            f"({first_line}). DyWeight never runs code from release files; this is not a DyWeight release "
            "file, or it has been tampered with") from None
    except Exception as error:
        raise UnsafePickleError(source, f"could not read this torch.save archive ({error})") from None
    _check_plain(value, source)
    return value


def load_release_object(path) -> Any:
    """Load a release file — a pickle or a ``torch.save`` archive — without running code from it."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise UnsafePickleError(path, f"could not read it ({error.strerror or error})") from None
    if data.startswith(_ZIP_MAGIC):
        return _torch_load(data, path)
    if not data.startswith(b"\x80"):
        raise UnsafePickleError(path, "this is neither a Python pickle nor a torch.save archive")
    value = safe_loads(data, path)
    if isinstance(value, int) and value == _TORCH_LEGACY_MAGIC:
        return _torch_load(data, path)  # a legacy (pre-zip) torch.save file
    return value
