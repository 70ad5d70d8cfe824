"""Turning Python sequences and buffers into the C arrays the ABI takes, without copying when the
caller already has a suitable float32 buffer."""

from __future__ import annotations

import array
import ctypes
from ctypes import POINTER, c_float, c_int32, c_uint8
from types import ModuleType
from typing import Any, Iterable, Optional, Sequence, Tuple

from ._errors import InvalidArgumentError

_INT32_MIN = -(2**31)
_INT32_MAX = 2**31 - 1


def numpy_or_none() -> Optional[ModuleType]:
    """numpy if it can be imported. Looked up on every call (a dict lookup once imported) so that a
    process that blocks numpy, or a test that removes it, sees the fallback paths."""
    try:
        import numpy
    except ImportError:
        return None
    return numpy


def int32_array(values: Iterable[Any], what: str) -> "ctypes.Array[c_int32]":
    np = numpy_or_none()
    if np is not None and isinstance(values, np.ndarray):
        if values.ndim != 1 or values.dtype.kind not in "iu":
            raise InvalidArgumentError(f"{what} must be a 1-D integer array, got {values.dtype} {values.shape}")
        if values.size and (int(values.min()) < _INT32_MIN or int(values.max()) > _INT32_MAX):
            raise InvalidArgumentError(f"{what}: values do not fit in int32")
        arr = np.ascontiguousarray(values, dtype=np.int32)
        out: "ctypes.Array[c_int32]" = (c_int32 * arr.shape[0]).from_buffer_copy(arr)
        return out
    items = list(values)
    for v in items:
        if isinstance(v, bool) or not isinstance(v, int) and not hasattr(v, "__index__"):
            raise InvalidArgumentError(f"{what} must be integers, got {type(v).__name__}")
    ints = [int(v.__index__()) for v in items]
    for v in ints:
        if not _INT32_MIN <= v <= _INT32_MAX:
            raise InvalidArgumentError(f"{what}: {v} does not fit in int32")
    return (c_int32 * len(ints))(*ints)


def flags_array(values: Sequence[Any], n: int, what: str) -> "ctypes.Array[c_uint8]":
    if len(values) != n:
        raise InvalidArgumentError(f"{what} has {len(values)} entries for {n} tokens")
    return (c_uint8 * n)(*(1 if v else 0 for v in values))


def float_pointer(values: Any) -> Tuple["ctypes._Pointer[c_float]", int, Any]:
    """(pointer, count, keepalive) for a 1-D float32 view of `values`: a numpy array (converted to
    contiguous float32 if it is not), any buffer of C floats (format 'f', used in place), or a
    sequence of numbers (copied)."""
    np = numpy_or_none()
    if np is not None and isinstance(values, np.ndarray):
        if values.ndim != 1:
            raise InvalidArgumentError(f"logits must be 1-D, got shape {values.shape}")
        arr = np.ascontiguousarray(values, dtype=np.float32)
        return arr.ctypes.data_as(POINTER(c_float)), int(arr.shape[0]), arr
    try:
        view: Optional[memoryview] = memoryview(values)
    except TypeError:
        view = None
    if view is not None and view.format in ("f", "@f", "=f", "<f") and view.ndim == 1 and view.contiguous:
        if not view.readonly:
            buf = (c_float * len(view)).from_buffer(view)
            return ctypes.cast(buf, POINTER(c_float)), len(view), buf
        copied = array.array("f", view.tobytes())
        return float_pointer(copied)
    if view is not None:
        view.release()
        if isinstance(values, (bytes, bytearray)):
            raise InvalidArgumentError("logits must be floats, not raw bytes")
    try:
        floats = [float(v) for v in values]
    except TypeError as e:
        raise InvalidArgumentError(f"logits must be a sequence of floats: {e}") from None
    buf = (c_float * len(floats))(*floats)
    return ctypes.cast(buf, POINTER(c_float)), len(floats), buf


def copy_floats(ptr: "ctypes._Pointer[c_float]", n: int) -> Any:
    """A copy of n floats at ptr: numpy float32 array if numpy is importable, else array.array('f')."""
    np = numpy_or_none()
    if np is not None:
        return np.ctypeslib.as_array(ptr, shape=(n,)).astype(np.float32, copy=True)
    out = array.array("f")
    out.frombytes(ctypes.string_at(ptr, n * 4))
    return out
