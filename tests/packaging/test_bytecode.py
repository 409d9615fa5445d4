"""infra/serverless/bytecode.py: the runtime's bytecode added to a Lambda zip, and found interpreters.

Runs with this interpreter as "the runtime's Python" (the real packaging run, with Python 3.12 and
the real zips, is checked in test_serverless_package.py).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.support.bytecode_tool import bytecode_tool as _tool

HERE_VERSION = f"{sys.version_info[0]}.{sys.version_info[1]}"
TAG = sys.implementation.cache_tag
FILES = {
    "main.py": b"import pkg.mod\n",
    "pkg/__init__.py": b"",
    "pkg/mod.py": b"# -*- coding: latin-1 -*-\nVALUE = 1\nNAME = '\xe9'\n",
    "pkg/broken.py": b"def broken(:\n",
    "pkg/data.txt": b"not python\n",
    "pkg/sub/": b"",
}


@pytest.fixture
def lambda_zip(tmp_path: Path) -> Path:
    path = tmp_path / "function.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in FILES.items():
            info = zipfile.ZipInfo(name, date_time=(2026, 1, 2, 3, 4, 6))
            info.external_attr = (0o40755 if name.endswith("/") else 0o100644) << 16
            archive.writestr(info, data)
    return path


def _entries(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as archive:
        return {info.filename: archive.read(info) for info in archive.infolist()}


def test_adds_unchecked_hash_bytecode_beside_every_module_and_keeps_the_rest(lambda_zip: Path) -> None:
    assert _tool().main(["--python-version", HERE_VERSION, str(lambda_zip)]) == 0
    entries = _entries(lambda_zip)
    expected_pycs = {
        f"__pycache__/main.{TAG}.pyc",
        f"pkg/__pycache__/__init__.{TAG}.pyc",
        f"pkg/__pycache__/mod.{TAG}.pyc",
    }
    assert set(entries) == set(FILES) | expected_pycs  # broken.py gets none: it does not compile
    assert [n for n in entries if n in FILES] == list(FILES)  # the original entries, in order
    assert all(entries[name] == data for name, data in FILES.items())
    for pyc in expected_pycs:
        assert entries[pyc][:4] == importlib.util.MAGIC_NUMBER
        assert int.from_bytes(entries[pyc][4:8], "little") == 0b01  # hash-based, source not checked
    with zipfile.ZipFile(lambda_zip) as archive:
        assert archive.getinfo("pkg/sub/").external_attr >> 16 == 0o40755  # modes survive the rewrite


def test_python_imports_the_added_bytecode_without_reading_the_source(
    lambda_zip: Path, tmp_path: Path
) -> None:
    _tool().main(["--python-version", HERE_VERSION, str(lambda_zip)])
    task = tmp_path / "task"
    with zipfile.ZipFile(lambda_zip) as archive:
        archive.extractall(task)
    # If Python compiled the source instead of loading the bytecode, it would see the new value.
    (task / "pkg" / "mod.py").write_text("VALUE = 2\nNAME = 'changed'\n")
    probe = (
        f"import sys; sys.path.insert(0, {str(task)!r}); import main, pkg.mod as m; print(m.VALUE, m.NAME)"
    )
    done = subprocess.run(
        [sys.executable, "-I", "-B", "-c", probe], capture_output=True, text=True, check=True
    )
    assert done.stdout.split() == ["1", "é"], done


def test_running_again_replaces_its_own_bytecode(lambda_zip: Path) -> None:
    tool = _tool()
    tool.main(["--python-version", HERE_VERSION, str(lambda_zip)])
    first = _entries(lambda_zip)
    tool.main(["--python-version", HERE_VERSION, str(lambda_zip)])
    with zipfile.ZipFile(lambda_zip) as archive:
        names = archive.namelist()
    assert len(names) == len(set(names)) == len(first)
    assert _entries(lambda_zip) == first


@pytest.fixture
def no_interpreters(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """PATH without any pythonX.Y and an empty pyenv root; returns that root."""
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.setenv("PYENV_ROOT", str(tmp_path / "pyenv"))
    monkeypatch.delenv("NEXUS_BYTECODE_PYTHON", raising=False)
    return tmp_path / "pyenv"


def test_without_an_interpreter_of_that_version_the_zip_is_left_as_it_is(
    lambda_zip: Path, no_interpreters: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = lambda_zip.read_bytes()
    assert _tool().main(["--python-version", "3.99", str(lambda_zip)]) == 0
    assert "no Python 3.99 found (set NEXUS_BYTECODE_PYTHON)" in capsys.readouterr().err
    assert lambda_zip.read_bytes() == before
    assert _tool().main(["--python-version", "3.99", "--require", str(lambda_zip)]) == 2


def test_a_nexus_bytecode_python_of_another_version_is_refused(
    lambda_zip: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("NEXUS_BYTECODE_PYTHON", sys.executable)
    assert _tool().main(["--python-version", "3.99", str(lambda_zip)]) == 2
    err = capsys.readouterr().err
    assert f"NEXUS_BYTECODE_PYTHON={sys.executable} is Python {HERE_VERSION}" in err
    assert "Python 3.99" in err


def test_finds_a_pyenv_version_when_none_is_on_path(no_interpreters: Path) -> None:
    tool = _tool()
    assert tool.find_interpreter(HERE_VERSION) is None
    for patch in ("0", "11", "2"):  # the newest patch release wins
        folder = no_interpreters / "versions" / f"{HERE_VERSION}.{patch}" / "bin"
        folder.mkdir(parents=True)
        (folder / f"python{HERE_VERSION}").symlink_to(sys.executable)
    (no_interpreters / "versions" / f"{HERE_VERSION}-dev").mkdir()  # not a release: ignored
    found = tool.find_interpreter(HERE_VERSION)
    assert found == str(no_interpreters / "versions" / f"{HERE_VERSION}.11" / "bin" / f"python{HERE_VERSION}")
    assert tool.find_interpreter("3.99") is None
