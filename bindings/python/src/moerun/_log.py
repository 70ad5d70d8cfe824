"""Process-wide log callback."""

from __future__ import annotations

import atexit
import enum
import threading
from typing import Any, Callable, List, Optional, Union

from . import _lib
from ._common import int32_arg
from ._errors import InvalidArgumentError


class LogLevel(enum.IntEnum):
    DEBUG = 0
    INFO = 1
    WARNING = 2
    ERROR = 3
    SILENT = 4


LogCallback = Callable[[LogLevel, str], None]

_lock = threading.Lock()
# Every trampoline ever installed: the C side keeps its adapters for the life of the process because
# a log call may still be running on another thread after the sink is replaced, so ours must live
# as long.
_trampolines: List[Any] = []
_installed = False
_min_level = LogLevel.WARNING


def _level(value: Union[LogLevel, int, str]) -> LogLevel:
    if isinstance(value, str):
        try:
            return LogLevel[value.upper()]
        except KeyError:
            raise InvalidArgumentError(f"unknown log level {value!r}") from None
    v = int32_arg("min_level", value)
    try:
        return LogLevel(v)
    except ValueError:
        raise InvalidArgumentError(f"min_level must be in [0, 4], got {v}") from None


def set_log_callback(fn: Optional[LogCallback], min_level: Union[LogLevel, int, str] = LogLevel.WARNING) -> None:
    """Sends moerun's log messages at ``min_level`` and above to ``fn(level, message)``; ``None``
    restores the default sink (stderr). The callback may run on any thread that calls into moerun,
    including the library's worker threads. An exception it raises is re-raised by the next call of
    this binding that returns (on whichever thread that is)."""
    global _installed, _min_level
    level = _level(min_level)
    lib = _lib.lib()
    if fn is None:
        with _lock:
            lib.moerun_set_log_callback(_lib.LOG_FN(), None, int(level))
            _installed = False
            _min_level = level
        return
    if not callable(fn):
        raise InvalidArgumentError("the log callback must be callable or None")

    def call(_user: Optional[int], lvl: int, message: Optional[bytes]) -> None:
        try:
            try:
                py_level = LogLevel(lvl)
            except ValueError:
                py_level = LogLevel.ERROR
            fn(py_level, (message or b"").decode("utf-8", "replace"))
        except BaseException as e:
            _lib.defer(e)

    trampoline = _lib.LOG_FN(call)
    with _lock:
        _trampolines.append(trampoline)
        lib.moerun_set_log_callback(trampoline, None, int(level))
        _installed = True
        _min_level = level


@atexit.register
def _restore_default_sink() -> None:
    # Objects destroyed during interpreter teardown may still log; by then a Python callback can no
    # longer run safely, so hand logging back to the library's own sink first.
    if _installed:
        _lib.lib().moerun_set_log_callback(_lib.LOG_FN(), None, int(_min_level))
