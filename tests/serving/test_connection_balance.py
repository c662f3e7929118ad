"""The workers' connection shares (`serving.http.balance`): who holds more than its share.

Two `ConnectionShares` on one slots' file stand for two workers of a group (the file is
shared memory between processes; here both views are in one process)."""

from __future__ import annotations

from pathlib import Path

from shipyard.serving.http.balance import (
    NOT_LISTENING,
    ConnectionShares,
    create_slots,
    mark_not_listening,
)


def group(tmp_path: Path, count: int) -> list[ConnectionShares]:
    path = create_slots(tmp_path, count)
    return [ConnectionShares(path, i) for i in range(count)]


def test_a_worker_over_the_ceiling_of_its_share_sheds_until_even(tmp_path: Path) -> None:
    one, two = group(tmp_path, 2)
    one.start_listening()
    for _ in range(5):
        one.opened()
    assert not one.over_share()  # alone: nowhere to send a connection
    two.start_listening()
    assert one.over_share() and not two.over_share()
    one.shed()  # its client reconnects, and the kernel puts it on the other worker
    two.opened()
    assert one.over_share()  # 4 and 1: the ceiling of 5/2 is 3
    one.shed()
    two.opened()
    assert not one.over_share() and not two.over_share()  # 3 and 2
    one.shed()
    assert not one.over_share()  # told to close, not reconnected yet: 2 and 2
    one.opened()  # ... and the kernel put it back on the same worker: 3 and 2 again
    assert not one.over_share()
    two.opened()
    two.opened()
    assert not two.over_share()  # 3 and 4 of 7: the ceiling is 4
    two.opened()
    assert two.over_share() and not one.over_share()  # 3 and 5 of 8


def test_workers_not_listening_do_not_count(tmp_path: Path) -> None:
    one, two, three = group(tmp_path, 3)
    one.start_listening()
    two.start_listening()
    for _ in range(4):
        one.opened()
    assert one.over_share()  # 4 against 0: the ceiling of 4/2 is 2
    two.stop_listening()  # draining: it takes no new connections
    assert not one.over_share()
    two.start_listening()
    three.start_listening()
    assert one.over_share()  # the ceiling of 4/3 is 2
    mark_not_listening(tmp_path, 2)  # the supervisor: worker 3 died
    mark_not_listening(tmp_path, 1)
    assert not one.over_share()


def test_counts_before_listening_are_published_when_it_starts(tmp_path: Path) -> None:
    one, two = group(tmp_path, 2)
    two.start_listening()
    one.opened()
    one.opened()
    one.closed()
    assert not one.over_share()  # not listening: it never sheds
    slots = memoryview(bytearray((tmp_path / "connections.bin").read_bytes())).cast("q")
    assert slots.tolist() == [NOT_LISTENING, 0]
    one.start_listening()
    slots = memoryview(bytearray((tmp_path / "connections.bin").read_bytes())).cast("q")
    assert slots.tolist() == [1, 0]
    for shares in (one, two):
        shares.close()
