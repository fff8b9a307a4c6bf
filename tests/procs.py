"""Running worker processes in tests: start them all, wait, and never leave one behind."""

from __future__ import annotations

from typing import Any


def run_all(procs: list[Any], timeout: float = 120) -> list[int | None]:
    """Start *procs*, wait up to *timeout* seconds for each, return their exit codes (None: still running,
    then killed)."""
    try:
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout)
        return [p.exitcode for p in procs]
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
