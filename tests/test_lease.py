"""The lease renewer shared by the server locks (lockstore.remote.lease): renews while held, loses on refusal."""

from __future__ import annotations

import itertools
import os
import time

from lockstore.remote.lease import RENEWER


def wait_for(predicate, timeout: float = 5.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False


def test_a_held_lease_is_renewed_every_third_of_it_until_ended() -> None:
    calls: list[float] = []
    lease = RENEWER.hold(lambda: calls.append(time.monotonic()) or True, 0.3)
    assert wait_for(lambda: len(calls) >= 4)
    lease.end()
    seen = len(calls)
    time.sleep(0.35)
    assert len(calls) <= seen + 1  # at most one renewal already under way when it ended
    gaps = [b - a for a, b in itertools.pairwise(calls[:4])]
    assert all(0.05 < gap < 0.25 for gap in gaps), gaps
    assert not lease.lost


def test_a_refused_renewal_loses_the_lease_and_stops() -> None:
    calls: list[int] = []
    lease = RENEWER.hold(lambda: calls.append(1) is not None, 0.15)
    assert wait_for(lambda: lease.lost)
    time.sleep(0.2)
    assert len(calls) == 1


def test_a_server_unreachable_past_the_lease_loses_it() -> None:
    def down() -> bool:
        raise ConnectionError("server down")

    lease = RENEWER.hold(down, 0.3)
    time.sleep(0.15)
    assert not lease.lost  # still within the lease: retried
    assert wait_for(lambda: lease.lost, 2.0)


def test_a_forked_child_renews_nothing_it_inherited() -> None:
    calls = []
    lease = RENEWER.hold(lambda: calls.append(os.getpid()) or True, 0.15)
    try:
        pid = os.fork()
        if pid == 0:  # the child: its copy of the renewer holds nothing
            os._exit(0 if not RENEWER._leases else 1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert wait_for(lambda: len(calls) >= 2)
        assert set(calls) == {os.getpid()}
    finally:
        lease.end()
