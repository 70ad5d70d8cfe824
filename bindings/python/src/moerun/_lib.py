"""Finding libmoerun, declaring the C prototypes, and turning statuses into exceptions."""

from __future__ import annotations

import ctypes
import glob
import os
import sys
import sysconfig
import threading
from ctypes import (
    CFUNCTYPE,
    POINTER,
    Structure,
    c_char_p,
    c_float,
    c_int,
    c_int32,
    c_size_t,
    c_uint8,
    c_uint32,
    c_uint64,
    c_void_p,
)
from typing import List, Optional, Tuple

from ._errors import AbiMismatchError, LibraryNotFoundError, MoerunError, error_for

#: MOERUN_ABI_VERSION of the moerun.h this binding mirrors.
ABI_VERSION = 1

SONAME = f"libmoerun.so.{ABI_VERSION}"
ENV_VAR = "MOERUN_LIBRARY"


class ModelOptions(Structure):
    _fields_ = [
        ("struct_size", c_size_t),
        ("backend", c_char_p),
        ("precision", c_int),
        ("n_threads", c_int32),
        ("verify_weights", c_int32),
        ("progress", c_void_p),
        ("progress_user_data", c_void_p),
    ]


class ModelInfo(Structure):
    _fields_ = [
        ("struct_size", c_size_t),
        ("architecture", c_char_p),
        ("backend", c_char_p),
        ("vocab_size", c_uint32),
        ("hidden_size", c_uint32),
        ("num_layers", c_uint32),
        ("num_heads", c_uint32),
        ("n_routed_experts", c_uint32),
        ("n_shared_experts", c_uint32),
        ("num_experts_per_tok", c_uint32),
        ("kv_lora_rank", c_uint32),
        ("qk_rope_head_dim", c_uint32),
        ("max_position_embeddings", c_uint32),
        ("bos_token_id", c_int32),
        ("eos_token_id", c_int32),
        ("kv_bytes_per_token", c_uint64),
        ("weight_bytes", c_uint64),
        ("has_mtp", c_uint32),
        ("precision", c_int),
    ]


class SessionOptions(Structure):
    _fields_ = [
        ("struct_size", c_size_t),
        ("kv_capacity", c_uint32),
        ("max_sequences", c_uint32),
        ("max_batch_tokens", c_uint32),
        ("n_threads", c_int32),
    ]


class Batch(Structure):
    _fields_ = [
        ("struct_size", c_size_t),
        ("n_tokens", c_uint32),
        ("tokens", POINTER(c_int32)),
        ("seq_ids", POINTER(c_int32)),
        ("positions", POINTER(c_int32)),
        ("logits", POINTER(c_uint8)),
    ]


class SamplerOptions(Structure):
    _fields_ = [
        ("struct_size", c_size_t),
        ("temperature", c_float),
        ("top_k", c_int32),
        ("top_p", c_float),
        ("min_p", c_float),
        ("seed", c_uint64),
    ]


LOG_FN = CFUNCTYPE(None, c_void_p, c_int, c_char_p)
PROGRESS_FN = CFUNCTYPE(c_int, c_void_p, c_float)
TOKEN_FN = CFUNCTYPE(c_int, c_void_p, c_int32)

_STATUS = c_int
_PROTOTYPES = {
    "moerun_version": (c_char_p, []),
    "moerun_abi_version": (c_uint32, []),
    "moerun_status_string": (c_char_p, [c_int]),
    "moerun_last_error": (c_char_p, []),
    "moerun_set_log_callback": (None, [LOG_FN, c_void_p, c_int]),
    "moerun_model_options_init": (None, [POINTER(ModelOptions)]),
    "moerun_model_load": (_STATUS, [c_char_p, POINTER(ModelOptions), POINTER(c_void_p)]),
    "moerun_model_load_from_memory": (_STATUS, [c_void_p, c_size_t, POINTER(ModelOptions), POINTER(c_void_p)]),
    "moerun_model_destroy": (None, [c_void_p]),
    "moerun_model_info_init": (None, [POINTER(ModelInfo)]),
    "moerun_model_get_info": (_STATUS, [c_void_p, POINTER(ModelInfo)]),
    "moerun_session_options_init": (None, [POINTER(SessionOptions)]),
    "moerun_session_create": (_STATUS, [c_void_p, POINTER(SessionOptions), POINTER(c_void_p)]),
    "moerun_session_destroy": (None, [c_void_p]),
    "moerun_batch_init": (None, [POINTER(Batch)]),
    "moerun_session_decode": (_STATUS, [c_void_p, POINTER(Batch)]),
    "moerun_session_get_logits": (_STATUS, [c_void_p, c_uint32, POINTER(POINTER(c_float))]),
    "moerun_session_get_expert_counts": (_STATUS, [c_void_p, POINTER(c_uint64), c_size_t]),
    "moerun_session_seq_length": (_STATUS, [c_void_p, c_int32, POINTER(c_uint32)]),
    "moerun_session_seq_remove": (_STATUS, [c_void_p, c_int32]),
    "moerun_session_clear": (_STATUS, [c_void_p]),
    "moerun_session_kv_free": (_STATUS, [c_void_p, POINTER(c_uint32)]),
    "moerun_sampler_options_init": (None, [POINTER(SamplerOptions)]),
    "moerun_sampler_create": (_STATUS, [POINTER(SamplerOptions), POINTER(c_void_p)]),
    "moerun_sampler_destroy": (None, [c_void_p]),
    "moerun_sampler_sample": (_STATUS, [c_void_p, POINTER(c_float), c_uint32, POINTER(c_int32)]),
    "moerun_generate": (
        _STATUS,
        [c_void_p, c_void_p, c_int32, POINTER(c_int32), c_uint32, c_uint32, TOKEN_FN, c_void_p,
         POINTER(c_int32), POINTER(c_uint32)],
    ),
}


