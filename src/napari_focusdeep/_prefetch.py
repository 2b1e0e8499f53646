"""Read ahead: compute the next item in a background thread while the caller works.

Decoding a frame (JPEG, compressed TIFF) and warping it are as long as registering or
fusing it, and OpenCV, numpy and the codecs release the GIL, so on two cores reading
frame ``i + 1`` while frame ``i`` is processed hides most of the reading time.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator, TypeVar

__all__ = ["prefetch"]

T = TypeVar("T")


def prefetch(load: Callable[[int], T], n: int) -> Iterator[T]:
    """Yield ``load(0), ..., load(n - 1)`` in order, each computed one step ahead.

    One item is in flight at a time (memory grows by one item, not with ``n``), and
    ``load`` is called in order from a single worker thread, so a stateful ``load`` is
    safe. An exception in ``load`` is raised where its item is consumed. Closing the
    generator early (a cancelled run) waits for the item in flight and drops it.
    """
    if n <= 0:
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="focusdeep-read") as pool:
        ahead = pool.submit(load, 0)
        for i in range(n):
            item = ahead.result()
            if i + 1 < n:
                ahead = pool.submit(load, i + 1)
            yield item
            del item
