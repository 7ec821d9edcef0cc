"""Cross-process wakeups (``celeriac.utils.wakeup``): the socket directory does not outlive its
listeners, whether they close or die."""

from __future__ import annotations

import socket
from pathlib import Path

from celeriac.utils.wakeup import Listener, Notifier


async def test_the_directory_goes_with_its_last_listener(tmp_path: Path) -> None:
    directory = tmp_path / "chan"
    first, second = Listener(directory), Listener(directory)
    notifier = Notifier(directory)
    try:
        first.arm()
        notifier.notify()
        assert await first.wait(1.0)
        first.close()
        assert directory.is_dir()  # the second still listens
        second.arm()
        notifier.notify()
        assert await second.wait(1.0)
        second.close()
        assert not directory.exists()
        third = Listener(directory)  # made again on demand
        third.arm()
        notifier.notify()
        assert await third.wait(1.0)
        third.close()
    finally:
        notifier.close()


def test_a_dead_listeners_socket_and_directory_are_removed(tmp_path: Path) -> None:
    directory = tmp_path / "chan"
    directory.mkdir()
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    dead.bind(str(directory / "1-0-dead.sock"))
    dead.close()  # a process killed without cleaning up leaves its socket file
    notifier = Notifier(directory)
    try:
        notifier.notify()
        assert not directory.exists()
    finally:
        notifier.close()
