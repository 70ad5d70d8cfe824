"""moerun.Session (a KV cache and its sequences) and moerun.Sampler."""

from __future__ import annotations

import contextlib
import ctypes
from ctypes import POINTER, byref, c_float, c_int32, c_uint32, c_uint64, c_void_p
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple, Union

from . import _lib
from ._buffers import copy_floats, flags_array, float_pointer, int32_array
from ._common import Handle, finish, float_arg, int32_arg, uint_arg
from ._errors import InvalidArgumentError
from ._model import Model

TokenCallback = Callable[[int], Optional[bool]]
LogitsFlags = Union[None, bool, Iterable[Any]]


class Sampler(Handle):
    """Token sampler (moerun_sampler). ``temperature`` 0 is greedy (argmax, lowest id on ties);
    ``top_k`` 0, ``top_p`` 1 and ``min_p`` 0 are off. The same seed and logits give the same tokens."""

    _kind = "sampler"

    def __init__(self, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0,
                 seed: int = 0) -> None:
        super().__init__()
        lib = _lib.lib()
        options = _lib.SamplerOptions()
        lib.moerun_sampler_options_init(byref(options))
        self.temperature = options.temperature = float_arg("temperature", temperature)
        self.top_k = options.top_k = int32_arg("top_k", top_k)
        self.top_p = options.top_p = float_arg("top_p", top_p)
        self.min_p = options.min_p = float_arg("min_p", min_p)
        self.seed = options.seed = uint_arg("seed", seed, 64)
        out = c_void_p()
        finish(lib.moerun_sampler_create(byref(options), byref(out)),
               cleanup=lambda: lib.moerun_sampler_destroy(out.value))
        self._handle = out.value

    def _destroy(self, handle: int) -> None:
        _lib.lib().moerun_sampler_destroy(handle)

    def sample(self, logits: Any) -> int:
        """Samples a token id from one row of logits: a numpy array (any dtype, converted to float32),
        any buffer of C floats such as array.array('f') (read in place), or a sequence of numbers."""
        ptr, n, keep = float_pointer(logits)
        with self._use() as h:
            tok = c_int32()
            finish(_lib.lib().moerun_sampler_sample(h, ptr, n, byref(tok)))
        del keep
        return tok.value

    def _sample_pointer(self, h: int, ptr: Any, n: int) -> int:
        tok = c_int32()
        finish(_lib.lib().moerun_sampler_sample(h, ptr, n, byref(tok)))
        return tok.value

    def __enter__(self) -> "Sampler":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"temperature={self.temperature} top_k={self.top_k} " \
            f"top_p={self.top_p} min_p={self.min_p} seed={self.seed}"
        return f"<moerun.Sampler {state}>"


def _token_trampoline(on_token: TokenCallback, errors: List[BaseException]) -> Any:
    def call(_user: Optional[int], token: int) -> int:
        try:
            result = on_token(int(token))
        except BaseException as e:  # re-raised by finish() once moerun_generate has returned
            errors.append(e)
            return 0
        return 0 if result is not None and not result else 1

    return _lib.TOKEN_FN(call)


