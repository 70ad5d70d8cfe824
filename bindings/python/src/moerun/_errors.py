"""Exceptions: one class per moerun_status, plus the errors of finding and loading the library."""

from __future__ import annotations

import enum
from typing import Dict, Optional, Type


class Status(enum.IntEnum):
    """Mirror of ``moerun_status`` in moerun.h."""

    OK = 0
    INVALID_ARGUMENT = 1
    IO = 2
    CORRUPT_FILE = 3
    UNSUPPORTED = 4
    OUT_OF_MEMORY = 5
    KV_CACHE_FULL = 6
    CANCELLED = 7
    BACKEND = 8
    INTERNAL = 9


class MoerunError(Exception):
    """Base of every error the binding raises.

    ``status`` is the :class:`Status` of the failed call (``None`` for :class:`LibraryError`, which
    no C call produced) and ``message`` is what ``moerun_last_error()`` said.
    """

    status: Optional[Status] = None

    def __init__(self, message: str, status: Optional[Status] = None) -> None:
        # One positional argument only: OSError and ImportError bases would otherwise read a second
        # argument as errno / keyword fields.
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status


class InvalidArgumentError(MoerunError, ValueError):
    """A bad argument: NULL or closed handle, bad option, token id >= vocab, ..."""

    status = Status.INVALID_ARGUMENT


class MoerunIOError(MoerunError, OSError):
    """A file cannot be opened, read or written."""

    status = Status.IO


class CorruptFileError(MoerunError):
    """The model file failed verification."""

    status = Status.CORRUPT_FILE


class UnsupportedError(MoerunError):
    """Newer format version, unknown backend or unsupported configuration."""

    status = Status.UNSUPPORTED


class OutOfMemoryError(MoerunError, MemoryError):
    status = Status.OUT_OF_MEMORY


class KvCacheFullError(MoerunError):
    """The batch does not fit the session's KV cache; the session is unchanged."""

    status = Status.KV_CACHE_FULL


class CancelledError(MoerunError):
    """A callback asked to stop (for example a progress callback that returned False)."""

    status = Status.CANCELLED


class BackendError(MoerunError):
    status = Status.BACKEND


class InternalError(MoerunError):
    """A bug in moerun."""

    status = Status.INTERNAL


class LibraryError(MoerunError, ImportError):
    """The shared library could not be used: not found, or built for another ABI version."""


class LibraryNotFoundError(LibraryError):
    """No libmoerun could be loaded; the message lists every place that was tried."""


class AbiMismatchError(LibraryError):
    """The loaded libmoerun reports an ABI version this binding was not written for."""


_BY_STATUS: Dict[int, Type[MoerunError]] = {
    int(cls.status): cls
    for cls in (
        InvalidArgumentError,
        MoerunIOError,
        CorruptFileError,
        UnsupportedError,
        OutOfMemoryError,
        KvCacheFullError,
        CancelledError,
        BackendError,
        InternalError,
    )
}


def error_for(code: int, message: str) -> MoerunError:
    """The exception for a non-OK status code (a plain MoerunError for codes newer than the binding)."""
    cls = _BY_STATUS.get(code)
    if cls is not None:
        return cls(message)
    try:
        status: Optional[Status] = Status(code)
    except ValueError:
        status = None
    err = MoerunError(f"{message} (unknown moerun status {code})")
    err.status = status
    return err
