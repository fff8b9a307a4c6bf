"""Real Redis and PostgreSQL servers for the tests, on free 127.0.0.1 ports in temporary directories.

The session-scoped fixtures ``redis_server`` and ``postgres_server`` start one server each for the whole
run and yield its URL. Tests that stop and restart a server (fault tests) start their own with
:class:`RedisServer` / :class:`PostgresServer` so the shared one is never disturbed.

A missing server binary skips the tests that need it, except under CI (``CI=true``), where it fails
them: CI installs both servers, so a skip there would hide a broken set-up. The same rule holds for
every test that needs something of its environment (a tool, an optional extra, root): each one asks
through :func:`unavailable` (:func:`missing`, :func:`require`, :func:`require_tool`, :func:`require_root`),
and ``conftest.py`` turns any other skip into a failure under CI.

PostgreSQL refuses to run as root, so as root ``initdb`` and ``pg_ctl`` run as the ``postgres`` user
(``runuser -u postgres --``) in a directory that user owns. Authentication is ``trust`` on 127.0.0.1
only, and the server listens there only.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

import pytest

START_TIMEOUT = 30.0


def in_ci() -> bool:
    """True when running under CI (``CI=true``, any case), where nothing the tests need may be missing."""
    return os.environ.get("CI", "").strip().lower() == "true"


def unavailable(reason: str) -> NoReturn:
    """The one way a test gives up for want of a tool, an extra, a server or a privilege: skip locally,
    fail under CI (which provides everything, so a skip there would hide a broken set-up as a pass).

    Works inside a test or a fixture and at module level (an import at the top of a test module)."""
    if in_ci():
        pytest.fail(f"{reason} [CI=true: a missing requirement fails, it never skips]", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def missing(what: str, install: str = "apt-get install -y redis-server postgresql") -> NoReturn:
    """Skip (locally) or fail (in CI) a test that needs *what*, which is not installed."""
    unavailable(f"{what} is not installed ({install})")


def require(module: str) -> Any:
    """Import *module* (an optional extra the tests use), or skip outside CI and fail under CI (where every
    extra is installed, so a missing one is a broken set-up, never a pass)."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        problem = str(exc)
    missing(f"{module} ({problem})", "pip install -e '.[test]'")


def require_tool(name: str, package: str) -> str:
    """The path of the program *name* (from the Debian *package*), or skip outside CI and fail under CI."""
    path = shutil.which(name)
    if path is None:
        missing(name, f"apt-get install -y {package}")
    return path


def require_root(purpose: str) -> None:
    """Go on only as root (CI runs as root), else skip outside CI and fail under CI."""
    if os.geteuid() != 0:
        unavailable(f"needs root to {purpose}")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cluster_port() -> int:
    """A free port P with P + 10000 free too (a Redis Cluster node's bus listens there), P below 55536."""
    import random

    while True:
        port = random.randrange(20000, 22768)  # below the ephemeral range, with P + 10000 too
        if not port_open(port) and not port_open(port + 10000):
            return port


