"""Task ids: UUID4 strings made in batches, never handed out twice (threads, fork)."""

from __future__ import annotations

import os
import threading
import uuid

from celeriac.utils.ids import BATCH, new_id


def test_ids_are_version_4_uuids_in_their_canonical_form() -> None:
    for text in (new_id() for _ in range(3 * BATCH)):
        parsed = uuid.UUID(text)
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122 and str(parsed) == text


def test_threads_never_get_the_same_id() -> None:
    got: list[list[str]] = [[] for _ in range(4)]

    def take(into: list[str]) -> None:
        into.extend(new_id() for _ in range(10 * BATCH))

    threads = [threading.Thread(target=take, args=(into,)) for into in got]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [i for into in got for i in into]
    assert len(set(every)) == len(every) == 40 * BATCH


def test_a_forked_child_does_not_hand_out_its_parents_next_ids() -> None:
    new_id()  # a batch is under way in the parent
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(write, " ".join(new_id() for _ in range(5)).encode())
        os._exit(0)
    os.close(write)
    parents = {new_id() for _ in range(5)}
    os.waitpid(pid, 0)
    with os.fdopen(read) as f:
        childs = set(f.read().split())
    assert len(childs) == 5 and not parents & childs
