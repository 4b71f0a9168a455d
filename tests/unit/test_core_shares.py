"""The cores every model's CPU workers share: never more threads busy than cores, a batch
asking for more than all of them takes all, waiting batches go in arrival order, and a load
(in the background) only gets a core while no batch waits for one."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from app.batching.cores import CoreShares


def in_thread(work: Callable[[], object]) -> threading.Thread:
    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    return thread


def until(condition: Callable[[], bool]) -> None:
    """Spin until another thread has made `condition` true (it is set under a lock)."""
    for _ in range(10_000_000):
        if condition():
            return
    raise AssertionError("the other thread never got there")


def test_batches_run_at_once_while_their_threads_fit() -> None:
    cores = CoreShares(4)
    assert [cores.take(1), cores.take(2), cores.take(1)] == [1, 2, 1]
    assert cores.busy == 4 and cores.waiting == 0


def test_a_batch_wanting_more_than_every_core_takes_them_all() -> None:
    cores = CoreShares(2)
    assert cores.take(8) == 2
    cores.release(2)
    assert cores.busy == 0


def test_a_batch_waits_for_cores_and_never_overfills_them() -> None:
    cores = CoreShares(2)
    cores.take(1)
    cores.take(1)
    took: list[int] = []
    waiter = in_thread(lambda: took.append(cores.take(2)))
    until(lambda: cores.waiting == 1)
    cores.release(1)
    assert cores.waiting == 1 and cores.busy == 1  # one core free is not enough for two
    cores.release(1)
    waiter.join()
    assert took == [2] and cores.busy == 2 and cores.waiting == 0


def test_waiting_batches_go_in_arrival_order() -> None:
    cores = CoreShares(2)
    cores.take(2)
    order: list[str] = []
    wide = in_thread(lambda: (cores.take(2), order.append("wide")))
    until(lambda: cores.waiting == 1)
    narrow = in_thread(lambda: (cores.take(1), order.append("narrow")))
    until(lambda: cores.waiting == 2)
    cores.release(2)
    wide.join()
    assert order == ["wide"] and cores.waiting == 1  # the later, narrower one still waits
    cores.release(2)
    narrow.join()
    assert order == ["wide", "narrow"] and cores.busy == 1


def test_a_load_takes_a_free_core_when_no_batch_waits() -> None:
    cores = CoreShares(2)
    cores.take(1)
    assert cores.take(1, background=True) == 1 and cores.busy == 2


def test_a_load_waits_while_a_batch_waits_and_batches_arriving_later_go_first() -> None:
    cores = CoreShares(2)
    cores.take(2)
    order: list[str] = []
    load = in_thread(lambda: (cores.take(1, background=True), order.append("load")))
    until(lambda: cores.waiting_in_background == 1)
    batch = in_thread(lambda: (cores.take(2), order.append("batch")))
    until(lambda: cores.waiting == 1)
    cores.release(1)  # one core free: the batch at the head wants two, so the load still waits
    assert cores.waiting_in_background == 1 and cores.busy == 1
    cores.release(1)
    batch.join()
    assert order == ["batch"] and cores.waiting_in_background == 1
    cores.release(2)
    load.join()
    assert order == ["batch", "load"] and cores.busy == 1


def test_no_cores_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        CoreShares(0)
