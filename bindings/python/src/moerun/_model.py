"""moerun.Model: a loaded .moerun file."""

from __future__ import annotations

import ctypes
import dataclasses
import os
import threading
from ctypes import byref, c_void_p
from typing import Any, Callable, List, Optional, Union

from . import _lib
from ._common import Handle, finish, int32_arg
from ._errors import InvalidArgumentError

ProgressCallback = Callable[[float], Optional[bool]]
PathLike = Union[str, bytes, "os.PathLike[str]", "os.PathLike[bytes]"]

_PRECISIONS = {"f32": 0, "bf16": 1, "auto": 2}
_PRECISION_NAMES = {v: k for k, v in _PRECISIONS.items()}


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """Every field of moerun_model_info (moerun.h), read once at load."""

    architecture: str
    backend: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    n_routed_experts: int
    n_shared_experts: int
    num_experts_per_tok: int
    kv_lora_rank: int
    qk_rope_head_dim: int
    max_position_embeddings: int
    bos_token_id: int  # -1 if unknown
    eos_token_id: int  # -1 if unknown
    kv_bytes_per_token: int  # bf16 rows (half of f32) where bf16 attention runs on AMX-BF16 or AVX2
    weight_bytes: int
    has_mtp: bool
    precision: str  # "f32" or "bf16": what the model runs at ("auto" resolved at load)


def _progress_trampoline(progress: ProgressCallback, errors: List[BaseException]) -> Any:
    def call(_user: Optional[int], fraction: float) -> int:
        if errors:
            return 0
        try:
            result = progress(float(fraction))
        except BaseException as e:  # re-raised by finish() once the load has returned
            errors.append(e)
            return 0
        return 0 if result is not None and not result else 1

    return _lib.PROGRESS_FN(call)


