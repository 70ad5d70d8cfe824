"""Shared fixtures. The build directory (with the `moerun` CLI, used to convert the golden fixtures)
comes from $MOERUN_BUILD_DIR or --build-dir; `--no-numpy` runs the suite with numpy unimportable."""

from __future__ import annotations

import importlib.abc
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Sequence

import pytest

REPO = Path(__file__).resolve().parents[3]
GOLDEN = REPO / "tests" / "data" / "golden"
FIXTURES = ["v2_grouped_bf16", "v2lite_bf16", "v3_bf16", "v3_fp8"]


class BlockNumpy(importlib.abc.MetaPathFinder):
    """Makes `import numpy` fail as if it were not installed."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if name == "numpy" or name.startswith("numpy."):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the moerun test suite)", name=name)
        return None


# Source of a sitecustomize-free blocker for subprocesses (tests run `python -c BLOCK_NUMPY + code`).
BLOCK_NUMPY = """
import sys, importlib.abc
class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == 'numpy' or name.startswith('numpy.'):
            raise ModuleNotFoundError("numpy blocked", name=name)
        return None
sys.meta_path.insert(0, _Block())
"""


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--build-dir", default=None, help="moerun build directory (default: $MOERUN_BUILD_DIR)")
    parser.addoption("--no-numpy", action="store_true", help="run with numpy blocked")


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("--no-numpy"):
        for name in [m for m in sys.modules if m == "numpy" or m.startswith("numpy.")]:
            del sys.modules[name]
        sys.meta_path.insert(0, BlockNumpy())


@pytest.fixture(scope="session")
def build_dir(request: pytest.FixtureRequest) -> Path:
    value = request.config.getoption("--build-dir") or os.environ.get("MOERUN_BUILD_DIR")
    if not value:
        raise pytest.UsageError("set MOERUN_BUILD_DIR or pass --build-dir (a moerun build directory)")
    path = Path(value).resolve()
    if not (path / "moerun").is_file():
        raise pytest.UsageError(f"{path} has no `moerun` CLI; build moerun there first")
    return path


@pytest.fixture(scope="session")
def work_dir(build_dir: Path) -> Path:
    """Generated files go under the build directory, never the source tree."""
    d = build_dir / "python-tests"
    d.mkdir(exist_ok=True)
    return d


_converted: Dict[str, Path] = {}


@pytest.fixture(scope="session")
def convert(build_dir: Path, work_dir: Path) -> Any:
    def run(fixture: str, weights: str = "keep") -> Path:
        key = f"{fixture}-{weights}"
        if key not in _converted:
            out = work_dir / f"{key}.moerun"
            subprocess.run([str(build_dir / "moerun"), "convert", str(GOLDEN / fixture), "-o", str(out),
                            "--weights", weights], check=True, capture_output=True)
            _converted[key] = out
        return _converted[key]

    return run


@pytest.fixture(scope="session")
def model_path(convert: Any) -> Path:
    """v3_bf16 (vocab 384, eos 1): the model most tests run."""
    return convert("v3_bf16")  # type: ignore[no-any-return]


@pytest.fixture
def model(model_path: Path) -> Iterator[Any]:
    import moerun

    with moerun.Model(model_path) as m:
        yield m


@pytest.fixture(autouse=True)
def _restore_log_sink() -> Iterator[None]:
    yield
    import moerun

    moerun.set_log_callback(None, moerun.LogLevel.WARNING)


def numpy_available() -> bool:
    try:
        import numpy  # noqa: F401
    except ImportError:
        return False
    return True


def python_env(extra: Optional[Dict[str, str]] = None, drop: Sequence[str] = ()) -> Dict[str, str]:
    env = dict(os.environ)
    for k in drop:
        env.pop(k, None)
    env.update(extra or {})
    return env


def run_python(code: str, env: Dict[str, str], block_numpy: bool = False) -> "subprocess.CompletedProcess[str]":
    return subprocess.run([sys.executable, "-c", (BLOCK_NUMPY if block_numpy else "") + code], env=env,
                          capture_output=True, text=True, timeout=300)