def port_open(port: int) -> bool:
    """True if something accepts TCP connections on 127.0.0.1:*port*."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


class RedisServer:
    """A ``redis-server`` process in *directory* on a free port; ``start``/``stop``/``kill`` are repeatable.

    With ``appendonly=True`` every write is appended to the AOF and fsynced before it is acknowledged
    (``appendfsync always``), so a killed server restarts with every acknowledged write.
    """

    def __init__(self, directory: Path, *, appendonly: bool = False, extra: Sequence[str] = ()) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            missing("redis-server")
        self.binary = str(binary)
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.appendonly = appendonly
        self.extra = list(extra)
        self.port = cluster_port() if "--cluster-enabled" in self.extra else free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.directory),
            "--daemonize",
            "no",
            "--save",
            "",
            "--logfile",
            "redis.log",
            "--databases",
            "4",
        ]
        if self.appendonly:
            args += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            args += ["--appendonly", "no"]
        args += self.extra
        self.process = subprocess.Popen(
            args, cwd=self.directory, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + START_TIMEOUT
        while not self._ping():
            if self.process.poll() is not None:
                log = (self.directory / "redis.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"redis-server exited with {self.process.returncode}:\n{log}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"redis-server did not answer on port {self.port} in {START_TIMEOUT} s")
            time.sleep(0.02)

    def _ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def _end(self, sig: int) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=20)
        self.process = None

    def stop(self) -> None:
        """Stop gracefully (SIGTERM: Redis flushes its append-only file first)."""
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        """Stop at once (SIGKILL), as a crash would."""
        self._end(signal.SIGKILL)


def postgres_bin() -> Path | None:
    """The newest ``/usr/lib/postgresql/N/bin`` that has ``initdb`` and ``pg_ctl``, or None."""
    found = []
    for candidate in Path("/usr/lib/postgresql").glob("*/bin"):
        if (candidate / "initdb").exists() and (candidate / "pg_ctl").exists():
            with contextlib.suppress(ValueError):
                found.append((int(candidate.parent.name.split(".")[0]), candidate))
    return max(found)[1] if found else None


class PostgresServer:
    """A PostgreSQL cluster in a fresh temporary directory on a free port; ``start``/``stop`` repeatable.

    ``fsync=off``: a commit is written to the operating system before it is acknowledged, so a crash
    of the server (``stop(mode="immediate")``) loses no acknowledged transaction; only a crash of the
    whole machine could, which the tests do not simulate.
    """

    def __init__(self) -> None:
        bindir = postgres_bin()
        if bindir is None:
            missing("PostgreSQL server (initdb, pg_ctl)")
        assert bindir is not None
        self.bindir = bindir
        self.prefix: list[str] = []
        self.base = Path(tempfile.mkdtemp(prefix="lockstore-pg-"))
        if os.geteuid() == 0:
            # PostgreSQL refuses to run as root: hand the directory to the postgres user.
            try:
                user = pwd.getpwnam("postgres")
            except KeyError:
                shutil.rmtree(self.base)
                missing("the postgres system user")
                raise
            os.chown(self.base, user.pw_uid, user.pw_gid)
            self.prefix = ["runuser", "-u", "postgres", "--"]
        self.base.chmod(0o700)
        self.data = self.base / "data"
        self.log = self.base / "server.log"
        self.port = free_port()
        self.running = False
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
            "--no-instructions",
        )
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.base}'",
            "fsync": "off",
            "full_page_writes": "off",
            "max_connections": "200",
            "shared_buffers": "32MB",
            "log_min_messages": "warning",
        }
        with (self.data / "postgresql.auto.conf").open("a") as conf:
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())
        (self.data / "pg_hba.conf").write_text("host all all 127.0.0.1/32 trust\n")

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str) -> None:
        # Output goes to a file, never a pipe: the server pg_ctl starts inherits descriptors and
        # would keep a pipe open after pg_ctl returns.
        out = self.base / f"{tool}.out"
        with out.open("ab") as sink:
            done = subprocess.run(
                [*self.prefix, str(self.bindir / tool), *args],
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                timeout=120,
                check=False,
            )
        if done.returncode != 0:
            text = out.read_text(errors="replace")[-3000:]
            if self.log.exists():
                text += "\n" + self.log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{tool} {' '.join(args)} failed with {done.returncode}:\n{text}")

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", str(int(START_TIMEOUT)), "start")
        self.running = True

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: ``fast`` (clean shut-down) or ``immediate`` (as a crash, recovery on start)."""
        if self.running:
            self.running = False
            self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def remove(self) -> None:
        """Stop the server if it runs and delete its directory."""
        try:
            self.stop("fast")
        finally:
            shutil.rmtree(self.base, ignore_errors=True)