class Session(Handle):
    """A latent KV cache holding up to ``max_sequences`` sequences (moerun_session).

    The session keeps its model alive. One thread at a time runs a call on it (others wait);
    sessions on the same model run concurrently.
    """

    _kind = "session"

    def __init__(self, model: Model, *, kv_capacity: int = 4096, max_sequences: int = 1,
                 max_batch_tokens: int = 512, n_threads: int = 0) -> None:
        super().__init__()
        if not isinstance(model, Model):
            raise InvalidArgumentError(f"model must be a moerun.Model, got {type(model).__name__}")
        lib = _lib.lib()
        options = _lib.SessionOptions()
        lib.moerun_session_options_init(byref(options))
        options.kv_capacity = uint_arg("kv_capacity", kv_capacity)
        options.max_sequences = uint_arg("max_sequences", max_sequences)
        options.max_batch_tokens = uint_arg("max_batch_tokens", max_batch_tokens)
        options.n_threads = int32_arg("n_threads", n_threads)
        model_handle = model._acquire()
        out = c_void_p()
        try:
            finish(lib.moerun_session_create(model_handle, byref(options), byref(out)),
                   cleanup=lambda: lib.moerun_session_destroy(out.value))
        except BaseException:
            model._release()
            raise
        self._model = model
        self._vocab = model.info.vocab_size
        self._eos = model.info.eos_token_id
        self.kv_capacity = options.kv_capacity
        self.max_sequences = options.max_sequences
        self.max_batch_tokens = options.max_batch_tokens
        self._handle = out.value

    @property
    def model(self) -> Model:
        return self._model

    def _destroy(self, handle: int) -> None:
        _lib.lib().moerun_session_destroy(handle)
        self._model._release()

    def decode(self, tokens: Iterable[int], seq_ids: Optional[Iterable[int]] = None,
               positions: Optional[Iterable[int]] = None, logits: LogitsFlags = None) -> None:
        """Runs one batch: token i is appended to sequence ``seq_ids[i]`` (default: all sequence 0).
        ``positions``, if given, must equal each sequence's next position. ``logits`` selects the
        tokens whose logits are computed: None = the last token only, True = every token, False =
        none, or one truthy/falsy flag per token. Raises KvCacheFullError (session unchanged) if the
        batch does not fit."""
        toks = int32_array(tokens, "tokens")
        n = len(toks)
        batch = _lib.Batch()
        _lib.lib().moerun_batch_init(byref(batch))
        batch.n_tokens = n
        batch.tokens = ctypes.cast(toks, POINTER(c_int32))
        keep: List[Any] = [toks]
        for name, values in (("seq_ids", seq_ids), ("positions", positions)):
            if values is None:
                continue
            arr = int32_array(values, name)
            if len(arr) != n:
                raise InvalidArgumentError(f"{name} has {len(arr)} entries for {n} tokens")
            keep.append(arr)
            setattr(batch, name, ctypes.cast(arr, POINTER(c_int32)))
        if logits is not None:
            flags = flags_array([logits] * n if isinstance(logits, bool) else list(logits), n, "logits")
            keep.append(flags)
            batch.logits = ctypes.cast(flags, POINTER(ctypes.c_uint8))
        with self._use() as h:
            finish(_lib.lib().moerun_session_decode(h, byref(batch)))

    def _logits_pointer(self, h: int, i: int) -> Any:
        ptr = POINTER(c_float)()
        finish(_lib.lib().moerun_session_get_logits(h, i, byref(ptr)))
        return ptr

    def logits(self, i: int) -> Any:
        """A copy of the logits (vocab_size floats) of batch token ``i`` of the last decode, which
        must have requested them: a numpy float32 array when numpy can be imported, otherwise an
        ``array.array('f')``."""
        idx = uint_arg("logits index", i)
        with self._use() as h:
            return copy_floats(self._logits_pointer(h, idx), self._vocab)

    def expert_counts(self) -> List[List[int]]:
        """Routed-expert usage since the session was created: ``counts[layer][expert]`` = the tokens
        that layer's router sent to that expert over every successful decode (dense layers: zeros)."""
        info = self._model.info
        n_layers, n_experts = info.num_layers, info.n_routed_experts
        out = (c_uint64 * (n_layers * n_experts))()
        with self._use() as h:
            finish(_lib.lib().moerun_session_get_expert_counts(h, out, len(out)))
        return [list(out[l * n_experts : (l + 1) * n_experts]) for l in range(n_layers)]

    def seq_length(self, seq_id: int = 0) -> int:
        out = c_uint32()
        with self._use() as h:
            finish(_lib.lib().moerun_session_seq_length(h, int32_arg("seq_id", seq_id), byref(out)))
        return out.value

    def seq_remove(self, seq_id: int = 0) -> None:
        with self._use() as h:
            finish(_lib.lib().moerun_session_seq_remove(h, int32_arg("seq_id", seq_id)))

    def clear(self) -> None:
        with self._use() as h:
            finish(_lib.lib().moerun_session_clear(h))

    def kv_free(self) -> int:
        """Tokens the KV cache can still take."""
        out = c_uint32()
        with self._use() as h:
            finish(_lib.lib().moerun_session_kv_free(h, byref(out)))
        return out.value

    def generate(self, prompt: Iterable[int], max_tokens: int, *, sampler: Optional[Sampler] = None,
                 temperature: Optional[float] = None, top_k: Optional[int] = None,
                 top_p: Optional[float] = None, min_p: Optional[float] = None, seed: Optional[int] = None,
                 seq_id: int = 0, on_token: Optional[TokenCallback] = None) -> List[int]:
        """moerun_generate: decodes ``prompt`` into ``seq_id`` (appending to what it holds), then
        samples up to ``max_tokens`` tokens, stopping after the model's eos. Pass a ``sampler`` or the
        sampling keywords (default greedy), not both. ``on_token(token)`` sees each token as it is
        produced; returning False stops early, and an exception it raises stops generation and
        propagates."""
        prompt_arr = int32_array(prompt, "prompt")
        n_max = uint_arg("max_tokens", max_tokens)
        seq = int32_arg("seq_id", seq_id)
        if on_token is not None and not callable(on_token):
            raise InvalidArgumentError("on_token must be callable")
        errors: List[BaseException] = []
        trampoline = _token_trampoline(on_token, errors) if on_token is not None else _lib.TOKEN_FN()
        out = (c_int32 * max(n_max, 1))()
        n_out = c_uint32()
        with _sampler_for(sampler, temperature, top_k, top_p, min_p, seed) as smp:
            with self._use() as h, smp._use() as sh:
                status = _lib.lib().moerun_generate(
                    h, sh, seq, ctypes.cast(prompt_arr, POINTER(c_int32)), len(prompt_arr), n_max,
                    trampoline, None, ctypes.cast(out, POINTER(c_int32)), byref(n_out))
        finish(status, errors)
        return list(out[: n_out.value])

    def stream(self, prompt: Iterable[int], max_tokens: int, *, sampler: Optional[Sampler] = None,
               temperature: Optional[float] = None, top_k: Optional[int] = None,
               top_p: Optional[float] = None, min_p: Optional[float] = None, seed: Optional[int] = None,
               seq_id: int = 0) -> Iterator[int]:
        """Like :meth:`generate`, but an iterator yielding each token as soon as it is sampled.

        Arguments are checked at once; the prompt is decoded on the first ``next()``. It follows
        moerun_generate step for step (prompt in chunks of max_batch_tokens, stop after eos or
        max_tokens; the last token yielded is not decoded), so with the same sampler settings it yields
        the same tokens. Each step decodes the previous token and samples the next within one
        ``next()``, so other work on the session between steps is fine as long as it leaves
        ``seq_id`` alone; closing the session ends the stream with an error at the next step.
        """
        prompt_list = list(int32_array(prompt, "prompt"))
        if not prompt_list:
            raise InvalidArgumentError("prompt is empty")
        n_max = uint_arg("max_tokens", max_tokens)
        seq = int32_arg("seq_id", seq_id)
        if self.closed:
            raise _lib.closed_error(self._kind)
        owned = sampler is None
        smp = _make_sampler(sampler, temperature, top_k, top_p, min_p, seed)
        return self._stream(prompt_list, n_max, smp, owned, seq)

    def _stream(self, prompt: List[int], max_tokens: int, sampler: Sampler, owned: bool,
                seq_id: int) -> Iterator[int]:
        try:
            chunk = self.max_batch_tokens
            for start in range(0, len(prompt), chunk):
                part = prompt[start:start + chunk]
                self.decode(part, seq_ids=[seq_id] * len(part))
            row = (len(prompt) - 1) % chunk
            produced = 0
            while produced < max_tokens:
                with self._use() as h, sampler._use() as sh:
                    tok = sampler._sample_pointer(sh, self._logits_pointer(h, row), self._vocab)
                produced += 1
                yield tok
                if tok == self._eos or produced == max_tokens:
                    return
                self.decode([tok], seq_ids=[seq_id])
                row = 0
        finally:
            if owned:
                sampler.close()

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        if self.closed:
            return "<moerun.Session closed>"
        return (f"<moerun.Session kv_capacity={self.kv_capacity} max_sequences={self.max_sequences} "
                f"max_batch_tokens={self.max_batch_tokens}>")


def _make_sampler(sampler: Optional[Sampler], temperature: Optional[float], top_k: Optional[int],
                  top_p: Optional[float], min_p: Optional[float], seed: Optional[int]) -> Sampler:
    given: Dict[str, Any] = {k: v for k, v in (("temperature", temperature), ("top_k", top_k), ("top_p", top_p),
                                                 ("min_p", min_p), ("seed", seed)) if v is not None}
    if sampler is not None:
        if given:
            raise InvalidArgumentError(f"pass either sampler or sampling keywords, not both (got {sorted(given)})")
        if not isinstance(sampler, Sampler):
            raise InvalidArgumentError(f"sampler must be a moerun.Sampler, got {type(sampler).__name__}")
        return sampler
    return Sampler(**given)


@contextlib.contextmanager
def _sampler_for(sampler: Optional[Sampler], *params: Any) -> Iterator[Sampler]:
    smp = _make_sampler(sampler, *params)
    try:
        yield smp
    finally:
        if sampler is None:
            smp.close()


__all__: Tuple[str, ...] = ("Sampler", "Session")
