"""Shared fixtures: stores of every backend, and a clock the tests move by hand; the CI rule for skips."""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Callable, Generator, Iterator
from typing import Any

import pytest

import lockstore

sys.path.insert(0, os.path.dirname(__file__))

from servers import in_ci, postgres_server, redis_server  # noqa: F401  (the servers' session fixtures)


def _ci_failure(report: pytest.TestReport | pytest.CollectReport) -> None:
    """Under CI, a skip is a failure: CI has every tool, extra and privilege, so a skip would pass a run
    that tested nothing. Tests ask for what they need through ``servers.unavailable``, which fails
    directly under CI; this catches a skip that went around it."""
    if report.skipped and in_ci() and not hasattr(report, "wasxfail"):
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, where nothing may be missing: {reason}"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    _ci_failure(report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(
    collector: pytest.Collector,
) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    report = yield
    _ci_failure(report)
    return report


EMBEDDED = ["lmdb", "shelve", "memory"]
REMOTE = ["redis", "postgres"]


class Clock:
    """A clock the test sets: ``clock.now += 3600``."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def open_store(request: pytest.FixtureRequest, backend: str, path: str, **options: Any) -> lockstore.BaseStore:
    """A new store of *backend*; for the remote ones, on the session's server under a fresh prefix/table."""
    name = "t" + hashlib.sha1(path.encode()).hexdigest()[:12]  # the same path reopens the same store
    if backend == "redis":
        url = request.getfixturevalue("redis_server")
        return lockstore.open(url, prefix=name, **options)
    if backend == "postgres":
        url = request.getfixturevalue("postgres_server")
        return lockstore.open(url, table=name, **options)
    return lockstore.open(path, backend=backend, **options)


@pytest.fixture(params=EMBEDDED + REMOTE)
def any_backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(params=EMBEDDED)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(params=["lmdb", "shelve"])
def file_backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def make_store(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Callable[..., lockstore.BaseStore]]:
    """``make_store(backend, **options)``: stores closed at the end of the test."""
    opened: list[lockstore.BaseStore] = []

    def make(backend: str, **options: Any) -> lockstore.BaseStore:
        store = open_store(request, backend, str(tmp_path / f"store-{backend}"), **options)
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()
