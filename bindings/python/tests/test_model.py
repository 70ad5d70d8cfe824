"""moerun.Model: loading from a path and from memory, info, options, progress, errors, lifetime."""

from __future__ import annotations

import dataclasses
import gc
import os
from pathlib import Path
from typing import Any, List

import pytest

import moerun
from moerun import _lib


def test_info_has_every_c_field(model: moerun.Model, model_path: Path) -> None:
    c_fields = [f[0] for f in _lib.ModelInfo._fields_ if f[0] != "struct_size"]
    assert [f.name for f in dataclasses.fields(moerun.ModelInfo)] == c_fields
    i = model.info
    # tests/data/golden/README.md: v3_bf16 shapes.
    assert (i.architecture, i.backend) == ("DeepseekV3", "cpu")
    assert (i.vocab_size, i.hidden_size, i.num_layers, i.num_heads) == (384, 160, 3, 3)
    assert (i.n_routed_experts, i.n_shared_experts, i.num_experts_per_tok) == (16, 1, 3)
    assert (i.kv_lora_rank, i.qk_rope_head_dim, i.max_position_embeddings) == (64, 16, 4 * 256)
    assert (i.bos_token_id, i.eos_token_id) == (0, 1)
    # Latent KV: the normalised latent and the rope key per layer, float32.
    assert i.kv_bytes_per_token == i.num_layers * (i.kv_lora_rank + i.qk_rope_head_dim) * 4
    assert 0 < i.weight_bytes < os.path.getsize(model_path)
    assert i.has_mtp is True
    with pytest.raises(dataclasses.FrozenInstanceError):
        i.vocab_size = 1  # type: ignore[misc]


def test_v2_info(convert: Any) -> None:
    with moerun.Model(convert("v2lite_bf16")) as m:
        assert m.info.architecture == "DeepseekV2" and m.info.vocab_size == 512 and m.info.has_mtp is False


def test_path_types(model_path: Path) -> None:
    for p in (model_path, str(model_path), os.fsencode(model_path)):
        with moerun.Model(p) as m:
            assert m.info.vocab_size == 384
    with pytest.raises(moerun.InvalidArgumentError, match="path must be"):
        moerun.Model(123)  # type: ignore[arg-type]
    with pytest.raises(moerun.InvalidArgumentError, match="NUL"):
        moerun.Model(str(model_path) + "\0x")


def test_backends_and_precisions(model_path: Path) -> None:
    with moerun.Model(model_path, backend="reference", precision="bf16", n_threads=1) as m:
        assert m.info.backend == "reference"
    with moerun.Model(model_path, backend="cpu", precision="bf16") as m:
        assert m.info.backend == "cpu"
    with pytest.raises(moerun.UnsupportedError) as e:
        moerun.Model(model_path, backend="tpu")
    assert e.value.status == moerun.Status.UNSUPPORTED and "tpu" in e.value.message
    with pytest.raises(moerun.InvalidArgumentError, match="precision"):
        moerun.Model(model_path, precision="fp16")


def test_auto_precision_follows_the_weights(model_path: Path, convert: Any) -> None:
    # The default: bf16 (int8 activations) for int8 weights, f32 for any other file.
    for path, want in ((model_path, "f32"), (convert("v3_bf16", "int8"), "bf16")):
        with moerun.Model(path) as m:
            assert m.info.precision == want
        for explicit in ("f32", "bf16"):
            with moerun.Model(path, precision=explicit) as m:
                assert m.info.precision == explicit
    with pytest.raises(moerun.InvalidArgumentError, match="backend"):
        moerun.Model(model_path, backend=3)  # type: ignore[arg-type]
    with pytest.raises(moerun.InvalidArgumentError, match="n_threads"):
        moerun.Model(model_path, n_threads=-1)
    with pytest.raises(moerun.InvalidArgumentError, match="int32"):
        moerun.Model(model_path, n_threads=2**40)


def test_missing_file_is_an_io_error(tmp_path: Path) -> None:
    missing = tmp_path / "missing.moerun"
    with pytest.raises(moerun.MoerunIOError) as e:
        moerun.Model(missing)
    assert isinstance(e.value, OSError) and isinstance(e.value, moerun.MoerunError)
    assert e.value.status == moerun.Status.IO and str(missing) in str(e.value)


