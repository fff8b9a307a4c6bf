"""The WSGI middleware under CGI (a process per request) and FastCGI (flup), with real processes."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from servers import require_tool
from web_apps.servers import cgi_environ, cgi_fcgi_request, cookie_value, fcgi_request, flup_server, run_cgi

import lockstore

CGI_CLIENTS = 8
CGI_REQUESTS = 5  # each request is a new python process: 40 in all, 8 at a time


def test_cgi_processes_share_one_session_exactly(tmp_path: Path) -> None:
    store_path = tmp_path / "store"
    first = run_cgi(store_path, "/incr")
    sid = cookie_value(first)
    assert first.status == 200 and first.body == "1" and sid
    assert "HttpOnly" in first.cookies()[0]

    def client(_: int) -> list[int]:
        return [run_cgi(store_path, "/incr", sid).status for _ in range(CGI_REQUESTS)]

    with ThreadPoolExecutor(CGI_CLIENTS) as pool:
        statuses = [s for batch in pool.map(client, range(CGI_CLIENTS)) for s in batch]
    assert statuses == [200] * (CGI_CLIENTS * CGI_REQUESTS)
    assert run_cgi(store_path, "/read", sid).body == str(CGI_CLIENTS * CGI_REQUESTS + 1)
    with lockstore.open(store_path) as store:
        assert store[sid] == {"n": CGI_CLIENTS * CGI_REQUESTS + 1}


def test_cgi_forged_cookie_and_just_in_time(tmp_path: Path) -> None:
    store_path = tmp_path / "store"
    reply = run_cgi(store_path, "/read", "../../../etc/passwd")
    assert reply.status == 200 and reply.body == "0" and reply.cookies() == []
    with lockstore.open(store_path) as store:
        assert len(store) == 0


@pytest.fixture(scope="module")
def flup(tmp_path_factory: pytest.TempPathFactory) -> int:
    with flup_server(tmp_path_factory.mktemp("flup") / "store") as port:
        yield port  # type: ignore[misc]


def test_fastcgi_threads_share_one_session_exactly(flup: int) -> None:
    first = fcgi_request(flup, cgi_environ("/incr"))
    sid = cookie_value(first)
    assert first.status == 200 and sid

    def client(_: int) -> None:
        for _ in range(50):
            reply = fcgi_request(flup, cgi_environ("/incr", sid))
            assert reply.status == 200, reply.body

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(client, range(8)))
    assert fcgi_request(flup, cgi_environ("/read", sid)).body == str(8 * 50 + 1)


def test_fastcgi_through_cgi_fcgi(flup: int) -> None:
    require_tool("cgi-fcgi", "libfcgi-bin")  # skips locally when missing, fails under CI
    first = cgi_fcgi_request(flup, cgi_environ("/incr"))
    sid = cookie_value(first)
    assert first.status == 200 and sid

    def client(_: int) -> None:
        for _ in range(10):
            reply = cgi_fcgi_request(flup, cgi_environ("/incr", sid))
            assert reply.status == 200, reply.body

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(client, range(8)))
    assert cgi_fcgi_request(flup, cgi_environ("/read", sid)).body == "81"


def test_fastcgi_many_sessions(flup: int) -> None:
    def user(_: int) -> str:
        sid = cookie_value(fcgi_request(flup, cgi_environ("/incr")))
        for _ in range(9):
            fcgi_request(flup, cgi_environ("/incr", sid))
        return fcgi_request(flup, cgi_environ("/read", sid)).body

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(user, range(16))) == ["10"] * 16
