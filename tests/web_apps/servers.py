"""Start real servers on 127.0.0.1 and talk to them: gunicorn, flup FastCGI, CGI processes.

Every server listens on a socket bound here to a free loopback port and handed to the server
process as a file descriptor, so no port is ever guessed.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WEB_APPS = Path(__file__).resolve().parent
COOKIE = "lockstore_sid"


def listening_socket() -> socket.socket:
    """A TCP socket listening on a free port of 127.0.0.1."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    return sock


def stop(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """Stop a server process (and so its workers) gracefully, then for good."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


# -- HTTP ---------------------------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: list[tuple[str, str]]
    body: str

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    def cookies(self) -> list[str]:
        return [value for key, value in self.headers if key.lower() == "set-cookie"]


def get(port: int, path: str, cookie: str | None = None, timeout: float = 30.0) -> Reply:
    """One GET on a fresh connection (no keep-alive: every request may go to another worker)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        headers = {"Connection": "close"}
        if cookie is not None:
            headers["Cookie"] = f"{COOKIE}={cookie}"
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        return Reply(response.status, response.getheaders(), response.read().decode())
    finally:
        conn.close()


def cookie_value(reply: Reply, name: str = COOKIE) -> str | None:
    """The value a Set-Cookie of *reply* gives *name* ("" when it deletes it), or None."""
    for header in reply.cookies():
        key, _, rest = header.partition("=")
        if key.strip() == name:
            return rest.split(";", 1)[0]
    return None


@dataclass
class Client:
    """A browser-like client: keeps the session cookie it is given (optionally shared by threads)."""

    port: int
    cookie: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def get(self, path: str) -> Reply:
        with self.lock:
            cookie = self.cookie
        reply = get(self.port, path, cookie)
        value = cookie_value(reply)
        if value is not None:
            with self.lock:
                self.cookie = value or None
        return reply


def wait_http(port: int, proc: subprocess.Popen[bytes], deadline: float = 30.0) -> None:
    """Wait until the server answers ``/plain`` (fail if it exits)."""
    end = time.monotonic() + deadline
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before answering")
        with contextlib.suppress(OSError, http.client.HTTPException):
            if get(port, "/plain", timeout=2).status == 200:
                return
        if time.monotonic() > end:
            raise RuntimeError(f"server on port {port} did not answer within {deadline} s")
        time.sleep(0.1)


@contextlib.contextmanager
def gunicorn(
    app: str, store: Path, *, workers: int = 4, env: Mapping[str, str] | None = None, preload: bool = False
) -> Iterator[int]:
    """Serve ``tests.web_apps.apps:<app>`` with gunicorn sync workers; yield the port.

    *preload* builds the application (store, lock stripes) in the master, before the workers fork.
    """
    sock = listening_socket()
    port = sock.getsockname()[1]
    environ = {**os.environ, "LOCKSTORE_TEST_PATH": str(store), **(env or {})}
    cmd = [
        sys.executable, "-m", "gunicorn",
        "--workers", str(workers), "--worker-class", "sync",
        "--bind", f"fd://{sock.fileno()}",
        "--chdir", str(ROOT),
        "--timeout", "60", "--graceful-timeout", "5",
        "--log-level", "warning",
        *(["--preload"] if preload else []),
        f"tests.web_apps.apps:{app}",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, env=environ, pass_fds=[sock.fileno()], cwd=ROOT)
    sock.close()
    try:
        wait_http(port, proc)
        yield port
    finally:
        stop(proc)


# -- CGI ----------------------------------------------------------------------------------------


def cgi_environ(path: str, cookie: str | None = None) -> dict[str, str]:
    """The CGI/1.1 meta-variables a web server sets for a GET of *path*."""
    env = {
        "GATEWAY_INTERFACE": "CGI/1.1",
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "SERVER_SOFTWARE": "lockstore-tests",
        "REMOTE_ADDR": "127.0.0.1",
        "CONTENT_LENGTH": "",
    }
    if cookie is not None:
        env["HTTP_COOKIE"] = f"{COOKIE}={cookie}"
    return env


def parse_cgi(output: bytes) -> Reply:
    """Parse a CGI response (``Status:`` header, headers, blank line, body)."""
    head, _, body = output.partition(b"\r\n\r\n")
    status = 200
    headers = []
    for line in head.decode("latin-1").split("\r\n"):
        key, _, value = line.partition(":")
        if key.lower() == "status":
            status = int(value.split()[0])
        elif key:
            headers.append((key, value.strip()))
    return Reply(status, headers, body.decode())


def run_cgi(store: Path, path: str, cookie: str | None = None) -> Reply:
    """Run the counter as a CGI process, the way a web server does."""
    env = {"PATH": os.environ.get("PATH", ""), "LOCKSTORE_TEST_PATH": str(store), **cgi_environ(path, cookie)}
    proc = subprocess.run(
        [sys.executable, str(WEB_APPS / "cgi_counter.py")],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    return parse_cgi(proc.stdout)


# -- FastCGI ------------------------------------------------------------------------------------

FCGI_VERSION = 1
FCGI_BEGIN_REQUEST, FCGI_END_REQUEST, FCGI_PARAMS, FCGI_STDIN, FCGI_STDOUT, FCGI_STDERR = 1, 3, 4, 5, 6, 7
FCGI_RESPONDER = 1


def _record(kind: int, request_id: int, content: bytes) -> bytes:
    return struct.pack("!BBHHBx", FCGI_VERSION, kind, request_id, len(content), 0) + content


def _length(n: int) -> bytes:
    return bytes([n]) if n < 128 else struct.pack("!I", n | 0x80000000)


def fcgi_request(port: int, params: Mapping[str, str], timeout: float = 30.0) -> Reply:
    """One request through a minimal FastCGI client (the responder role, no body)."""
    pairs = b"".join(
        _length(len(k.encode())) + _length(len(v.encode())) + k.encode() + v.encode() for k, v in params.items()
    )
    message = (
        _record(FCGI_BEGIN_REQUEST, 1, struct.pack("!HB5x", FCGI_RESPONDER, 0))
        + _record(FCGI_PARAMS, 1, pairs)
        + _record(FCGI_PARAMS, 1, b"")
        + _record(FCGI_STDIN, 1, b"")
    )
    stdout = bytearray()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
        conn.sendall(message)
        buffer = b""
        while True:
            while len(buffer) < 8:
                chunk = conn.recv(65536)
                if not chunk:
                    raise ConnectionError("FastCGI server closed the connection early")
                buffer += chunk
            _, kind, _, length, padding = struct.unpack("!BBHHBx", buffer[:8])
            while len(buffer) < 8 + length + padding:
                chunk = conn.recv(65536)
                if not chunk:
                    raise ConnectionError("FastCGI server closed the connection early")
                buffer += chunk
            content, buffer = buffer[8 : 8 + length], buffer[8 + length + padding :]
            if kind == FCGI_STDOUT:
                stdout += content
            elif kind == FCGI_END_REQUEST:
                return parse_cgi(bytes(stdout))


def cgi_fcgi_request(port: int, params: Mapping[str, str]) -> Reply:
    """One request through ``cgi-fcgi -bind -connect`` (Debian's libfcgi-bin), a real FastCGI client."""
    env = {"PATH": os.environ.get("PATH", ""), **params}
    proc = subprocess.run(
        ["cgi-fcgi", "-bind", "-connect", f"127.0.0.1:{port}"],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    return parse_cgi(proc.stdout)


@contextlib.contextmanager
def flup_server(store: Path) -> Iterator[int]:
    """Start the flup FastCGI counter with its listening socket as fd 0; yield the port."""
    sock = listening_socket()
    port = sock.getsockname()[1]
    env = {**os.environ, "LOCKSTORE_TEST_PATH": str(store)}
    proc = subprocess.Popen([sys.executable, str(WEB_APPS / "fcgi_server.py")], stdin=sock.fileno(), env=env)
    sock.close()
    try:
        end = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"flup exited with {proc.returncode}")
            with contextlib.suppress(OSError):
                if fcgi_request(port, cgi_environ("/plain"), timeout=2).status == 200:
                    break
            if time.monotonic() > end:
                raise RuntimeError("flup did not answer within 30 s")
            time.sleep(0.1)
        yield port
    finally:
        stop(proc)


# -- ASGI: uvicorn --workers, gunicorn with uvicorn workers (issue 13) ------------------------------------------


def wait_workers(port: int, proc: subprocess.Popen[bytes], workers: int, deadline: float = 60.0) -> None:
    """Wait until *workers* distinct processes have answered ``/pid``, so a measurement starts with all of them.

    One request at a time would keep reaching the same worker: bursts of concurrent ones reach them all.
    """
    from concurrent.futures import ThreadPoolExecutor

    seen: set[str] = set()
    end = time.monotonic() + deadline
    with ThreadPoolExecutor(2 * workers) as pool:
        while len(seen) < workers:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode} while its workers started")
            if time.monotonic() > end:
                raise RuntimeError(f"{len(seen)} of {workers} workers answered within {deadline} s")
            seen.update(reply.body for reply in pool.map(lambda _: get(port, "/pid"), range(4 * workers)))


@contextlib.contextmanager
def _asgi_server(sock: socket.socket, argv: list[str], workers: int, env: Mapping[str, str] | None) -> Iterator[int]:
    """Run ``python -m <argv>``, which serves on *sock* (bound here, passed by its file descriptor); yield the
    port once every worker answers. *env* sets the app's session kind and store (``LOCKSTORE_TEST_MODE``, ...)."""
    port = sock.getsockname()[1]
    # the workers import tests.web_apps.asgi_apps from the checkout
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    environ = {**os.environ, "PYTHONPATH": path, **(env or {})}
    try:
        proc = subprocess.Popen([sys.executable, "-m", *argv], env=environ, pass_fds=[sock.fileno()], cwd=ROOT)
    finally:
        sock.close()
    try:
        wait_http(port, proc)
        wait_workers(port, proc, workers)
        yield port
    finally:
        stop(proc)


def uvicorn(
    factory: str, *, workers: int = 4, env: Mapping[str, str] | None = None
) -> contextlib.AbstractContextManager[int]:
    """Serve ``tests.web_apps.asgi_apps:<factory>()`` with ``uvicorn --workers``; yield the port.

    The socket goes to uvicorn with ``--fd``: its supervisor hands it to each worker, which all accept on it
    (with *workers* 1, the one worker runs in the supervisor's process).
    """
    sock = listening_socket()
    argv = [
        "uvicorn",
        "--factory", f"tests.web_apps.asgi_apps:{factory}",
        "--fd", str(sock.fileno()),
        "--workers", str(workers),
        "--app-dir", str(ROOT),
        "--log-level", "warning", "--no-access-log",
        "--timeout-graceful-shutdown", "5",
    ]  # fmt: skip
    return _asgi_server(sock, argv, workers, env)


def gunicorn_uvicorn(
    factory: str, *, workers: int = 4, env: Mapping[str, str] | None = None
) -> contextlib.AbstractContextManager[int]:
    """Serve ``tests.web_apps.asgi_apps:<factory>()`` with gunicorn and uvicorn workers; yield the port.

    The worker class is the ``uvicorn-worker`` package's (``uvicorn.workers`` is deprecated since uvicorn 0.30).
    The socket goes to gunicorn as ``fd://``, as in :func:`gunicorn`.
    """
    sock = listening_socket()
    argv = [
        "gunicorn",
        "--workers", str(workers), "--worker-class", "uvicorn_worker.UvicornWorker",
        "--bind", f"fd://{sock.fileno()}",
        "--chdir", str(ROOT),
        "--timeout", "60", "--graceful-timeout", "5",
        "--log-level", "warning",
        f"tests.web_apps.asgi_apps:{factory}()",
    ]  # fmt: skip
    return _asgi_server(sock, argv, workers, env)
