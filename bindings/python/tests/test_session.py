"""moerun.Session: batches, logits, sequences, KV capacity, generate, stream, errors, lifetime."""

from __future__ import annotations

import math
import threading
from typing import Any, List, Sequence

import pytest

import moerun
from conftest import numpy_available

PROMPT = [17, 42, 99, 5, 250, 3]


def close(a: Sequence[float], b: Sequence[float], tol: float = 1e-4) -> bool:
    num = sum((x - y) ** 2 for x, y in zip(a, b))
    den = sum(y * y for y in b)
    return len(a) == len(b) and math.sqrt(num / den) <= tol


def argmax(row: Sequence[float]) -> int:
    best = 0
    for i, v in enumerate(row):
        if v > row[best]:
            best = i
    return best


def test_options_and_repr(model: moerun.Model) -> None:
    with moerun.Session(model, kv_capacity=64, max_sequences=3, max_batch_tokens=16, n_threads=1) as s:
        assert (s.kv_capacity, s.max_sequences, s.max_batch_tokens) == (64, 3, 16)
        assert s.model is model and "kv_capacity=64" in repr(s)
        assert s.kv_free() >= 64
    assert "closed" in repr(s)


@pytest.mark.parametrize("kw", [{"kv_capacity": 0}, {"max_sequences": 0}, {"max_batch_tokens": 0},
                                {"n_threads": -1}])
def test_bad_options_from_the_library(model: moerun.Model, kw: Any) -> None:
    with pytest.raises(moerun.InvalidArgumentError) as e:
        moerun.Session(model, **kw)
    assert list(kw)[0] in e.value.message
    assert model._sessions == 0  # the failed session released its model


@pytest.mark.parametrize("kw", [{"kv_capacity": -1}, {"max_sequences": 2**32}, {"max_batch_tokens": 1.5},
                                {"kv_capacity": True}])
def test_bad_options_caught_in_python(model: moerun.Model, kw: Any) -> None:
    with pytest.raises(moerun.InvalidArgumentError, match=list(kw)[0]):
        moerun.Session(model, **kw)
    with pytest.raises(moerun.InvalidArgumentError, match="moerun.Model"):
        moerun.Session("model.moerun")  # type: ignore[arg-type]


def test_decode_logits_and_sequence_state(model: moerun.Model) -> None:
    V = model.info.vocab_size
    with moerun.Session(model, kv_capacity=128) as s:
        free0 = s.kv_free()
        s.decode(PROMPT, logits=True)
        assert s.seq_length(0) == len(PROMPT) and s.kv_free() == free0 - len(PROMPT)
        rows = [s.logits(i) for i in range(len(PROMPT))]
        assert all(len(r) == V for r in rows)
        assert all(math.isfinite(v) for v in rows[-1])
        copy = s.logits(0)
        copy[0] = 12345.0  # a copy: changing it changes nothing in the session
        assert s.logits(0)[0] == rows[0][0] != 12345.0
        s.clear()
        assert s.seq_length(0) == 0 and s.kv_free() == free0
        # Incremental decoding reproduces the batched prefill row by row.
        for i, t in enumerate(PROMPT):
            s.decode([t], positions=[i])
            assert close(s.logits(0), rows[i]), f"position {i}"
        s.seq_remove(0)
        assert s.seq_length(0) == 0


def test_expert_counts(model: moerun.Model) -> None:
    info = model.info
    with moerun.Session(model) as s:
        assert s.expert_counts() == [[0] * info.n_routed_experts] * info.num_layers
        s.decode(PROMPT)
        with pytest.raises(moerun.InvalidArgumentError):
            s.decode([-1])
        counts = s.expert_counts()
    assert len(counts) == info.num_layers and all(len(row) == info.n_routed_experts for row in counts)
    assert sum(counts[0]) == 0  # the fixture's dense first layer
    for row in counts[1:]:
        assert sum(row) == len(PROMPT) * info.num_experts_per_tok
        assert max(row) <= len(PROMPT)


def test_logits_selection(model: moerun.Model) -> None:
    with moerun.Session(model) as s:
        s.decode(PROMPT)  # default: last token only
        s.logits(len(PROMPT) - 1)
        with pytest.raises(moerun.InvalidArgumentError, match="did not request logits"):
            s.logits(0)
        with pytest.raises(moerun.InvalidArgumentError, match="outside the last batch"):
            s.logits(len(PROMPT))
        with pytest.raises(moerun.InvalidArgumentError, match="logits index"):
            s.logits(-1)
        s.clear()
        s.decode(PROMPT, logits=[i % 2 for i in range(len(PROMPT))])
        s.logits(1)
        with pytest.raises(moerun.InvalidArgumentError):
            s.logits(0)
        s.clear()
        s.decode(PROMPT, logits=False)
        with pytest.raises(moerun.InvalidArgumentError):
            s.logits(len(PROMPT) - 1)
        with pytest.raises(moerun.InvalidArgumentError, match="3 entries for 2 tokens"):
            s.decode([1, 2], logits=[1, 1, 1])


