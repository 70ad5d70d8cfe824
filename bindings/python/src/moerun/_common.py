"""Argument checks and the locking shared by the handle classes."""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Callable, Iterator, Optional, Sequence

from . import _lib
from ._errors import InvalidArgumentError, MoerunError


def uint_arg(name: str, value: Any, bits: int = 32) -> int:
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise InvalidArgumentError(f"{name} must be an integer, got {type(value).__name__}")
    v = int(value.__index__())
    if not 0 <= v < 2**bits:
        raise InvalidArgumentError(f"{name} must be in [0, 2**{bits}), got {v}")
    return v


def int32_arg(name: str, value: Any) -> int:
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise InvalidArgumentError(f"{name} must be an integer, got {type(value).__name__}")
    v = int(value.__index__())
    if not -(2**31) <= v < 2**31:
        raise InvalidArgumentError(f"{name} must fit in int32, got {v}")
    return v


def float_arg(name: str, value: Any) -> float:
    if isinstance(value, bool):
        raise InvalidArgumentError(f"{name} must be a number, got bool")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise InvalidArgumentError(f"{name} must be a number, got {type(value).__name__}") from None


def finish(status: int, errors: Sequence[BaseException] = (), cleanup: Optional[Callable[[], None]] = None) -> None:
    """After a C call that ran Python callbacks: raises the first exception a callback raised (with
    the call's own error, if any, as its __context__), else the status error or a pending log
    callback exception. `cleanup` undoes the call's effect (frees a handle it created) whenever
    anything is raised."""
    try:
        if errors:
            exc = errors[0]
            try:
                _lib.check(status)
            except BaseException:
                raise exc  # raised here so the status error becomes its __context__
            raise exc
        _lib.check(status)
    except BaseException:
        if cleanup is not None:
            cleanup()
        raise


class Handle:
    """An owned C handle used by one thread at a time.

    The C ABI gives sessions and samplers no internal locking, so every call takes an RLock: other
    threads wait their turn. A call re-entering the same object from a callback that runs inside one
    of its own C calls (on_token inside generate, a log callback) would change state the running call
    depends on, so it is refused with InvalidArgumentError instead.
    """

    _kind = "handle"

    def __init__(self) -> None:
        self._handle: Optional[int] = None
        self._lock = threading.RLock()
        self._busy = False

    @contextlib.contextmanager
    def _use(self) -> Iterator[int]:
        with self._lock:
            if self._busy:
                raise InvalidArgumentError(
                    f"{self._kind} is already running a call on this thread (re-entered from a callback)")
            if self._handle is None:
                raise _lib.closed_error(self._kind)
            self._busy = True
            try:
                yield self._handle
            finally:
                self._busy = False

    @property
    def closed(self) -> bool:
        return self._handle is None

    def _destroy(self, handle: int) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Frees the C object. Idempotent; raises if called from a callback of this object's own call."""
        with self._lock:
            if self._busy:
                raise InvalidArgumentError(f"cannot close the {self._kind} from a callback of its own call")
            handle, self._handle = self._handle, None
        if handle is not None:
            self._destroy(handle)

    def __del__(self) -> None:
        # At interpreter shutdown module globals may already be gone; nothing useful can be raised.
        try:
            if getattr(self, "_handle", None) is not None:
                self.close()
        except (MoerunError, AttributeError, TypeError, ImportError):
            pass