class RedisCluster:
    """A Redis Cluster of *masters* masters with one replica each, on loopback ports, in *directory*.

    Built the way an operator builds one: ``redis-server --cluster-enabled yes`` per node, then
    ``redis-cli --cluster create ... --cluster-replicas 1``. ``node_timeout`` (ms) is how long a master
    may be silent before its replica is promoted: short here, so failover tests run in seconds.
    """

    def __init__(
        self, directory: Path, *, masters: int = 3, node_timeout: int = 1000, appendonly: bool = False
    ) -> None:
        self.cli = require_tool("redis-cli", "redis-tools")
        self.nodes = [
            RedisServer(
                Path(directory) / f"node{i}",
                appendonly=appendonly,
                extra=[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    str(node_timeout),
                    "--cluster-replica-validity-factor",
                    "0",
                ],
            )
            for i in range(masters * 2)
        ]

    @property
    def url(self) -> str:
        """The ``redis+cluster://`` URL naming every node (any one of them is enough to connect)."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{node.port}" for node in self.nodes) + "/"

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        subprocess.run(
            [self.cli, "--cluster", "create", *addresses, "--cluster-replicas", "1", "--cluster-yes"],
            check=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=60,
        )
        self.wait_ok()

    def info(self, node: RedisServer, *command: str) -> str:
        done = subprocess.run(
            [self.cli, "-p", str(node.port), *command], capture_output=True, text=True, timeout=10, check=False
        )
        return done.stdout

    def wait_ok(self, timeout: float = START_TIMEOUT) -> None:
        """Wait until every live node reports ``cluster_state:ok`` and all 16384 slots are served."""
        deadline = time.monotonic() + timeout
        while True:
            live = [node for node in self.nodes if node.process is not None]
            if all("cluster_state:ok" in self.info(n, "cluster", "info") for n in live):
                return
            if time.monotonic() > deadline:
                raise RuntimeError("Redis Cluster did not reach cluster_state:ok")
            time.sleep(0.1)

    def masters(self) -> list[RedisServer]:
        """The nodes that are masters now (by their own ``ROLE``)."""
        return [n for n in self.nodes if n.process is not None and self.info(n, "role").startswith("master")]

    def kill(self) -> None:
        for node in self.nodes:
            node.kill()


@contextlib.contextmanager
def running_redis_cluster(directory: Path, *, appendonly: bool = False) -> Iterator[RedisCluster]:
    """A started :class:`RedisCluster`, every node killed on exit whatever happens."""
    cluster = RedisCluster(directory, appendonly=appendonly)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.kill()


@contextlib.contextmanager
def running_redis(directory: Path, *, appendonly: bool = False) -> Iterator[RedisServer]:
    """A started :class:`RedisServer`, killed on exit whatever happens."""
    server = RedisServer(directory, appendonly=appendonly)
    server.start()
    try:
        yield server
    finally:
        server.kill()


@contextlib.contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    """A started :class:`PostgresServer`, stopped and removed on exit whatever happens."""
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.remove()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a Redis server started for this test run (skips, or fails under CI, without redis-server)."""
    with running_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server.url


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """URL of a PostgreSQL server started for this test run (skips, or fails under CI, without it)."""
    with running_postgres() as server:
        yield server.url


# -- workers for the multi-process tests of the remote backends (run in spawned processes) ----------


def increment_worker(url: str, options: dict[str, Any], sids: list[str], n: int, barrier: Any) -> None:
    """Open a store with its own pool, wait for the others, then make *n* edit() increments over *sids*."""
    import lockstore

    store = lockstore.open(url, **options)
    try:
        barrier.wait(60)
        for i in range(n):
            with store.edit(sids[i % len(sids)]) as session:
                session["n"] = session.get("n", 0) + 1
    finally:
        store.close()


def load_worker(url: str, options: dict[str, Any], sids: list[str], name: str, stop: Any, results: Any) -> None:
    """Increment this worker's own field in *sids* until *stop* is set, whatever the server does.

    Reports ``{"acked": {sid: n}, "unavailable": k, ...}``: *acked* counts the edits that returned
    without error (each one is a write the store acknowledged).
    """
    import lockstore

    acked = dict.fromkeys(sids, 0)
    report: dict[str, Any] = {
        "name": name,
        "acked": acked,
        "unavailable": 0,
        "lock_timeouts": 0,
        "errors": [],
        "slowest": 0.0,
        "last_ok": 0.0,
        "first_unavailable": 0.0,
    }
    store = lockstore.open(url, **options)
    try:
        i = 0
        while not stop.is_set():
            sid = sids[i % len(sids)]
            i += 1
            started = time.monotonic()
            try:
                with store.edit(sid) as session:
                    session[name] = session.get(name, 0) + 1
                acked[sid] += 1
                report["last_ok"] = time.time()
            except lockstore.BackendUnavailable:
                report["unavailable"] += 1
                report["first_unavailable"] = report["first_unavailable"] or time.time()
                time.sleep(0.02)
            except lockstore.LockTimeout:
                report["lock_timeouts"] += 1
            except Exception as exc:  # reported, and the test fails on it
                report["errors"].append(repr(exc))
            report["slowest"] = max(report["slowest"], time.monotonic() - started)
    finally:
        results.put(report)
        with contextlib.suppress(Exception):
            store.close()


def hold_edit(url: str, options: dict[str, Any], sid: str, ready: Any) -> None:
    """Hold *sid*'s edit lock (a Redis lock key, a PostgreSQL row lock) until killed, with a change that
    must never be saved."""
    import lockstore

    with lockstore.open(url, **options) as s, s.edit(sid) as session:
        session["n"] = -1
        ready.set()
        time.sleep(120)


