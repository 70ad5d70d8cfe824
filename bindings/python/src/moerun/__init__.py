"""Python binding of moerun, the runtime for DeepSeek-style MoE models (ctypes over the C ABI).

The shared library is loaded on first use, from the first of: ``$MOERUN_LIBRARY``; ``libmoerun.so*``
next to this package; ``sys.prefix/lib`` (and its multiarch and lib64 variants), where
``cmake --install BUILD --prefix P`` puts it for a venv created at P; the system loader
(``libmoerun.so.1``, the SONAME of ABI version 1). When none loads, :class:`LibraryNotFoundError`
lists what was tried.

Errors: every non-OK status raises a subclass of :class:`MoerunError` carrying ``.status`` and the
library's message. Exceptions raised by Python callbacks (load progress, ``on_token``, log) stop the
C call where the C API allows it and are re-raised once the call returns.
"""

from __future__ import annotations

from . import _lib
from ._errors import (
    AbiMismatchError,
    BackendError,
    CancelledError,
    CorruptFileError,
    InternalError,
    InvalidArgumentError,
    KvCacheFullError,
    LibraryError,
    LibraryNotFoundError,
    MoerunError,
    MoerunIOError,
    OutOfMemoryError,
    Status,
    UnsupportedError,
)
from ._log import LogLevel, set_log_callback
from ._model import Model, ModelInfo
from ._session import Sampler, Session

#: The MOERUN_ABI_VERSION this binding was written for; loading a library reporting another fails.
ABI_VERSION = _lib.ABI_VERSION


def version() -> str:
    """Version string of the loaded library, e.g. "0.1.0"."""
    return str(_lib.lib().moerun_version().decode())


def abi_version() -> int:
    """MOERUN_ABI_VERSION of the loaded library (equal to ABI_VERSION, or it would not have loaded)."""
    return int(_lib.lib().moerun_abi_version())


def library_path() -> str:
    """Path (or loader name) of the shared library in use."""
    return _lib.path()


def status_string(status: int) -> str:
    """The library's name for a status code ("MOERUN_ERR_IO", ...)."""
    return str(_lib.lib().moerun_status_string(int(status)).decode())


__all__ = [
    "ABI_VERSION",
    "AbiMismatchError",
    "BackendError",
    "CancelledError",
    "CorruptFileError",
    "InternalError",
    "InvalidArgumentError",
    "KvCacheFullError",
    "LibraryError",
    "LibraryNotFoundError",
    "LogLevel",
    "Model",
    "ModelInfo",
    "MoerunError",
    "MoerunIOError",
    "OutOfMemoryError",
    "Sampler",
    "Session",
    "Status",
    "UnsupportedError",
    "abi_version",
    "library_path",
    "set_log_callback",
    "status_string",
    "version",
]
__version__ = "0.1.0"
