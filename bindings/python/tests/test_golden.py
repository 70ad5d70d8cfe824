"""Logits through the Python binding against HF transformers' (tests/data/golden): each fixture is
converted with the CLI, every prompt is prefilled with logits at every position, and the rows are
compared with prefill_logits.{i} using the bounds of tests/unit/golden_test.cc."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any, Dict

import pytest

import moerun
from conftest import FIXTURES, GOLDEN

np = pytest.importorskip("numpy")

_DTYPES = {"F32": "<f4", "I32": "<i4", "BF16": "<u2", "F16": "<f2", "I64": "<i8"}


def read_safetensors(path: Path) -> Dict[str, Any]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8: 8 + n])
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        begin, end = t["data_offsets"]
        dtype = np.dtype(_DTYPES[t["dtype"]])
        out[name] = np.frombuffer(raw, dtype=dtype, count=(end - begin) // dtype.itemsize,
                                  offset=8 + n + begin).reshape(t["shape"])
    return out


def row_errors(ours: Any, ref: Any) -> Any:
    ours, ref = ours.astype(np.float64), ref.astype(np.float64)
    return np.sqrt(((ours - ref) ** 2).sum(axis=1) / (ref ** 2).sum(axis=1))


def prefill_errors(path: Path, golden: Dict[str, Any], precision: str) -> Any:
    rows = []
    with moerun.Model(path, precision=precision) as m:
        V = m.info.vocab_size
        i = 0
        while f"prompt.{i}" in golden:
            prompt, ref = golden[f"prompt.{i}"], golden[f"prefill_logits.{i}"]
            assert ref.shape == (len(prompt), V)
            with moerun.Session(m, kv_capacity=len(prompt), max_batch_tokens=len(prompt)) as s:
                s.decode(prompt, logits=True)
                ours = np.stack([s.logits(t) for t in range(len(prompt))])
            assert ours.dtype == np.float32 and ours.shape == ref.shape
            whole = np.sqrt(((ours.astype(np.float64) - ref) ** 2).sum() / (ref.astype(np.float64) ** 2).sum())
            if precision == "f32":
                assert whole <= 1e-4, f"prompt {i}: relative L2 {whole:.3g}"
            rows.append(row_errors(ours, ref))
            i += 1
        assert i > 0
    return np.concatenate(rows)


@pytest.mark.parametrize("fixture", FIXTURES)
def test_f32_prefill_matches_transformers(fixture: str, convert: Any) -> None:
    golden = read_safetensors(GOLDEN / fixture / "golden.safetensors")
    errs = prefill_errors(convert(fixture), golden, "f32")
    median, p90 = np.quantile(errs, 0.5), np.quantile(errs, 0.9)
    print(f"[golden/python] {fixture} f32: per position median {median:.3g} p90 {p90:.3g} max {errs.max():.3g}")
    assert median <= 1e-4 and p90 <= 1e-4


def test_bf16_prefill_within_stated_bounds(convert: Any) -> None:
    golden = read_safetensors(GOLDEN / "v3_bf16" / "golden.safetensors")
    errs = prefill_errors(convert("v3_bf16"), golden, "bf16")
    median, p90 = np.quantile(errs, 0.5), np.quantile(errs, 0.9)
    print(f"[golden/python] v3_bf16 bf16: per position median {median:.3g} p90 {p90:.3g}")
    assert median <= 1e-2 and p90 <= 3e-2
    assert median > 1e-6  # the bf16 path really rounds: it is not the f32 path under another name


def test_golden_reader_round_trips(tmp_path: Path) -> None:
    header = {"a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
              "b": {"dtype": "I32", "shape": [3], "data_offsets": [16, 28]}}
    blob = json.dumps(header).encode()
    data = np.arange(4, dtype="<f4").tobytes() + np.array([7, 8, 9], dtype="<i4").tobytes()
    (tmp_path / "t.safetensors").write_bytes(struct.pack("<Q", len(blob)) + blob + data)
    got = read_safetensors(tmp_path / "t.safetensors")
    assert got["a"].tolist() == [[0, 1], [2, 3]] and got["b"].tolist() == [7, 8, 9]
