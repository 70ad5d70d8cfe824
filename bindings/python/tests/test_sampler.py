"""moerun.Sampler: parameters, inputs of every accepted kind, determinism, errors."""

from __future__ import annotations

import array
import math
from typing import Any

import pytest

import moerun
from conftest import numpy_available

ROW = [0.5, 3.0, -1.0, 3.0, 2.0]


def test_greedy_is_argmax_with_lowest_id_on_ties() -> None:
    with moerun.Sampler() as s:
        assert (s.temperature, s.top_k, s.top_p, s.min_p, s.seed) == (0.0, 0, 1.0, 0.0, 0)
        assert s.sample(ROW) == 1
        assert s.sample([1.0]) == 0
        assert s.sample(array.array("f", [0.0, -2.0, 7.5])) == 2
        assert s.sample((x for x in [0.0, 9.0])) == 1
        assert "temperature=0.0" in repr(s)
    assert "closed" in repr(s)


def test_buffers_of_floats_are_read_in_place_or_copied() -> None:
    with moerun.Sampler() as s:
        ro = memoryview(array.array("f", [1.0, 5.0, 2.0]).tobytes()).cast("f")
        assert ro.readonly and s.sample(ro) == 1
        doubles = array.array("d", [1.0, 5.0, 9.0])  # not C floats: read as a sequence of numbers
        assert s.sample(doubles) == 2
        with pytest.raises(moerun.InvalidArgumentError, match="raw bytes"):
            s.sample(b"\x00\x00\x80\x3f")
        with pytest.raises(moerun.InvalidArgumentError, match="sequence of floats"):
            s.sample(3.0)
        with pytest.raises(ValueError):
            s.sample(["a", "b"])
        with pytest.raises(moerun.InvalidArgumentError, match="n_vocab is 0"):
            s.sample([])


@pytest.mark.skipif(not numpy_available(), reason="numpy is not importable")
def test_numpy_inputs() -> None:
    import numpy as np

    with moerun.Sampler() as s:
        assert s.sample(np.array(ROW, dtype=np.float32)) == 1
        assert s.sample(np.array(ROW, dtype=np.float64)) == 1  # converted
        assert s.sample(np.array(ROW * 2, dtype=np.float32)[::2]) == 3  # strided: made contiguous
        with pytest.raises(moerun.InvalidArgumentError, match="1-D"):
            s.sample(np.zeros((2, 3), dtype=np.float32))


def test_seeded_sampling_is_reproducible() -> None:
    row = [math.sin(i) for i in range(300)]

    def draw(seed: int) -> Any:
        with moerun.Sampler(temperature=1.0, seed=seed) as s:
            return [s.sample(row) for _ in range(40)]

    assert draw(5) == draw(5)
    assert draw(5) != draw(6)
    assert len(set(draw(5))) > 3  # temperature 1 over a flat-ish row: not always the same id


def test_truncation_parameters() -> None:
    row = [0.0] * 10
    row[7], row[2] = 10.0, 9.9
    with moerun.Sampler(temperature=1.0, top_k=1, seed=1) as s:
        assert {s.sample(row) for _ in range(20)} == {7}
    with moerun.Sampler(temperature=1.0, top_k=2, seed=1) as s:
        assert {s.sample(row) for _ in range(100)} == {2, 7}
    with moerun.Sampler(temperature=1.0, top_p=0.3, seed=1) as s:
        assert {s.sample(row) for _ in range(20)} == {7}
    with moerun.Sampler(temperature=1.0, min_p=0.5, seed=1) as s:
        assert {s.sample(row) for _ in range(100)} == {2, 7}
    with moerun.Sampler(temperature=1.0, seed=2**64 - 1) as s:
        assert 0 <= s.sample(row) < 10


@pytest.mark.parametrize("kw,match", [
    ({"temperature": -1.0}, "temperature"),
    ({"temperature": float("nan")}, "temperature"),
    ({"temperature": float("inf")}, "temperature"),
    ({"top_k": -1}, "top_k"),
    ({"top_p": 0.0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"min_p": 1.0}, "min_p"),
    ({"min_p": -0.1}, "min_p"),
])
def test_bad_parameters_from_the_library(kw: Any, match: str) -> None:
    with pytest.raises(moerun.InvalidArgumentError, match=match) as e:
        moerun.Sampler(**kw)
    assert e.value.status == moerun.Status.INVALID_ARGUMENT


@pytest.mark.parametrize("kw,match", [
    ({"seed": -1}, "seed"),
    ({"seed": 2**64}, "seed"),
    ({"top_k": 2**31}, "top_k"),
    ({"top_k": 1.5}, "top_k"),
    ({"temperature": "hot"}, "temperature"),
    ({"temperature": True}, "temperature"),
])
def test_bad_parameters_caught_in_python(kw: Any, match: str) -> None:
    with pytest.raises(moerun.InvalidArgumentError, match=match):
        moerun.Sampler(**kw)


def test_closed_sampler_raises() -> None:
    s = moerun.Sampler()
    s.close()
    s.close()
    assert s.closed
    with pytest.raises(moerun.InvalidArgumentError, match="sampler is closed"):
        s.sample(ROW)


def test_closed_sampler_in_generate(model: moerun.Model) -> None:
    s = moerun.Sampler()
    s.close()
    with moerun.Session(model) as sess:
        with pytest.raises(moerun.InvalidArgumentError, match="sampler is closed"):
            sess.generate([1, 2], 3, sampler=s)
        with pytest.raises(moerun.InvalidArgumentError, match="sampler is closed"):
            list(sess.stream([1, 2], 3, sampler=s))
