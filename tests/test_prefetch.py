"""Reading ahead: order, at most one item in flight, errors and early stops."""
from __future__ import annotations

import threading
import time

import pytest

from napari_focusdeep._prefetch import prefetch


def test_items_come_in_order_and_one_ahead():
    started: list[int] = []

    def load(i: int) -> int:
        started.append(i)
        return i * i

    seen = []
    for i, item in enumerate(prefetch(load, 5)):
        time.sleep(0.02)  # the next item is read meanwhile, but never two ahead
        assert max(started) <= i + 1
        seen.append(item)
    assert seen == [0, 1, 4, 9, 16] and started == [0, 1, 2, 3, 4]
    assert list(prefetch(load, 0)) == []


def test_loading_runs_beside_the_consumer():
    main = threading.get_ident()
    threads = set()

    def load(i: int) -> int:
        threads.add(threading.get_ident())
        return i

    assert list(prefetch(load, 3)) == [0, 1, 2]
    assert main not in threads


def test_an_error_is_raised_where_its_item_is_consumed():
    def load(i: int) -> int:
        if i == 2:
            raise ValueError("frame 2 is damaged")
        return i

    got = []
    with pytest.raises(ValueError, match="frame 2"):
        for item in prefetch(load, 4):
            got.append(item)
    assert got == [0, 1]


def test_closing_early_waits_for_the_item_in_flight():
    done = threading.Event()

    def load(i: int) -> int:
        if i == 1:
            time.sleep(0.1)
            done.set()
        return i

    gen = prefetch(load, 10)
    assert next(gen) == 0
    gen.close()  # a cancelled run: nothing keeps reading behind its back
    assert done.is_set()
