"""The process-wide log callback: levels, filtering, exceptions, restoring the default sink."""

from __future__ import annotations

import ctypes
import gc
from pathlib import Path
from typing import Any, List, Tuple

import pytest

import moerun
from conftest import python_env, run_python

COPIED = "not 64-byte aligned"


def _buffer_at(data: bytes, misaligned: bool) -> Tuple[bytearray, memoryview]:
    """A writable view of a copy of data whose address is (or is not) a multiple of 64."""
    ba = bytearray(len(data) + 128)
    base = ctypes.addressof((ctypes.c_char * len(ba)).from_buffer(ba))
    off = (-base) % 64 + (1 if misaligned else 0)
    view = memoryview(ba)[off: off + len(data)]
    view[:] = data
    return ba, view


def test_messages_reach_the_callback_with_their_level(model_path: Path) -> None:
    got: List[Tuple[moerun.LogLevel, str]] = []
    moerun.set_log_callback(lambda level, msg: got.append((level, msg)), moerun.LogLevel.INFO)
    ba, view = _buffer_at(model_path.read_bytes(), misaligned=True)
    with moerun.Model.from_bytes(view):
        pass
    del view
    assert (moerun.LogLevel.INFO, "model buffer is not 64-byte aligned; copied it") in got
    assert all(isinstance(level, moerun.LogLevel) for level, _ in got)


def test_an_aligned_buffer_is_used_in_place(model_path: Path) -> None:
    got: List[str] = []
    moerun.set_log_callback(lambda level, msg: got.append(msg), "debug")
    ba, view = _buffer_at(model_path.read_bytes(), misaligned=False)
    with moerun.Model.from_bytes(view) as m:
        assert m.info.vocab_size == 384
    assert not any(COPIED in m for m in got)


def test_min_level_filters(model_path: Path) -> None:
    got: List[str] = []
    moerun.set_log_callback(lambda level, msg: got.append(msg), moerun.LogLevel.WARNING)
    ba, view = _buffer_at(model_path.read_bytes(), misaligned=True)
    with moerun.Model.from_bytes(view):
        pass
    assert not any(COPIED in m for m in got)


def test_callback_exception_is_raised_after_the_call(model_path: Path) -> None:
    def bad(level: moerun.LogLevel, msg: str) -> None:
        raise RuntimeError(f"log callback failed on: {msg}")

    moerun.set_log_callback(bad, moerun.LogLevel.INFO)
    ba, view = _buffer_at(model_path.read_bytes(), misaligned=True)
    try:
        moerun.Model.from_bytes(view)
    except RuntimeError as e:
        assert COPIED in str(e)
    else:
        pytest.fail("the log callback's exception was lost")
    del view
    gc.collect()
    ba.extend(b"x")  # the model the failed call created was freed, releasing the buffer
    # Raised once: the next call is clean.
    assert moerun.version() == "0.1.0"
    with moerun.Sampler() as s:
        assert s.sample([0.0, 1.0]) == 1


def test_bad_arguments() -> None:
    with pytest.raises(moerun.InvalidArgumentError, match="log level"):
        moerun.set_log_callback(print, "loud")
    with pytest.raises(moerun.InvalidArgumentError, match="min_level"):
        moerun.set_log_callback(print, 9)
    with pytest.raises(moerun.InvalidArgumentError, match="callable"):
        moerun.set_log_callback("print", moerun.LogLevel.INFO)  # type: ignore[arg-type]


def test_none_restores_stderr(model_path: Path) -> None:
    code = (
        "import ctypes, moerun\n"
        "moerun.set_log_callback(lambda l, m: print('PY', m), moerun.LogLevel.INFO)\n"
        "moerun.set_log_callback(None, moerun.LogLevel.INFO)\n"
        f"data = open({str(model_path)!r}, 'rb').read()\n"
        "ba = bytearray(len(data) + 128)\n"
        "base = ctypes.addressof((ctypes.c_char * len(ba)).from_buffer(ba))\n"
        "off = (-base) % 64 + 1\n"
        "v = memoryview(ba)[off:off + len(data)]; v[:] = data\n"
        "moerun.Model.from_bytes(v).close()\n"
        # A callback still installed at exit is handed back to the library's sink, not called late.
        "moerun.set_log_callback(lambda l, m: print('LATE', m), moerun.LogLevel.DEBUG)\n"
    )
    r = run_python(code, python_env())
    assert r.returncode == 0, r.stderr
    assert "PY" not in r.stdout and COPIED in r.stderr
    assert "LATE" not in r.stdout


def test_log_callback_type_is_annotated() -> None:
    hints: Any = moerun.set_log_callback.__annotations__
    assert "fn" in hints and "min_level" in hints
