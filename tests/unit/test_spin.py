"""SpinReceiver on real sockets: what it returns, and when it stops spinning."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from celeriac.backends.redis import RedisBackend
from celeriac.brokers._redis_blocking import BlockingClient
from celeriac.brokers.redis import RedisBroker
from celeriac.errors import ConfigurationError
from celeriac.utils import spin
from celeriac.utils.spin import SpinReceiver


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def _received_later(receiver: SpinReceiver, pair: tuple[socket.socket, socket.socket],
                    data: bytes, delay: float) -> bytes:
    """What ``receiver`` reads from the first socket while the second sends ``data`` after
    ``delay`` seconds."""
    a, b = pair

    def send() -> None:
        time.sleep(delay)
        b.sendall(data)

    thread = threading.Thread(target=send)
    thread.start()
    try:
        return receiver.recv(a, len(data))
    finally:
        thread.join()


def test_data_already_there_is_taken_while_spinning(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    a, b = pair
    receiver = SpinReceiver(0.01)
    b.sendall(b"+PONG\r\n")
    assert receiver.recv(a, 65536) == b"+PONG\r\n"
    assert receiver._misses == 0


def test_a_reply_later_than_the_spin_is_waited_for_in_the_kernel(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    receiver = SpinReceiver(0.001)
    assert _received_later(receiver, pair, b"late", 0.05) == b"late"
    assert receiver._misses == 1


def test_spinning_pauses_after_a_run_of_misses_and_resumes_after_the_pause(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    a, b = pair
    receiver = SpinReceiver(0.0001)
    for i in range(spin.MISSES_BEFORE_PAUSE):
        assert _received_later(receiver, pair, b"x", 0.01) == b"x"
        assert receiver._paused == (spin.PAUSE if i == spin.MISSES_BEFORE_PAUSE - 1 else 0)
    b.sendall(b"y" * spin.PAUSE)
    for _ in range(spin.PAUSE):
        assert receiver.recv(a, 1) == b"y"  # without a spin
    assert receiver._paused == 0
    b.sendall(b"z")
    assert receiver.recv(a, 1) == b"z"  # spinning again: a hit
    assert receiver._misses == 0 and receiver._paused == 0


def test_a_closed_peer_reads_as_end_of_stream(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    b.close()
    assert SpinReceiver(0.01).recv(a, 65536) == b""


def test_a_socket_with_a_timeout_of_its_own_spins_and_keeps_its_timeout(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    a, b = pair
    a.settimeout(0.05)
    receiver = SpinReceiver(0.01)
    b.sendall(b"now")
    assert receiver.recv(a, 65536) == b"now"
    assert receiver._misses == 0 and a.gettimeout() == 0.05
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        receiver.recv(a, 65536)
    assert time.monotonic() - start >= 0.04
    assert receiver._misses == 1 and a.gettimeout() == 0.05
    # after the spin, within the timeout:
    assert _received_later(receiver, pair, b"later", 0.02) == b"later"


def test_a_read_that_continues_a_reply_counts_neither_way(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    """The rest of a large reply comes at once after its first part missed the spin: that
    hit must not undo the miss (else a large result's wait would spin for ever)."""
    receiver = SpinReceiver(0.0001)
    for i in range(spin.MISSES_BEFORE_PAUSE):
        assert _received_later(receiver, pair, b"head", 0.01) == b"head"  # a miss
        assert receiver._misses == (i + 1) % spin.MISSES_BEFORE_PAUSE
        pair[1].sendall(b"rest")
        assert receiver.recv(pair[0], 4, scored=False) == b"rest"  # a hit, not counted
    assert receiver._paused == spin.PAUSE - 1  # (the last read of the rest ran in the pause)


def test_no_spin_on_a_socket_of_another_library(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    """gevent's sockets subclass the standard one: spinning on them would keep every other
    greenlet from running."""
    gevent_socket = pytest.importorskip("gevent.socket")
    a, b = gevent_socket.socketpair()
    try:
        receiver = SpinReceiver(0.0001)
        assert _received_later(receiver, (a, b), b"late", 0.01) == b"late"
        assert receiver._misses == 0  # it never spun
    finally:
        a.close()
        b.close()


def test_no_spin_with_one_usable_cpu_nor_with_a_zero_budget(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert SpinReceiver(0).budget == 0
    if hasattr(spin.os, "sched_getaffinity"):  # pinned to one CPU of several
        monkeypatch.setattr(spin.os, "sched_getaffinity", lambda _pid: {0})
        monkeypatch.setattr(spin.os, "cpu_count", lambda: 2)
    else:
        monkeypatch.setattr(spin.os, "cpu_count", lambda: 1)
    assert SpinReceiver(0.001).budget == 0


@pytest.mark.parametrize("value", ["soon", -0.001, None, True, "inf", float("nan"), 0.5])
def test_a_wrong_reply_spin_is_a_configuration_error(value: object) -> None:
    with pytest.raises(ConfigurationError, match="reply_spin"):
        RedisBroker("redis://localhost:6379/0", reply_spin=value)


@pytest.mark.parametrize("value", ["soon", -1, None, False, float("inf"), 1])
def test_a_wrong_wait_spin_is_a_configuration_error(value: object) -> None:
    with pytest.raises(ConfigurationError, match="wait_spin"):
        RedisBackend("redis://localhost:6379/0", wait_spin=value)


def test_the_blocking_publish_spins_no_longer_than_its_socket_timeout() -> None:
    client = BlockingClient("redis://localhost:6379/0", {"socket_timeout": 0.005}, 0.01)
    assert client._receiver.budget in (0.0, 0.005)  # (0: one usable CPU)
