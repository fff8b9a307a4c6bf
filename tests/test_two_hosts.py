"""Two hosts on one server store, with today's request lock: ``lock_dir=`` per instance (issue 12).

Two gunicorn instances with 4 sync workers each, their own TMPDIR and their own lock directory, as two machines
would have them, serve the counter (bare WSGI and Flask) from one Redis, then one PostgreSQL
(``tests/web_apps/hosts.py``). A directory of file locks serialises the requests of one machine and no more:

- 8 clients sharing one cookie, sending their requests alternately to both instances, LOSE updates. The figure
  is printed (``pytest -s``): it is the gap the server-side request lock closes, and the control beside it
  (the same clients on one instance) is exact, so the second host is what makes the difference.
- 1 writer (40 increments) against 7 readers loses nothing even so: a request that only read writes nothing back.

The same workloads with the server-side lock, whose final counts must be exact, are in
``tests/test_two_hosts_locked.py``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from servers import require
from web_apps.hosts import shared_cookie, store_options, two_hosts, writer_readers

require("gunicorn")
require("flask")
require("redis")
require("psycopg")

pytestmark = pytest.mark.servers

CASES = [("redis", "wsgi"), ("redis", "flask"), ("postgres", "wsgi"), ("postgres", "flask")]


@pytest.fixture(scope="module", params=CASES, ids=[f"{kind}-{app}" for kind, app in CASES])
def hosts(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, int]]:
    """The ports of two instances serving *app* from the shared *kind* server, each with its own lock_dir."""
    kind, app = request.param
    url = request.getfixturevalue(f"{kind}_server")
    options = store_options(kind, f"h{uuid.uuid4().hex[:10]}")
    base: Path = tmp_path_factory.mktemp(f"hosts-{kind}-{app}")
    with two_hosts(app, url, base, options=options, lock="dir") as ports:
        yield ports


def test_lock_dir_per_host_loses_updates_across_two_hosts(
    hosts: tuple[int, int], request: pytest.FixtureRequest
) -> None:
    result = shared_cookie(hosts, clients=8, requests=25)
    print(
        f"\n{request.node.callspec.id}: lock_dir per host, 8 clients x 25 on one cookie across 2 hosts: lost "
        f"{result['lost']} of {result['expected']} ({result['rps']} req/s)"
    )
    assert result["errors"] == 0, result
    assert result["busy"] == 0, result
    assert result["lost"] > 0, result


def test_lock_dir_one_host_is_exact(hosts: tuple[int, int]) -> None:
    """The control: the same 8 clients all on one instance lose nothing, so the loss above is the second host."""
    result = shared_cookie((hosts[0],), clients=8, requests=25)
    assert result["errors"] == 0, result
    assert result["busy"] == 0, result
    assert result["lost"] == 0, result
    assert result["final"] == 201


def test_one_writer_seven_readers_across_two_hosts_lose_nothing(hosts: tuple[int, int]) -> None:
    result = writer_readers(hosts, writes=40, readers=7)
    assert result["errors"] == 0, result
    assert result["reads"] > 0, result
    assert result["lost"] == 0, result
    assert result["final"] == 41