def test_multiple_sequences_match_single_runs(model: moerun.Model) -> None:
    a, b = [10, 11, 12, 13], [200, 201]
    with moerun.Session(model) as s:
        s.decode(a)
        ref_a = s.logits(3)
        s.clear()
        s.decode(b)
        ref_b = s.logits(1)
    with moerun.Session(model, max_sequences=2) as s:
        # Interleaved: tokens of one sequence stay in order.
        tokens = [a[0], b[0], a[1], b[1], a[2], a[3]]
        seqs = [0, 1, 0, 1, 0, 0]
        s.decode(tokens, seq_ids=seqs, logits=[0, 0, 0, 1, 0, 1])
        assert close(s.logits(5), ref_a) and close(s.logits(3), ref_b)
        assert (s.seq_length(0), s.seq_length(1)) == (4, 2)
        s.seq_remove(1)
        assert (s.seq_length(0), s.seq_length(1)) == (4, 0)
        with pytest.raises(moerun.InvalidArgumentError, match="out of range"):
            s.seq_length(2)
        with pytest.raises(moerun.InvalidArgumentError, match="out of range"):
            s.seq_remove(-1)
        with pytest.raises(moerun.InvalidArgumentError, match="sequence id"):
            s.decode([1], seq_ids=[5])
        with pytest.raises(moerun.InvalidArgumentError, match="seq_ids has 1 entries for 2 tokens"):
            s.decode([1, 2], seq_ids=[0])


def test_positions(model: moerun.Model) -> None:
    with moerun.Session(model) as s:
        s.decode([1, 2, 3], positions=[0, 1, 2])
        with pytest.raises(moerun.InvalidArgumentError, match="position"):
            s.decode([4], positions=[7])
        assert s.seq_length(0) == 3
        with pytest.raises(moerun.InvalidArgumentError, match="positions has"):
            s.decode([4], positions=[3, 4])


@pytest.mark.parametrize("tokens,match", [
    ([5, 384], "has id 384"),
    ([-1], "has id -1"),
    ([2**31], "int32"),
    ([1.0], "integers"),
    ([True], "integers"),
    ([], "no tokens"),
])
def test_bad_tokens(model: moerun.Model, tokens: List[Any], match: str) -> None:
    with moerun.Session(model) as s:
        s.decode([3])
        with pytest.raises(moerun.InvalidArgumentError, match=match):
            s.decode(tokens)
        assert s.seq_length(0) == 1  # a failed batch leaves the sequence as it was


def test_batch_larger_than_max_batch_tokens(model: moerun.Model) -> None:
    with moerun.Session(model, max_batch_tokens=4) as s:
        with pytest.raises(moerun.InvalidArgumentError, match="max_batch_tokens"):
            s.decode([1, 2, 3, 4, 5])


def test_kv_cache_full(model: moerun.Model) -> None:
    with moerun.Session(model, kv_capacity=32, max_batch_tokens=256) as s:
        free = s.kv_free()
        assert free >= 32
        with pytest.raises(moerun.KvCacheFullError) as e:
            s.decode([7] * (free + 1))
        assert e.value.status == moerun.Status.KV_CACHE_FULL and "KV cache full" in e.value.message
        assert s.seq_length(0) == 0 and s.kv_free() == free  # unchanged
        s.decode([7] * free)
        assert s.kv_free() == 0 and s.seq_length(0) == free
        with pytest.raises(moerun.KvCacheFullError):
            s.decode([7])
        with pytest.raises(moerun.KvCacheFullError):
            s.generate([7], 3)
        s.clear()
        assert s.kv_free() == free


def test_closed_session_raises(model: moerun.Model) -> None:
    s = moerun.Session(model)
    s.close()
    s.close()
    assert s.closed
    for call in (lambda: s.decode([1]), lambda: s.logits(0), lambda: s.seq_length(0), lambda: s.seq_remove(0),
                 s.clear, s.kv_free, lambda: s.generate([1], 2), lambda: s.stream([1], 2)):
        with pytest.raises(moerun.InvalidArgumentError, match="session is closed"):
            call()
    assert model._sessions == 0


