"""``mypy --strict`` on a sample Django view using lockstore's session engine (tests/typing_samples/django_view.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from servers import require

require("django")
require("mypy")

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "tests" / "typing_samples" / "django_view.py"

# Django has no type information here (no django-stubs): its names are Any. The sample and every lockstore module
# it reaches are checked strictly.
CONFIG = """\
[mypy]
strict = True
warn_unreachable = True

[mypy-django.*]
ignore_missing_imports = True

[mypy-msgpack.*]
ignore_missing_imports = True
"""


def mypy(tmp_path: Path, *files: Path) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "mypy.ini"
    config.write_text(CONFIG)
    args = ["--config-file", str(config), "--cache-dir", str(tmp_path / "cache"), *map(str, files)]
    return subprocess.run(
        [sys.executable, "-m", "mypy", *args], cwd=ROOT, capture_output=True, text=True, timeout=240, check=False
    )


@pytest.mark.timeout(300)
def test_the_sample_django_view_is_clean_under_mypy_strict(tmp_path: Path) -> None:
    wrong = tmp_path / "wrong_view.py"
    wrong.write_text(
        "from django.http import HttpRequest\n"
        "from lockstore.django import SessionStore\n\n"
        "def visits(request: HttpRequest) -> int:\n"
        "    session: SessionStore = request.session\n"
        "    return session.get('visits')  # Any, returned as int: strict says no\n\n"
        "def untyped(request):\n"
        "    return request\n"
        "exists: bool = SessionStore().exists(42)\n"
    )
    result = mypy(tmp_path, SAMPLE, wrong)
    errors = [line for line in result.stdout.splitlines() if ": error:" in line]
    # the checker is strict: each planted mistake is reported, and nothing else
    assert result.returncode == 1, result.stdout + result.stderr
    assert [line.split(": error:")[0] for line in errors] == [
        f"{wrong}:6",
        f"{wrong}:8",
        f"{wrong}:10",
    ], result.stdout
    result = mypy(tmp_path, SAMPLE)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Success: no issues found in 1 source file" in result.stdout