class Model(Handle):
    """A model loaded from a .moerun file, immutable and shareable by sessions on any thread.

    ``progress(fraction)`` is called while the weights are checked, which the library does only with
    ``verify_weights=True``; returning ``False`` cancels the load (CancelledError), and an exception
    it raises propagates out of the constructor. ``close()`` (or leaving a ``with``
    block) releases the handle; when sessions are still open the C model is destroyed once the last
    of them closes, as the C ABI requires.
    """

    _kind = "model"

    def __init__(
        self,
        path: PathLike,
        *,
        backend: Optional[str] = None,
        precision: str = "auto",
        n_threads: int = 0,
        verify_weights: bool = False,
        progress: Optional[ProgressCallback] = None,
    ) -> None:
        super().__init__()
        self._setup()
        try:
            encoded = os.fsencode(path)
        except TypeError:
            raise InvalidArgumentError(f"path must be str, bytes or os.PathLike, got {type(path).__name__}") from None
        if b"\0" in encoded:
            raise InvalidArgumentError("path contains a NUL byte")
        self._load(
            lambda options, out: _lib.lib().moerun_model_load(encoded, options, out),
            backend, precision, n_threads, verify_weights, progress,
        )

    @classmethod
    def from_bytes(
        cls,
        data: Any,
        *,
        backend: Optional[str] = None,
        precision: str = "auto",
        n_threads: int = 0,
        verify_weights: bool = False,
        progress: Optional[ProgressCallback] = None,
    ) -> "Model":
        """Loads from a bytes-like object (bytes, bytearray, mmap, numpy array, ...), used in place and
        kept referenced until the model is destroyed. A writable buffer is exported for that long, so a
        bytearray cannot be resized meanwhile; the caller must not modify it either."""
        self = cls.__new__(cls)
        Handle.__init__(self)
        self._setup()
        if isinstance(data, bytes):
            # A bytes object is immutable; c_char_p points at its own storage without copying.
            keep: Any = data
            address = ctypes.cast(ctypes.c_char_p(data), c_void_p).value
            size = len(data)
        else:
            try:
                view = memoryview(data)
            except TypeError:
                raise InvalidArgumentError(f"data must be a bytes-like object, got {type(data).__name__}") from None
            if not view.c_contiguous:
                raise InvalidArgumentError("data must be a contiguous buffer")
            view = view.cast("B")
            if view.readonly:
                keep = view.tobytes()
                address = ctypes.cast(ctypes.c_char_p(keep), c_void_p).value
            else:
                keep = (ctypes.c_char * len(view)).from_buffer(view)
                address = ctypes.addressof(keep)
            size = len(view)
        self._buffer = keep
        self._load(
            lambda options, out: _lib.lib().moerun_model_load_from_memory(address, size, options, out),
            backend, precision, n_threads, verify_weights, progress,
        )
        return self

    def _setup(self) -> None:
        self._buffer: Any = None
        self._sessions = 0
        self._closing = False
        self._state_lock = threading.Lock()
        self._info: Optional[ModelInfo] = None

    def _load(
        self,
        call: Callable[[Any, Any], int],
        backend: Optional[str],
        precision: str,
        n_threads: int,
        verify_weights: bool,
        progress: Optional[ProgressCallback],
    ) -> None:
        lib = _lib.lib()
        if precision not in _PRECISIONS:
            raise InvalidArgumentError(f"precision must be 'auto', 'f32' or 'bf16', got {precision!r}")
        if backend is not None and not isinstance(backend, str):
            raise InvalidArgumentError(f"backend must be a string or None, got {type(backend).__name__}")
        if progress is not None and not callable(progress):
            raise InvalidArgumentError("progress must be callable")
        options = _lib.ModelOptions()
        lib.moerun_model_options_init(byref(options))
        options.backend = backend.encode() if backend is not None else None
        options.precision = _PRECISIONS[precision]
        options.n_threads = int32_arg("n_threads", n_threads)
        options.verify_weights = 1 if verify_weights else 0
        errors: List[BaseException] = []
        trampoline = None
        if progress is not None:
            trampoline = _progress_trampoline(progress, errors)
            options.progress = ctypes.cast(trampoline, c_void_p).value
        out = c_void_p()
        status = call(byref(options), byref(out))

        def free() -> None:
            if out.value:
                lib.moerun_model_destroy(out.value)

        try:
            finish(status, errors, free)
        except BaseException:
            self._buffer = None
            raise
        del trampoline  # referenced until here: C called it during the load only
        assert out.value
        self._handle = out.value
        info = _lib.ModelInfo()
        lib.moerun_model_info_init(byref(info))
        try:
            finish(lib.moerun_model_get_info(out.value, byref(info)))
        except BaseException:
            self._handle = None
            self._buffer = None
            free()
            raise
        self._info = ModelInfo(
            architecture=(info.architecture or b"").decode(),
            backend=(info.backend or b"").decode(),
            vocab_size=info.vocab_size,
            hidden_size=info.hidden_size,
            num_layers=info.num_layers,
            num_heads=info.num_heads,
            n_routed_experts=info.n_routed_experts,
            n_shared_experts=info.n_shared_experts,
            num_experts_per_tok=info.num_experts_per_tok,
            kv_lora_rank=info.kv_lora_rank,
            qk_rope_head_dim=info.qk_rope_head_dim,
            max_position_embeddings=info.max_position_embeddings,
            bos_token_id=info.bos_token_id,
            eos_token_id=info.eos_token_id,
            kv_bytes_per_token=info.kv_bytes_per_token,
            weight_bytes=info.weight_bytes,
            has_mtp=bool(info.has_mtp),
            precision=_PRECISION_NAMES.get(info.precision, str(info.precision)),
        )

    @property
    def info(self) -> ModelInfo:
        if self._info is None or self.closed:
            raise _lib.closed_error(self._kind)
        return self._info

    @property
    def closed(self) -> bool:
        return self._handle is None or self._closing

    def _acquire(self) -> int:
        """The C handle for a new session; the model stays alive until the matching _release."""
        with self._state_lock:
            if self._handle is None or self._closing:
                raise _lib.closed_error(self._kind)
            self._sessions += 1
            return self._handle

    def _release(self) -> None:
        with self._state_lock:
            self._sessions -= 1
            handle = self._take_if_done()
        self._free(handle)

    def _take_if_done(self) -> Optional[int]:
        if self._closing and self._sessions == 0 and self._handle is not None:
            handle, self._handle = self._handle, None
            return handle
        return None

    def _free(self, handle: Optional[int]) -> None:
        if handle is not None:
            _lib.lib().moerun_model_destroy(handle)
            self._buffer = None

    def close(self) -> None:
        with self._state_lock:
            self._closing = True
            handle = self._take_if_done()
        self._free(handle)

    def __enter__(self) -> "Model":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        if self.closed:
            return "<moerun.Model closed>"
        i = self.info
        return f"<moerun.Model {i.architecture} on {i.backend}: {i.num_layers} layers, vocab {i.vocab_size}>"