def test_generate_greedy_matches_decode_and_argmax(model: moerun.Model) -> None:
    with moerun.Session(model) as s:
        got = s.generate(PROMPT, 8)
        assert s.seq_length(0) == len(PROMPT) + len(got) - 1  # the last token is not decoded
    expected = []
    with moerun.Session(model) as s:
        s.decode(PROMPT)
        row = s.logits(len(PROMPT) - 1)
        for _ in range(8):
            tok = argmax(row)
            expected.append(tok)
            s.decode([tok])
            row = s.logits(0)
    assert got == expected


def test_generate_with_sampler_and_keywords(model: moerun.Model) -> None:
    with moerun.Session(model) as s:
        with moerun.Sampler(temperature=0.8, top_p=0.9, seed=7) as smp:
            a = s.generate(PROMPT, 10, sampler=smp)
        s.clear()
        b = s.generate(PROMPT, 10, temperature=0.8, top_p=0.9, seed=7)
        s.clear()
        c = s.generate(PROMPT, 10, temperature=0.8, top_p=0.9, seed=8)
        assert a == b and a != c
        with pytest.raises(moerun.InvalidArgumentError, match="not both"):
            s.generate(PROMPT, 3, sampler=moerun.Sampler(), seed=1)
        with pytest.raises(moerun.InvalidArgumentError, match="top_k"):
            s.generate(PROMPT, 3, top_k=-2)
        with pytest.raises(moerun.InvalidArgumentError, match="moerun.Sampler"):
            s.generate(PROMPT, 3, sampler="greedy")  # type: ignore[arg-type]


def test_generate_edge_cases(model: moerun.Model) -> None:
    with moerun.Session(model, max_sequences=2, max_batch_tokens=4) as s:
        assert s.generate(PROMPT, 0) == []
        assert s.seq_length(0) == len(PROMPT)  # the prompt is decoded (in chunks of 4)
        assert len(s.generate(PROMPT, 3, seq_id=1)) == 3
        with pytest.raises(moerun.InvalidArgumentError, match="prompt is empty"):
            s.generate([], 3)
        with pytest.raises(moerun.InvalidArgumentError, match="max_tokens"):
            s.generate(PROMPT, -1)
        with pytest.raises(moerun.InvalidArgumentError, match="sequence id 2"):
            s.generate(PROMPT, 2, seq_id=2)
        with pytest.raises(moerun.InvalidArgumentError, match="callable"):
            s.generate(PROMPT, 2, on_token=5)  # type: ignore[arg-type]


def test_on_token_sees_every_token_and_can_stop(model: moerun.Model) -> None:
    with moerun.Session(model) as s:
        seen: List[int] = []
        got = s.generate(PROMPT, 6, on_token=seen.append)
        assert seen == got and len(got) == 6
        s.clear()
        stopped = s.generate(PROMPT, 6, on_token=lambda t: False)
        assert stopped == got[:1]


def test_on_token_exception_propagates(model: moerun.Model) -> None:
    seen: List[int] = []

    def on_token(t: int) -> None:
        seen.append(t)
        if len(seen) == 2:
            raise KeyError("stop here")

    with moerun.Session(model) as s:
        with pytest.raises(KeyError, match="stop here"):
            s.generate(PROMPT, 10, on_token=on_token)
        assert len(seen) == 2
        # The session stays usable.
        s.clear()
        assert len(s.generate(PROMPT, 2)) == 2


def test_callbacks_cannot_reenter_the_running_session(model: moerun.Model) -> None:
    with moerun.Session(model) as s:
        with pytest.raises(moerun.InvalidArgumentError, match="re-entered"):
            s.generate(PROMPT, 4, on_token=lambda t: s.decode([t]))
        with pytest.raises(moerun.InvalidArgumentError, match="cannot close"):
            s.generate(PROMPT, 4, on_token=lambda t: s.close())
        assert not s.closed


def _prompt_whose_greedy_next_token_is_eos(model: moerun.Model) -> List[int]:
    # One batch over ids 2..V-1 gives the logits after every prefix; the random v3_bf16 model has
    # prefixes after which eos is the argmax.
    tokens = list(range(2, model.info.vocab_size))
    eos = model.info.eos_token_id
    with moerun.Session(model) as s:
        s.decode(tokens, logits=True)
        for i in range(len(tokens)):
            if argmax(s.logits(i)) == eos:
                return tokens[: i + 1]
    pytest.fail("no prefix has eos as its greedy next token")


