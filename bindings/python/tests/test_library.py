"""Library-level functions and finding the shared library (each discovery case in a fresh process,
since the library is loaded once per process)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

import moerun
from conftest import python_env, run_python

PACKAGE_DIR = Path(moerun.__file__).resolve().parent


def test_version_and_abi() -> None:
    assert moerun.version() == "0.1.0"
    assert moerun.abi_version() == moerun.ABI_VERSION == 1
    assert os.path.exists(moerun.library_path())


def test_status_string() -> None:
    assert moerun.status_string(moerun.Status.IO) == "MOERUN_ERR_IO"
    assert moerun.status_string(0) == "MOERUN_OK"
    assert moerun.status_string(99) == "MOERUN_ERR_UNKNOWN"


def test_every_status_has_its_exception_class() -> None:
    from moerun._errors import error_for

    expected = {
        moerun.Status.INVALID_ARGUMENT: (moerun.InvalidArgumentError, ValueError),
        moerun.Status.IO: (moerun.MoerunIOError, OSError),
        moerun.Status.CORRUPT_FILE: (moerun.CorruptFileError, moerun.MoerunError),
        moerun.Status.UNSUPPORTED: (moerun.UnsupportedError, moerun.MoerunError),
        moerun.Status.OUT_OF_MEMORY: (moerun.OutOfMemoryError, MemoryError),
        moerun.Status.KV_CACHE_FULL: (moerun.KvCacheFullError, moerun.MoerunError),
        moerun.Status.CANCELLED: (moerun.CancelledError, moerun.MoerunError),
        moerun.Status.BACKEND: (moerun.BackendError, moerun.MoerunError),
        moerun.Status.INTERNAL: (moerun.InternalError, moerun.MoerunError),
    }
    for status, (cls, base) in expected.items():
        err = error_for(int(status), "the message")
        assert type(err) is cls and isinstance(err, base) and isinstance(err, moerun.MoerunError)
        assert err.status == status and err.message == "the message" and str(err) == "the message"
    unknown = error_for(42, "x")
    assert type(unknown) is moerun.MoerunError and "42" in str(unknown)
    assert issubclass(moerun.LibraryNotFoundError, ImportError)
    assert issubclass(moerun.AbiMismatchError, ImportError)


def _env_without_library(**extra: str) -> dict:
    return python_env(extra, drop=["MOERUN_LIBRARY"])


def test_moerun_library_env_var_is_used() -> None:
    lib = os.path.realpath(moerun.library_path())
    r = run_python("import moerun; print(moerun.library_path()); print(moerun.version())",
                   python_env({"MOERUN_LIBRARY": lib}))
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [lib, "0.1.0"]


def test_moerun_library_env_var_pointing_nowhere_fails_clearly(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope" / "libmoerun.so")
    code = (
        "import moerun\n"
        "try:\n"
        "    moerun.version()\n"
        "except moerun.LibraryNotFoundError as e:\n"
        "    assert isinstance(e, ImportError)\n"
        "    print(e)\n"
        "else:\n"
        "    raise SystemExit('loaded')\n"
    )
    r = run_python(code, python_env({"MOERUN_LIBRARY": missing}))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "$MOERUN_LIBRARY" in r.stdout and missing in r.stdout and "no such file" in r.stdout
    # An explicit choice is not silently replaced by another copy of the library.
    assert "install prefix" not in r.stdout


def test_moerun_library_env_var_pointing_at_a_non_library(tmp_path: Path) -> None:
    bogus = tmp_path / "libmoerun.so"
    bogus.write_text("not an ELF file")
    r = run_python("import moerun\ntry:\n    moerun.version()\nexcept moerun.LibraryNotFoundError as e:\n    print(e)\n",
                   python_env({"MOERUN_LIBRARY": str(bogus)}))
    assert r.returncode == 0, r.stderr
    assert str(bogus) in r.stdout


def test_library_next_to_the_package_is_found(tmp_path: Path) -> None:
    pkg = tmp_path / "site" / "moerun"
    shutil.copytree(PACKAGE_DIR, pkg, ignore=shutil.ignore_patterns("__pycache__", "libmoerun.so*"))
    os.symlink(os.path.realpath(moerun.library_path()), pkg / "libmoerun.so.1")
    r = run_python("import moerun; print(moerun.__file__); print(moerun.library_path()); print(moerun.version())",
                   _env_without_library(PYTHONPATH=str(tmp_path / "site")))
    assert r.returncode == 0, r.stderr
    mod_file, lib, ver = r.stdout.split()
    assert Path(mod_file).parent == pkg
    assert lib == str(pkg / "libmoerun.so.1") and ver == "0.1.0"


def test_library_in_the_install_prefix_is_found(tmp_path: Path) -> None:
    import sysconfig

    multiarch = sysconfig.get_config_var("MULTIARCH")
    layouts = [["lib"]] + ([["lib", multiarch]] if multiarch else [])
    for sub in layouts:
        prefix = tmp_path / "-".join(sub)
        libdir = prefix.joinpath(*sub)
        libdir.mkdir(parents=True)
        os.symlink(os.path.realpath(moerun.library_path()), libdir / "libmoerun.so.1")
        # sys.prefix is where `cmake --install --prefix` put the library for a venv made there.
        code = f"import sys; sys.prefix = {str(prefix)!r}; import moerun; print(moerun.library_path())"
        r = run_python(code, _env_without_library())
        assert r.returncode == 0, r.stderr
        # A library next to the package wins over the prefix; the installed package has none.
        assert r.stdout.strip() == str(libdir / "libmoerun.so.1")


def test_library_not_found_lists_every_place_tried(tmp_path: Path) -> None:
    code = (
        f"import sys; sys.prefix = sys.base_prefix = {str(tmp_path)!r}\n"
        "import moerun\n"
        "try:\n"
        "    moerun.version()\n"
        "except moerun.LibraryNotFoundError as e:\n"
        "    print(e)\n"
        "else:\n"
        "    print('LOADED', moerun.library_path())\n"
    )
    r = run_python(code, _env_without_library(LD_LIBRARY_PATH=""))
    assert r.returncode == 0, r.stderr
    if r.stdout.startswith("LOADED"):
        pytest.skip(f"libmoerun.so.1 is installed system-wide ({r.stdout.strip()}); cannot test the failure")
    assert "could not load libmoerun" in r.stdout
    assert str(tmp_path / "lib" / "libmoerun.so.1") in r.stdout
    assert "system loader: libmoerun.so.1" in r.stdout
    assert "MOERUN_LIBRARY" in r.stdout  # the hint


def test_abi_mismatch_is_refused_at_load() -> None:
    code = (
        "import moerun, moerun._lib as L\n"
        "L.ABI_VERSION = 2\n"
        "try:\n"
        "    moerun.version()\n"
        "except moerun.AbiMismatchError as e:\n"
        "    print(e)\n"
    )
    r = run_python(code, python_env())
    assert r.returncode == 0, r.stderr
    assert "ABI version 1" in r.stdout and "written for ABI version 2" in r.stdout


def test_import_does_not_need_the_library() -> None:
    r = run_python("import moerun; print(moerun.ABI_VERSION)", python_env({"MOERUN_LIBRARY": "/nonexistent.so"}))
    assert r.returncode == 0 and r.stdout.strip() == "1", r.stderr


def test_package_is_typed() -> None:
    assert (PACKAGE_DIR / "py.typed").is_file()
    assert sys.modules["moerun"].__all__
