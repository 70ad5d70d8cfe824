"""The paths taken without numpy: logits as array.array('f'), sampling from plain buffers."""

from __future__ import annotations

import array
import sys
from pathlib import Path

import pytest

import moerun
from conftest import numpy_available, python_env, run_python


def test_logits_without_numpy_in_process(model: moerun.Model, monkeypatch: pytest.MonkeyPatch) -> None:
    with moerun.Session(model) as s:
        s.decode([3, 4, 5], logits=True)
        with_numpy = s.logits(2) if numpy_available() else None
        # A None entry in sys.modules makes `import numpy` raise ImportError.
        monkeypatch.setitem(sys.modules, "numpy", None)
        row = s.logits(2)
        assert isinstance(row, array.array) and row.typecode == "f" and len(row) == model.info.vocab_size
        if with_numpy is not None:
            assert list(row) == with_numpy.tolist()
        with moerun.Sampler() as smp:
            best = max(range(len(row)), key=lambda i: (row[i], -i))
            assert smp.sample(row) == best
            assert smp.sample(list(row)) == best
        s.clear()
        streamed = list(s.stream([6, 7], 3))
        s.clear()
        assert streamed == s.generate([6, 7], 3)


def test_whole_flow_in_a_process_without_numpy(model_path: Path) -> None:
    code = (
        "import array, sys, moerun\n"
        f"m = moerun.Model({str(model_path)!r})\n"
        "s = moerun.Session(m)\n"
        "s.decode([3, 4, 5], logits=True)\n"
        "row = s.logits(1)\n"
        "assert isinstance(row, array.array) and row.typecode == 'f' and len(row) == m.info.vocab_size\n"
        "s.clear()\n"
        "a = s.generate([9, 10], 4)\n"
        "s.clear()\n"
        "b = list(s.stream([9, 10], 4))\n"
        "assert a == b, (a, b)\n"
        "assert moerun.Sampler().sample(row) == max(range(len(row)), key=lambda i: (row[i], -i))\n"
        "assert 'numpy' not in sys.modules\n"
        "print('OK', type(row).__name__)\n"
    )
    r = run_python(code, python_env(), block_numpy=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "OK array"