def test_generate_and_stream_stop_after_eos(model: moerun.Model) -> None:
    eos = model.info.eos_token_id
    prompt = _prompt_whose_greedy_next_token_is_eos(model)
    with moerun.Session(model, max_sequences=2, max_batch_tokens=64) as s:
        assert s.generate(prompt, 10) == [eos]
        assert s.seq_length(0) == len(prompt)  # eos is returned but not decoded
        assert list(s.stream(prompt, 10, seq_id=1)) == [eos]
        assert s.seq_length(1) == len(prompt)
        s.clear()
        # Appending to what the sequence holds: the same context, so the same stop.
        assert s.generate(prompt[:-1], 0) == []  # decodes in chunks of max_batch_tokens
        seen: List[int] = []
        assert s.generate(prompt[-1:], 10, on_token=seen.append) == [eos] == seen


def test_stream_matches_generate(model: moerun.Model) -> None:
    with moerun.Session(model, max_batch_tokens=4) as s:
        want = s.generate(PROMPT, 12, temperature=0.9, top_k=50, seed=3)
        s.clear()
        with moerun.Sampler(temperature=0.9, top_k=50, seed=3) as smp:
            assert list(s.stream(PROMPT, 12, sampler=smp)) == want
        assert s.seq_length(0) == len(PROMPT) + len(want) - 1
        s.clear()
        assert list(s.stream(PROMPT, 12, temperature=0.9, top_k=50, seed=3)) == want
        s.clear()
        assert list(s.stream(PROMPT, 0)) == [] and s.seq_length(0) == len(PROMPT)


def test_stream_is_lazy_and_validates_at_once(model: moerun.Model) -> None:
    with moerun.Session(model) as s:
        it = s.stream(PROMPT, 3)
        assert s.seq_length(0) == 0
        first = next(it)
        assert s.seq_length(0) == len(PROMPT) and isinstance(first, int)
        with pytest.raises(moerun.InvalidArgumentError, match="prompt is empty"):
            s.stream([], 3)
        with pytest.raises(moerun.InvalidArgumentError, match="not both"):
            s.stream(PROMPT, 3, sampler=moerun.Sampler(), top_k=2)
        with pytest.raises(moerun.InvalidArgumentError, match="has id"):
            list(s.stream([1000], 3, seq_id=0))


def test_streams_interleave_on_separate_sequences(model: moerun.Model) -> None:
    with moerun.Session(model) as s:
        a = s.generate([4, 5, 6], 5)
        s.clear()
        b = s.generate([9, 8], 5)
    with moerun.Session(model, max_sequences=2) as s:
        sa, sb = s.stream([4, 5, 6], 5, seq_id=0), s.stream([9, 8], 5, seq_id=1)
        got = [(x, y) for x, y in zip(sa, sb)]
        assert [x for x, _ in got] == a and [y for _, y in got] == b


def test_closing_mid_stream(model: moerun.Model) -> None:
    s = moerun.Session(model)
    it = s.stream(PROMPT, 5)
    next(it)
    s.close()
    with pytest.raises(moerun.InvalidArgumentError, match="closed"):
        next(it)


def test_sessions_on_threads(model: moerun.Model) -> None:
    with moerun.Session(model) as s:
        want = s.generate(PROMPT, 6)
    results: List[Any] = [None] * 3

    def work(i: int) -> None:
        with moerun.Session(model, n_threads=1) as s:
            results[i] = s.generate(PROMPT, 6)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [want] * 3
    # One session shared by threads: calls are serialised, not interleaved inside the C library.
    with moerun.Session(model, max_sequences=4) as s:
        out: List[Any] = [None] * 4

        def shared(i: int) -> None:
            out[i] = s.generate(PROMPT, 6, seq_id=i)

        threads = [threading.Thread(target=shared, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert out == [want] * 4


@pytest.mark.skipif(not numpy_available(), reason="numpy is not importable")
def test_numpy_token_arrays(model: moerun.Model) -> None:
    import numpy as np

    with moerun.Session(model, max_sequences=2) as s:
        want = s.generate(PROMPT, 4)
        s.clear()
        assert s.generate(np.array(PROMPT, dtype=np.int64), 4) == want
        s.clear()
        s.decode(np.array(PROMPT, dtype=np.uint16), seq_ids=np.zeros(len(PROMPT), dtype=np.int32),
                 logits=np.ones(len(PROMPT), dtype=bool))
        row = s.logits(len(PROMPT) - 1)
        assert row.dtype == np.float32 and row.shape == (model.info.vocab_size,)
        with pytest.raises(moerun.InvalidArgumentError, match="1-D integer array"):
            s.decode(np.array(PROMPT, dtype=np.float32))
        with pytest.raises(moerun.InvalidArgumentError, match="1-D integer array"):
            s.decode(np.array([PROMPT]))
        with pytest.raises(moerun.InvalidArgumentError, match="int32"):
            s.decode(np.array([2**40]))
