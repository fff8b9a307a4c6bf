"""The Redis Cluster backend: ``lockstore.open("redis+cluster://host:port,host:port/", prefix="lockstore")``.

The same store as :mod:`lockstore.remote.redis`, on a cluster through redis-py's ``RedisCluster``:

- Every key of a session (``PREFIX:{SID}``, its ``:lock`` and ``:wake`` keys) carries the hash tag
  ``{SID}``, so they share one hash slot and each server-side script runs on one master. A prefix
  cannot hold ``{`` or ``}`` (the options refuse them), which would move the tag.
- The store's settings, the hash ``PREFIX:meta``, are one key in one slot: any node redirects to it.
- Listing (``len``, ``iter``, ``records``, ``verify``, ``stats``, ``clean``) scans every master in turn;
  the records are then fetched by a cluster pipeline, which groups the keys by node. ``clean()`` runs its
  compare-and-delete script once per key, so no script touches two sessions.
- Failover: while a master dies and its replica is promoted, calls meet refused connections, ``CLUSTERDOWN``
  or a stale slot map. Each call is retried (the client refreshes its map from the live nodes) for up to
  ``failover_timeout`` seconds, then raises :class:`~lockstore.BackendUnavailable`; a refused password is
  not retried. Every call retried is safe to repeat, as on a single server (the scripts are idempotent per
  lock token). A lock held on a master that dies before replicating it is gone on its replica: its holder's
  commit then fails (:class:`~lockstore.LockTimeout`, or :class:`~lockstore.BackendUnavailable` when the
  reply was lost) and writes nothing. A listing that meets a dying master raises after ``failover_timeout``:
  run it again.
- Durability: replication is asynchronous, so with ``durability="process"`` a write acknowledged by a
  master and not yet copied is lost with it (measured: up to hundreds of acknowledged ``edit()`` calls when
  a master under load is SIGKILLed). With ``durability="system"`` every commit is followed by ``WAIT 1`` on
  the same connection of the session's master: ``edit()`` and a set return only once a replica holds the
  write, and none is lost when the master dies and that replica takes over. A write no replica confirmed
  in time (a master left without a replica) raises :class:`~lockstore.BackendUnavailable`.

URL: ``redis+cluster://[user:password@]host:port[,host:port...][/][?failover_timeout=SECONDS]``. One
reachable node is enough (the others are found from it); naming several lets the store open while one
is down. No database number (a cluster has only database 0). ``failover_timeout`` defaults to 30 s, twice
the default ``cluster-node-timeout`` (15 s): a master's failure is detected after the node timeout, and its
replica's election takes a few seconds more. Set it to about twice your ``cluster-node-timeout``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import AskError, ClusterDownError, RedisClusterException, TryAgainError
from redis.retry import Retry

from ..errors import BackendUnavailable
from .redis import RedisStore

FAILOVER_TIMEOUT = 30.0
"""Default of ``failover_timeout``: seconds a call keeps trying while the cluster fails over."""
_FAILOVER_ERRORS = (
    redis.ConnectionError,
    redis.TimeoutError,
    ClusterDownError,
    TryAgainError,
    AskError,
    RedisClusterException,
)
"""What a cluster answers while a master is dying or being replaced (AskError and its MovedError: a slot
map gone stale, met by a call on one node's own client; RedisClusterException: no node could be reached
to refresh the slot map, or a slot is not covered)."""


def parse_cluster_url(url: str) -> tuple[list[tuple[str, int]], dict[str, Any], float]:
    """(the nodes, the client's credentials, failover_timeout) of a ``redis+cluster://`` URL; ValueError
    (naming no credential) for one that is not usable."""
    parts = urlsplit(url)
    if parts.scheme != "redis+cluster":
        raise ValueError(f"the scheme is {parts.scheme!r}, not 'redis+cluster'")
    if parts.path not in ("", "/", "/0"):
        raise ValueError("a cluster has no database number: end the URL with '/' (or nothing)")
    userinfo, at, hosts = parts.netloc.rpartition("@")
    auth: dict[str, Any] = {}
    if at:
        user, colon, password = userinfo.partition(":")
        auth = {"username": unquote(user) or None, "password": unquote(password) if colon else None}
    nodes = []
    for node in hosts.split(","):
        host, colon, port = node.strip().rpartition(":")
        host = host.strip("[]")  # an IPv6 address: [::1]:7000
        if not (colon and host and port.isdigit() and 0 < int(port) < 65536):
            raise ValueError(f"each node must be host:port, not {node[:60]!r}")
        nodes.append((host, int(port)))
    failover = FAILOVER_TIMEOUT
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name != "failover_timeout":
            raise ValueError(f"unknown URL parameter {name[:40]!r} (known: failover_timeout)")
        try:
            failover = float(value)
        except ValueError:
            failover = math.nan
        if not (math.isfinite(failover) and 0 <= failover <= 3600):
            raise ValueError(f"failover_timeout must be a number of seconds from 0 to 3600, not {value[:40]!r}")
    return nodes, auth, failover


class RedisClusterStore(RedisStore):
    """A store on a Redis Cluster: see the module docstring and :func:`lockstore.open`.

    Notes
    -----
    Thread safe: threads share one client, with a bounded pool per node (``pool_size`` connections each).
    Process safe and fork safe as :class:`~lockstore.remote.redis.RedisStore`: each process opens its own
    store, and a child drops the connections it inherited.
    """

    failover_timeout: float

    def _new_client(self, url: str) -> Any:
        try:
            nodes, auth, self.failover_timeout = parse_cluster_url(url)
        except ValueError as exc:
            raise ValueError(f"not a usable Redis Cluster URL: {self.path}: {self._scrub(exc)}") from None

        first = f"[{nodes[0][0]}]" if ":" in nodes[0][0] else nodes[0][0]

        def connect() -> RedisCluster:
            return RedisCluster(
                # given as a URL, a node's pool is built by connection_pool_class: bounded and blocking
                url=f"redis://{first}:{nodes[0][1]}/0",
                startup_nodes=[ClusterNode(host, port) for host, port in nodes[1:]],
                retry=Retry(NoBackoff(), 0),  # retries are decided here, within failover_timeout (see _do)
                connection_pool_class=redis.BlockingConnectionPool,
                max_connections=self._pool_size,
                timeout=self.timeout,
                socket_timeout=self.connect_timeout,
                socket_connect_timeout=self.connect_timeout,
                **auth,
            )

        # Building the client reads the slot map from a node: the cluster may be failing over right now.
        return self._failover(connect)

    def _disconnect(self) -> None:
        self._client.close()

    def _node_client(self, key: str) -> Any:
        return self._client.get_redis_connection(self._client.get_node_from_key(key))

    def _send_commit(self, keys: list[str], args: list[str | bytes]) -> int:
        # The commit runs once outside _do and is retried on a RedisError: the cluster client's own errors (no
        # node reachable, a slot not covered) are raised as one, so it retries them too. With durability
        # "system" it goes with its WAIT to the master's own client, which does not follow the cluster: the
        # slot map is read again after a failure there.
        try:
            try:
                return super()._send_commit(keys, args)
            except _FAILOVER_ERRORS:
                if self._durable:
                    self._client.nodes_manager.initialize()
                raise
        except RedisClusterException as exc:
            raise redis.ConnectionError(self._scrub(exc)) from None

    def _failover(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)``, tried again while the cluster fails over, for up to ``failover_timeout``
        seconds; then :class:`BackendUnavailable` (which the caller's mapping of errors lets through)."""
        deadline = time.monotonic() + self.failover_timeout
        pause = 0.02
        while True:
            try:
                return fn(*args, **kwargs)
            except _FAILOVER_ERRORS as exc:
                left = deadline - time.monotonic()
                if left <= 0 or isinstance(exc.__cause__ or exc, redis.AuthenticationError):  # not a failover
                    raise BackendUnavailable(
                        f"redis cluster at {self.path} is unavailable (failover_timeout="
                        f"{self.failover_timeout:g} s): {type(exc).__name__}: {self._scrub(exc)}"
                    ) from None
                time.sleep(min(pause, left))
                pause = min(pause * 2, 0.25)

    def _do(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return super()._do(self._failover, fn, *args, **kwargs)

    def _scan(self, client: Any = None) -> Iterator[list[bytes]]:
        """Batches of the store's data keys, master by master (each SCAN runs on one node's client)."""
        for node in self._do(self._client.get_primaries):
            yield from super()._scan(self._client.get_redis_connection(node))

    def _sweep(self, stale: list[tuple[bytes, bytes]]) -> int:
        # A cluster pipeline refuses scripts: one call per key (clean() is not on a request's path).
        return sum(self._do(self._sweep_script, keys=[key], args=[header]) for key, header in stale)

    def _counts(self) -> tuple[int, int, int, str]:
        live, expired, size, server = super()._counts()
        return live, expired, size, f"{server} cluster, {len(self._client.get_primaries())} masters"


__all__ = ["FAILOVER_TIMEOUT", "RedisClusterStore", "parse_cluster_url"]