def _package_candidates() -> List[str]:
    here = os.path.dirname(os.path.abspath(__file__))
    found = glob.glob(os.path.join(here, "libmoerun.so*"))
    # The SONAME first: it is what a versioned install links against.
    return sorted(found, key=lambda p: (os.path.basename(p) != SONAME, p))


def _prefix_candidates() -> List[str]:
    dirs: List[str] = []
    multiarch = sysconfig.get_config_var("MULTIARCH")
    for prefix in dict.fromkeys([sys.prefix, sys.base_prefix]):
        dirs.append(os.path.join(prefix, "lib"))
        if multiarch:
            dirs.append(os.path.join(prefix, "lib", multiarch))
        dirs.append(os.path.join(prefix, "lib64"))
    out: List[str] = []
    for d in dict.fromkeys(dirs):
        out.extend(os.path.join(d, name) for name in (SONAME, "libmoerun.so"))
    return out


def candidates() -> List[Tuple[str, str]]:
    """Where the library is looked for, in order, as (origin, path) pairs. MOERUN_LIBRARY, when set,
    is the only candidate: an explicit choice must not silently fall back to another copy."""
    explicit = os.environ.get(ENV_VAR)
    if explicit:
        return [(f"${ENV_VAR}", explicit)]
    out = [("next to the package", p) for p in _package_candidates()]
    out += [("install prefix", p) for p in _prefix_candidates()]
    out.append(("system loader", SONAME))
    return out


def _load() -> Tuple[ctypes.CDLL, str]:
    tried: List[str] = []
    for origin, path in candidates():
        # Files that do not exist are reported as such rather than passed to dlopen, which would
        # search the loader path for a bare-looking name.
        if os.sep in path and not os.path.exists(path):
            tried.append(f"  {origin}: {path}: no such file")
            continue
        try:
            return ctypes.CDLL(path), path
        except OSError as e:
            tried.append(f"  {origin}: {path}: {e}")
    hint = (
        f"set {ENV_VAR} to the path of libmoerun.so (build-dir/libmoerun.so), or install it with "
        "`cmake --install BUILD --prefix P` and pip install into a venv at P"
    )
    raise LibraryNotFoundError("could not load libmoerun; tried:\n" + "\n".join(tried) + "\n" + hint)


def _declare(lib: ctypes.CDLL, path: str) -> None:
    for name, (restype, argtypes) in _PROTOTYPES.items():
        try:
            fn = getattr(lib, name)
        except AttributeError:
            raise AbiMismatchError(f"{path} does not export {name}; it is not a compatible libmoerun") from None
        fn.restype = restype
        fn.argtypes = argtypes
    got = lib.moerun_abi_version()
    if got != ABI_VERSION:
        raise AbiMismatchError(
            f"{path} has ABI version {got}, but this binding was written for ABI version {ABI_VERSION}; "
            "install the matching moerun Python package"
        )


_lock = threading.Lock()
_lib: Optional[ctypes.CDLL] = None
_path: Optional[str] = None


def lib() -> ctypes.CDLL:
    """The loaded library with prototypes declared (loaded on first use)."""
    global _lib, _path
    if _lib is not None:
        return _lib
    with _lock:
        if _lib is None:
            loaded, path = _load()
            _declare(loaded, path)
            _path = path
            _lib = loaded
    return _lib


def path() -> str:
    lib()
    assert _path is not None
    return _path


# Exceptions raised by Python log callbacks. The log sink may run on any thread (including the
# library's worker threads), so they are queued here and raised by whichever binding call returns
# next rather than being lost inside the ctypes trampoline.
_pending_lock = threading.Lock()
_pending: List[BaseException] = []


def defer(exc: BaseException) -> None:
    with _pending_lock:
        _pending.append(exc)


def raise_pending() -> None:
    if not _pending:
        return
    with _pending_lock:
        excs = _pending[:]
        _pending.clear()
    if not excs:
        return
    first = excs[0]
    for other in excs[1:]:
        note = f"another exception was raised by a moerun log callback: {other!r}"
        if hasattr(first, "add_note"):
            first.add_note(note)
    raise first


def check(status: int) -> None:
    """Raises the exception for a non-OK status, and then any exception a log callback raised."""
    if status != 0:
        message = lib().moerun_last_error()
        err = error_for(status, message.decode("utf-8", "replace") if message else "")
        try:
            raise err
        except MoerunError:
            # A callback's exception wins (it is usually the cause); the status error becomes its
            # __context__, so neither is lost.
            raise_pending()
            raise
    raise_pending()


def closed_error(what: str) -> MoerunError:
    from ._errors import InvalidArgumentError

    return InvalidArgumentError(f"{what} is closed")