@pytest.mark.parametrize("how", ["garbage", "truncated", "header only", "empty"])
def test_corrupt_file(model_path: Path, tmp_path: Path, how: str) -> None:
    data = model_path.read_bytes()
    blob = {
        "garbage": bytes(range(256)) * 40,
        "truncated": data[: len(data) // 2],
        "header only": data[:30],
        "empty": b"",
    }[how]
    bad = tmp_path / "bad.moerun"
    bad.write_bytes(blob)
    with pytest.raises(moerun.CorruptFileError) as e:
        moerun.Model(bad)
    assert e.value.status == moerun.Status.CORRUPT_FILE and e.value.message
    with pytest.raises(moerun.CorruptFileError):
        moerun.Model.from_bytes(blob)


def test_flipped_weight_byte_is_caught_by_verify_weights(model_path: Path) -> None:
    data = bytearray(model_path.read_bytes())
    data[-100] ^= 0xFF  # inside the last tensor's weights
    with moerun.Model.from_bytes(bytes(data)) as m:  # only headers and metadata are verified by default
        assert m.info.vocab_size == 384
    with pytest.raises(moerun.CorruptFileError, match="checksum"):
        moerun.Model.from_bytes(bytes(data), verify_weights=True)


def test_from_bytes_variants(model_path: Path) -> None:
    data = model_path.read_bytes()
    with moerun.Model(model_path) as ref, moerun.Model.from_bytes(data) as m:
        assert m.info == ref.info
    ba = bytearray(data)
    m = moerun.Model.from_bytes(ba)
    # The buffer is exported for as long as the model exists, so it cannot be resized under it.
    with pytest.raises(BufferError):
        ba.extend(b"x")
    m.close()
    ba.extend(b"x")
    with moerun.Model.from_bytes(memoryview(data)) as m:  # read-only buffer: copied
        assert m.info.num_layers == 3
    with pytest.raises(moerun.InvalidArgumentError, match="bytes-like"):
        moerun.Model.from_bytes("not bytes")
    with pytest.raises(moerun.InvalidArgumentError, match="contiguous"):
        moerun.Model.from_bytes(memoryview(ba)[::2])


def test_from_bytes_keeps_the_buffer_alive(model_path: Path) -> None:
    m = moerun.Model.from_bytes(bytearray(model_path.read_bytes()))
    gc.collect()
    with moerun.Session(m) as s:
        assert len(s.generate([3, 4, 5], 4)) == 4
    m.close()


def test_progress_is_reported_with_verify_weights(model_path: Path) -> None:
    seen: List[float] = []
    with moerun.Model(model_path, verify_weights=True, progress=seen.append):
        pass
    assert len(seen) > 1 and seen == sorted(seen) and seen[-1] == pytest.approx(1.0)


def test_progress_returning_false_cancels(model_path: Path) -> None:
    calls: List[float] = []

    def stop_at_half(f: float) -> bool:
        calls.append(f)
        return f < 0.5

    with pytest.raises(moerun.CancelledError) as e:
        moerun.Model(model_path, verify_weights=True, progress=stop_at_half)
    assert e.value.status == moerun.Status.CANCELLED and "cancel" in e.value.message
    assert calls[-1] >= 0.5 and all(f < 0.5 for f in calls[:-1])


def test_progress_exception_propagates(model_path: Path) -> None:
    class Boom(Exception):
        pass

    calls = []

    def boom(f: float) -> None:
        calls.append(f)
        raise Boom("from progress")

    with pytest.raises(Boom, match="from progress") as e:
        moerun.Model.from_bytes(model_path.read_bytes(), verify_weights=True, progress=boom)
    assert len(calls) == 1  # the load stopped at the first call
    assert isinstance(e.value.__context__, moerun.CancelledError)
    with pytest.raises(moerun.InvalidArgumentError, match="callable"):
        moerun.Model(model_path, progress=3)  # type: ignore[arg-type]


def test_close_is_idempotent_and_closed_model_raises(model_path: Path) -> None:
    m = moerun.Model(model_path)
    assert not m.closed and "DeepseekV3" in repr(m)
    m.close()
    m.close()
    assert m.closed and "closed" in repr(m)
    with pytest.raises(moerun.InvalidArgumentError, match="model is closed"):
        _ = m.info
    with pytest.raises(moerun.InvalidArgumentError, match="model is closed"):
        moerun.Session(m)
    with moerun.Model(model_path) as m2:
        pass
    assert m2.closed


def test_closing_the_model_waits_for_its_sessions(model_path: Path) -> None:
    m = moerun.Model(model_path)
    s = moerun.Session(m)
    m.close()
    assert m.closed and m._handle is not None  # destroyed only once the session is gone
    assert len(s.generate([5, 6], 3)) == 3
    s.close()
    assert m._handle is None


def test_session_keeps_its_model_alive(model_path: Path) -> None:
    def make() -> moerun.Session:
        return moerun.Session(moerun.Model(model_path))

    s = make()
    gc.collect()
    assert s.model.info.vocab_size == 384
    assert len(s.generate([7, 8, 9], 5)) == 5
    s.close()
