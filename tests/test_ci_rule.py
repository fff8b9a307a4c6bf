"""The CI rule for skips: a test that lacks a tool, an extra or a privilege skips locally and fails under
``CI=true`` (any case), whether it asks through ``servers.unavailable`` or skips some other way."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from servers import in_ci

TESTS = Path(__file__).resolve().parent

NEEDS = """
import pytest
from servers import require, require_root, require_tool, unavailable

def test_plain_skip():
    pytest.skip("a skip that bypasses the helper")

def test_require():
    require("lockstore_no_such_extra")

def test_tool():
    require_tool("lockstore-no-such-tool", "no-such-package")

def test_unavailable():
    unavailable("a missing privilege")

@pytest.mark.skipif(True, reason="a skip marker")
def test_marker():
    pass

@pytest.mark.xfail(reason="an expected failure is not a skip", strict=True)
def test_xfail():
    assert False

def test_ok():
    pass
"""

MODULE_LEVEL = """
from servers import require

extra = require("lockstore_no_such_extra")

def test_never_runs():
    pass
"""


def run(tmp_path: Path, ci: str | None) -> str:
    """Run the two modules above in a fresh pytest with this suite's conftest; its report (``-rA``)."""
    (tmp_path / "test_needs.py").write_text(NEEDS)
    (tmp_path / "test_module_level.py").write_text(MODULE_LEVEL)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), str(TESTS.parent)])
    options = ["-p", "conftest", "-p", "no:cacheprovider", "-q", "-rA", "--continue-on-collection-errors"]
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", *options, "--rootdir", str(tmp_path), "-c", os.devnull, str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert "short test summary info" in proc.stdout, proc.stdout + proc.stderr
    return proc.stdout


def outcomes(report: str) -> dict[str, str]:
    """Outcome per test id (per reason for skips) in a ``-rA`` report."""
    found: dict[str, str] = {}
    for line in report.splitlines():
        word, _, rest = line.partition(" ")
        if word == "SKIPPED":
            found[rest.split(": ", 1)[-1]] = word  # "[n] file:line: reason"
        elif word in ("PASSED", "FAILED", "ERROR", "XFAIL"):
            found[rest.split(" - ", 1)[0]] = word
    return found


@pytest.mark.parametrize("ci", ["TRUE"])
def test_under_ci_every_missing_requirement_fails(tmp_path: Path, ci: str) -> None:
    got = outcomes(run(tmp_path, ci))
    assert got == {
        "test_needs.py::test_plain_skip": "FAILED",
        "test_needs.py::test_require": "FAILED",
        "test_needs.py::test_tool": "FAILED",
        "test_needs.py::test_unavailable": "FAILED",
        "test_needs.py::test_marker": "ERROR",  # a skip marker is reported in set-up
        "test_needs.py::test_xfail": "XFAIL",
        "test_needs.py::test_ok": "PASSED",
        "test_module_level.py": "ERROR",  # a module that cannot even be imported
    }, got


@pytest.mark.parametrize("ci", [None, "false"])
def test_outside_ci_a_missing_requirement_skips(tmp_path: Path, ci: str | None) -> None:
    report = run(tmp_path, ci)
    assert report.splitlines()[-1].startswith("1 passed, 6 skipped, 1 xfailed in "), report
    got = outcomes(report)
    assert [reason for reason, outcome in got.items() if outcome == "SKIPPED"] == [
        "lockstore_no_such_extra (No module named 'lockstore_no_such_extra') is not installed (pip install -e"
        " '.[test]')",  # the module and the test
        "a skip that bypasses the helper",
        "lockstore-no-such-tool is not installed (apt-get install -y no-such-package)",
        "a missing privilege",
        "a skip marker",
    ], report


def test_in_ci_reads_the_variable_as_ci_services_set_it(monkeypatch: pytest.MonkeyPatch) -> None:
    for value, expected in [("true", True), ("TRUE", True), (" True ", True), ("false", False), ("", False)]:
        monkeypatch.setenv("CI", value)
        assert in_ci() is expected, value
    monkeypatch.delenv("CI")
    assert in_ci() is False
