"""Group commit (`app/group_commit.py`): callers that arrive while a batch is written share
the next one, each hears its batch's outcome, and batches are written in order."""

from __future__ import annotations

import threading
import time

import pytest

from app.group_commit import GroupCommit
from tests.factories import wait_for


class Gate:
    """A writer that records its batches and holds the first one until released."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.written: list[list[int]] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        self.fail_on = fail_on

    def write(self, items: list[int]) -> int:
        if not self.entered.is_set():
            self.entered.set()
            self.release.wait(10)
        self.written.append(sorted(items))
        if self.fail_on in items:
            raise RuntimeError(f"the batch with {self.fail_on} failed")
        return sum(items)


def _behind_a_held_write(gate: Gate, values: range) -> dict[int, object]:
    """Commit 100, hold its write while `values` are committed from a thread each, release:
    returns each value's outcome (its batch's result or error)."""
    commits: GroupCommit[list[int], int] = GroupCommit(list, gate.write)
    first = threading.Thread(target=commits.commit, args=(lambda p: p.append(100),))
    first.start()
    assert gate.entered.wait(10)
    outcomes: dict[int, object] = {}

    def run(value: int) -> None:
        try:
            outcomes[value] = commits.commit(lambda pending: pending.append(value))
        except RuntimeError as exc:
            outcomes[value] = exc

    threads = [threading.Thread(target=run, args=(v,)) for v in values]
    for thread in threads:
        thread.start()
    wait_for(lambda: len(commits.pending()) == len(values), what="callers queued behind it")
    gate.release.set()
    for thread in [first, *threads]:
        thread.join()
    assert commits.batches == 2
    return outcomes


def test_callers_behind_a_write_share_the_next_batch_and_hear_its_result() -> None:
    gate = Gate()
    outcomes = _behind_a_held_write(gate, range(10))
    assert gate.written == [[100], list(range(10))]
    assert outcomes == {v: sum(range(10)) for v in range(10)}


def test_every_caller_of_a_failed_batch_hears_the_error_and_the_next_batch_goes_on() -> None:
    gate = Gate(fail_on=3)
    outcomes = _behind_a_held_write(gate, range(5))
    assert all(isinstance(outcomes[v], RuntimeError) for v in range(5))
    commits: GroupCommit[list[int], int] = GroupCommit(list, gate.write)
    assert commits.commit(lambda p: p.append(7)) == 7
    with pytest.raises(RuntimeError, match="with 3 failed"):
        commits.commit(lambda p: p.append(3))
    assert commits.commit(lambda p: p.append(8)) == 8


def test_writing_a_batch_wakes_its_callers_and_one_writer_of_the_next_not_every_waiter() -> None:
    """Ten callers wait behind a held write; when it lands, one of them writes their batch
    (held too) and the other nine sleep on until that one lands: none is woken for nothing."""
    second_entered, second_release = threading.Event(), threading.Event()
    first = Gate()

    def write(items: list[int]) -> int:
        if first.entered.is_set() and 100 not in items:
            second_entered.set()
            second_release.wait(10)
        return first.write(items)

    commits: GroupCommit[list[int], int] = GroupCommit(list, write)
    holder = threading.Thread(target=commits.commit, args=(lambda p: p.append(100),))
    holder.start()
    assert first.entered.wait(10)
    outcomes: dict[int, int] = {}

    def run(value: int) -> None:
        outcomes[value] = commits.commit(lambda pending: pending.append(value))

    threads = [threading.Thread(target=run, args=(v,)) for v in range(10)]
    for thread in threads:
        thread.start()
    wait_for(lambda: len(commits.pending()) == 10, what="callers queued behind it")
    first.release.set()
    assert second_entered.wait(10)  # one caller of the second batch is writing it
    holder.join(10)
    time.sleep(0.2)  # a waiter woken for nothing would have counted itself by now
    assert outcomes == {} and commits.idle_wakeups == 0
    second_release.set()
    for thread in threads:
        thread.join(10)
    assert outcomes == {v: sum(range(10)) for v in range(10)}
    assert commits.batches == 2 and commits.idle_wakeups == 0