def run_increments(url: str, options: dict[str, Any], sids: list[str], processes: int, n: int) -> float:
    """*processes* spawned processes x *n* edit() increments over *sids*; returns the seconds taken.

    Fails the test if a process fails or the run passes its deadline (the processes are then killed).
    """
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(processes + 1)
    procs = [ctx.Process(target=increment_worker, args=(url, options, sids, n, barrier)) for _ in range(processes)]
    try:
        for proc in procs:
            proc.start()
        barrier.wait(60)
        started = time.monotonic()
        deadline = started + 90
        for proc in procs:
            proc.join(max(0.1, deadline - time.monotonic()))
        elapsed = time.monotonic() - started
        assert all(proc.exitcode == 0 for proc in procs), [proc.exitcode for proc in procs]
        return elapsed
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
                proc.join(10)


def fault_run(
    url: str,
    options: dict[str, Any],
    stop_server: Callable[[], None],
    start_server: Callable[[], None],
    *,
    workers: int = 3,
    down: float = 1.5,
) -> None:
    """Edit under load from *workers* processes while the server is stopped and started again.

    Asserts: every worker got :class:`BackendUnavailable` while the server was down (never a hang: no
    call took long) and succeeded after the restart, nothing else went wrong, and no acknowledged
    write was lost: each worker's counter holds at least its acknowledged increments, and at most
    those plus the calls that failed (a write whose reply was lost may or may not have happened).
    """
    import multiprocessing

    import lockstore

    sids = ["fault-a", "fault-b"]
    ctx = multiprocessing.get_context("spawn")
    stop = ctx.Event()
    results = ctx.Queue()
    names = [f"w{i}" for i in range(workers)]
    procs = [ctx.Process(target=load_worker, args=(url, options, sids, name, stop, results)) for name in names]
    reports = []
    try:
        for proc in procs:
            proc.start()
        time.sleep(1.5)
        stop_server()
        time.sleep(down)
        start_server()
        restarted = time.time()
        time.sleep(2.0)
        stop.set()
        reports = [results.get(timeout=60) for _ in procs]
        for proc in procs:
            proc.join(30)
    finally:
        stop.set()
        for proc in procs:
            if proc.is_alive():
                proc.kill()
                proc.join(10)
    limit = 2 * float(options.get("connect_timeout", 5)) + float(options.get("timeout", 10)) + 2
    for report in reports:
        assert report["errors"] == [], report
        assert report["unavailable"] > 0, report
        assert report["last_ok"] > restarted, report
        assert report["slowest"] < limit, report
    with lockstore.open(url, **options) as store:
        for sid in sids:
            session = store[sid]
            for report in reports:
                acked = report["acked"][sid]
                assert acked > 0, report
                stored = session.get(report["name"], 0)
                assert acked <= stored <= acked + report["unavailable"], (sid, stored, report)


__all__ = [
    "PostgresServer",
    "RedisServer",
    "fault_run",
    "free_port",
    "in_ci",
    "increment_worker",
    "load_worker",
    "missing",
    "port_open",
    "postgres_bin",
    "postgres_server",
    "redis_server",
    "require",
    "require_root",
    "require_tool",
    "run_increments",
    "running_postgres",
    "running_redis",
    "unavailable",
]


@contextlib.contextmanager
def running_redis_cluster_retried(directory: Path, *, attempts: int = 3) -> Iterator[RedisCluster]:
    """:func:`running_redis_cluster`, built again on other ports (up to *attempts* times) if a node cannot bind.

    Why: :func:`cluster_port` draws from 20000-45000, which overlaps Linux's ephemeral range (32768-60999), and
    checks a port by connecting to it. On a busy machine the local end of some client connection can hold a
    node's port or its bus port (+10000) at bind time ("bind: Address already in use", seen with the other
    test runs of this machine). Used by the two-host tests and ``stress/remote_bench.py``.
    """
    for attempt in range(1, attempts + 1):
        cluster = RedisCluster(Path(directory) / f"attempt-{attempt}")
        try:
            cluster.start()
        except (RuntimeError, subprocess.CalledProcessError):
            cluster.kill()
            if attempt == attempts:
                raise
            continue
        try:
            yield cluster
        finally:
            cluster.kill()
        return
