"""Who is using the CPU/GPU: one long job (a fusion or a training run) at a time.

A fusion started while a training run owns the machine would crawl (both saturate
the cores, or fight over GPU memory) and could run the GPU out of memory, so the
widgets ask here first and refuse with a plain message instead. The registry is
module-level (one per napari process, shared by every widget of every viewer) and
free of Qt, so a job is released from a worker's ``finished`` signal even after
the widget that started it is gone.
"""
from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass

__all__ = ["Busy", "claim", "release", "running", "refusal"]

_lock = threading.Lock()
_jobs: dict[int, "Busy"] = {}
_ids = itertools.count(1)

#: What each kind of job is called in a refusal, and how the user ends it.
_WORDS = {
    "training": ("a training run is using the CPU/GPU", "wait for it or stop it"),
    "fusion": ("a fusion is using the CPU/GPU", "wait for it or cancel it"),
}


@dataclass(frozen=True)
class Busy:
    """A claim on the machine: ``kind`` ("fusion" or "training") and what runs."""

    token: int
    kind: str
    what: str


def refusal(job: Busy) -> str:
    """The one-line message shown to a user whose job ``job`` is blocking."""
    doing, advice = _WORDS.get(job.kind, (f"a {job.kind} is using the CPU/GPU", "wait for it"))
    return f"{doing}; {advice} ({job.what})"


def running() -> list[Busy]:
    """The jobs holding the machine now (oldest first)."""
    with _lock:
        return sorted(_jobs.values(), key=lambda j: j.token)


def claim(kind: str, what: str) -> Busy:
    """Take the machine for a job, or raise :class:`RuntimeError` saying who has it.

    Parameters
    ----------
    kind : {"fusion", "training"}
    what : str
        A few words naming the job (shown to whoever is refused).

    Raises
    ------
    RuntimeError
        With :func:`refusal`'s message when another job holds the machine.
    """
    with _lock:
        if _jobs:
            first = min(_jobs.values(), key=lambda j: j.token)
            raise RuntimeError(refusal(first))
        job = Busy(next(_ids), kind, what)
        _jobs[job.token] = job
        return job


def release(job: Busy | None, *_: object) -> None:
    """Give the machine back (harmless twice; extra arguments from Qt signals are ignored)."""
    if job is not None:
        with _lock:
            _jobs.pop(job.token, None)
