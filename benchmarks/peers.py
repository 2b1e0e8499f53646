"""The focus stackers labs use today, each behind one function, for side-by-side runs.

Every tool - ours included - runs as a subprocess on the same frame files, so wall time
and memory are measured the same way for all of them: interpreter start, decoding,
registration, fusion and encoding included.

This module installs nothing. :func:`available` says which peers are installed,
:func:`missing` says which are not and how to install them, and callers skip those.
The peers are benchmark-only tools, never dependencies of the package.

Each peer runs in its documented focus-stacking mode:

``focusdeep``
    ``focusdeep fuse FRAMES -o OUT`` (default ``pyramid`` method, affine registration
    to the middle frame).
``focusdeep-any``
    The same with ``--method focusdeep-any --device cpu``: our shipped deep model, shown for
    information (the targets concern the classical default).
``focusdeep-n8``
    The same with ``--method focusdeep --device cpu``: the paper's fixed-length network
    (N = 8) on the pyramid base, also for information.
``enfuse``
    ``align_image_stack -m -a PREFIX FRAMES`` then ``enfuse --exposure-weight=0
    --saturation-weight=0 --contrast-weight=1 --hard-mask --contrast-window-size=9``
    (the focus-stacking recipe of the enfuse manual; ``-m`` optimises magnification).
``focusweave``
    ``focusweave FOLDER --output OUT --keep-size`` (Laplacian-pyramid soft weights; aligns
    by default; ``--keep-size`` scored better than its default grown canvas on the tuning
    stacks).
``openfocus``
    ``openfocus -i FRAMES -o OUT -m METHOD --align ecc``: its best classical method on our
    tuning stacks (see ``OPENFOCUS_CLASSICAL``) with its ECC (homography) registration.
``openfocus-stackmff``
    The same with ``-m stackmffv3 --cpu``: its shipped StackMFF-V3 neural model, offline.
``rawhdr``
    ``rawhdr alignment FRAMES`` (ECC affine, chained from the first frame) then
    ``rawhdr focus-fusion`` (its focus-stacking mode).
"""
from __future__ import annotations

import importlib.metadata
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

if TYPE_CHECKING:  # psutil is imported where it is used: listing peers must not need it
    import psutil

__all__ = [
    "Peer",
    "PeerError",
    "PeerRun",
    "PEERS",
    "OPENFOCUS_CLASSICAL",
    "available",
    "missing",
    "describe",
    "run_peer",
    "run_peer_measured",
    "run_measured",
    "peer_version",
]

#: openfocus's classical method used as "openfocus": the best of its classical methods
#: (guided_filter, gfgfgf, dct, dtcwt, openfocus_a/b/c) on tuning stacks that are not part of
#: the scored set; ``python benchmarks/compare.py --tune-openfocus`` re-measures it.
OPENFOCUS_CLASSICAL = "openfocus_c"


class PeerError(RuntimeError):
    """A peer failed, timed out or was stopped at the memory cap."""


@dataclass(frozen=True)
class Peer:
    """One tool: how to find it, install it and run it on frame files.

    Attributes
    ----------
    name : str
        Short key used on the command line and in tables.
    label : str
        What the tables call it.
    executables : tuple of str
        Programs that must be on PATH (or next to this interpreter).
    install : str
        How to install it, shown when it is missing.
    commands : callable
        ``commands(frames, out, workdir) -> list of argv``, run one after the other.
    distribution : str or None
        PyPI distribution whose version is reported.
    """

    name: str
    label: str
    executables: tuple[str, ...]
    install: str
    commands: Callable[[Sequence[Path], Path, Path], list[list[str]]]
    distribution: str | None = None


@dataclass
class PeerRun:
    """What one measured run gave."""

    seconds: float
    peak_rss: int  # bytes, summed over the process tree, polled
    log: str = ""
    steps: list[float] = field(default_factory=list)  # seconds per command


def _which(name: str) -> str | None:
    # a venv's console scripts sit next to its interpreter even when the venv is not activated
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    return shutil.which(name)


def _exe(name: str) -> str:
    path = _which(name)
    if path is None:
        raise PeerError(f"{name} is not installed")
    return path


# -- command lines ---------------------------------------------------------------------
def _focusdeep(*extra: str) -> Callable[[Sequence[Path], Path, Path], list[list[str]]]:
    def commands(frames: Sequence[Path], out: Path, work: Path) -> list[list[str]]:
        return [[_exe("focusdeep"), "fuse", *map(str, frames), "-o", str(out), *extra]]

    return commands


def _enfuse(frames: Sequence[Path], out: Path, work: Path) -> list[list[str]]:
    prefix = str(work / "aligned_")
    n = len(frames)
    aligned = [f"{prefix}{i:04d}.tif" for i in range(n)]
    return [
        [_exe("align_image_stack"), "-m", "-a", prefix, *map(str, frames)],
        [
            _exe("enfuse"),
            "--exposure-weight=0",
            "--saturation-weight=0",
            "--contrast-weight=1",
            "--hard-mask",
            "--contrast-window-size=9",
            "-o",
            str(out),
            *aligned,
        ],
    ]


def _focusweave(frames: Sequence[Path], out: Path, work: Path) -> list[list[str]]:
    # focusweave takes a folder: link the frames in, named so that its sort keeps Z order
    folder = work / "frames"
    folder.mkdir()
    for i, f in enumerate(frames):
        (folder / f"{i:04d}{f.suffix.lower()}").symlink_to(Path(f).resolve())
    # --keep-size (output the size of the inputs) scored 2.8 dB better than the grown default
    # canvas on the tuning stacks (compare.py --parts tune)
    return [[_exe("focusweave"), str(folder), "--output", str(out), "--keep-size"]]


def _openfocus(method: str, extra: Sequence[str] = ()) -> Callable[[Sequence[Path], Path, Path], list[list[str]]]:
    def commands(frames: Sequence[Path], out: Path, work: Path) -> list[list[str]]:
        return [[_exe("openfocus"), "-i", *map(str, frames), "-o", str(out), "-m", method, "--align", "ecc", *extra]]

    return commands


def _rawhdr(frames: Sequence[Path], out: Path, work: Path) -> list[list[str]]:
    pattern = str(work / "aligned_{:05}.tif")
    aligned = [pattern.format(i) for i in range(len(frames))]
    return [
        [_exe("rawhdr"), "alignment", *map(str, frames), "-o", pattern],
        [_exe("rawhdr"), "focus-fusion", *aligned, "-o", str(out)],
    ]


PEERS: dict[str, Peer] = {
    p.name: p
    for p in [
        Peer(
            "focusdeep",
            "focusdeep (ours, pyramid)",
            ("focusdeep",),
            "pip install -e .  (this repository)",
            _focusdeep(),
            "napari-focusdeep",
        ),
        Peer(
            "focusdeep-any",
            "focusdeep-any (ours, deep, CPU)",
            ("focusdeep",),
            "pip install -e '.[deep]'  (this repository, with torch)",
            _focusdeep("--method", "focusdeep-any", "--device", "cpu"),
            "napari-focusdeep",
        ),
        Peer(
            "focusdeep-n8",
            "focusdeep N=8 (ours, deep, CPU)",
            ("focusdeep",),
            "pip install -e '.[deep]'  (this repository, with torch)",
            _focusdeep("--method", "focusdeep", "--device", "cpu"),
            "napari-focusdeep",
        ),
        Peer(
            "enfuse",
            "enfuse + align_image_stack",
            ("enfuse", "align_image_stack"),
            "apt-get install enfuse enblend hugin-tools",
            _enfuse,
        ),
        Peer("focusweave", "focusweave", ("focusweave",), "pip install focusweave", _focusweave, "focusweave"),
        Peer(
            "openfocus",
            f"openfocus {OPENFOCUS_CLASSICAL} + ECC",
            ("openfocus",),
            "pip install torch==2.13.0 && pip install --no-deps openfocus dtcwt && "
            "pip install imageio pillow-heif rawpy scipy  (dtcwt's metadata pins numpy<2; it runs on numpy 2)",
            _openfocus(OPENFOCUS_CLASSICAL),
            "openfocus",
        ),
        Peer(
            "openfocus-stackmff",
            "openfocus StackMFF-V3 + ECC",
            ("openfocus",),
            "as openfocus (its StackMFF weights ship in the wheel)",
            _openfocus("stackmffv3", ("--cpu",)),
            "openfocus",
        ),
        Peer(
            "rawhdr",
            "rawhdr focus-fusion + alignment",
            ("rawhdr",),
            "pip install --no-deps rawhdr && pip install click imageio rawpy PyWavelets scipy  "
            "(it asks for opencv-python, which clashes with opencv-python-headless)",
            _rawhdr,
            "rawhdr",
        ),
    ]
}


# -- discovery -------------------------------------------------------------------------
def available(names: Sequence[str] | None = None) -> list[str]:
    """The peers among ``names`` (default: all) whose programs are installed."""
    names = list(PEERS) if names is None else list(names)
    for n in names:
        if n not in PEERS:
            raise ValueError(f"unknown peer {n!r}; choose from {', '.join(PEERS)}")
    return [n for n in names if all(_which(e) for e in PEERS[n].executables)]


def missing(names: Sequence[str] | None = None) -> dict[str, str]:
    """``{name: how to install it}`` for the peers among ``names`` that are not installed."""
    names = list(PEERS) if names is None else list(names)
    have = set(available(names))
    return {n: PEERS[n].install for n in names if n not in have}


def peer_version(name: str) -> str:
    """The installed version of a peer, as the tool or its distribution reports it."""
    peer = PEERS[name]
    if peer.distribution:
        try:
            return importlib.metadata.version(peer.distribution)
        except importlib.metadata.PackageNotFoundError:
            return "?"
    if name == "enfuse":
        try:
            text = subprocess.run([_exe("enfuse"), "--version"], capture_output=True, text=True, timeout=30).stdout
            return text.splitlines()[0].split()[-1] if text else "?"
        except (OSError, subprocess.SubprocessError, PeerError):
            return "?"
    return "?"


def describe() -> str:
    """One line per peer: installed with its version, or missing with the install hint."""
    have = set(available())
    lines = []
    for name, peer in PEERS.items():
        if name in have:
            lines.append(f"  {name:<19} {peer_version(name):<10} {peer.label}")
        else:
            lines.append(f"  {name:<19} MISSING    install: {peer.install}")
    return "\n".join(lines)


# -- running ---------------------------------------------------------------------------
def _tree_rss(proc: psutil.Process) -> int:
    import psutil

    total = 0
    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def run_measured(argv: list[str], timeout: float | None, mem_cap: int | None, poll: float) -> tuple[float, int, str]:
    """Run ``argv``; return (seconds, peak tree RSS, combined output)."""
    import psutil

    with tempfile.TemporaryFile("w+") as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        ps = psutil.Process(proc.pid)
        peak, reason = 0, None
        stop = threading.Event()

        def watch() -> None:
            nonlocal peak, reason
            while not stop.is_set():
                rss = _tree_rss(ps)
                peak = max(peak, rss)
                if mem_cap is not None and rss > mem_cap:
                    reason = f"stopped at the memory cap ({rss / 2**30:.1f} GiB > {mem_cap / 2**30:.1f} GiB)"
                    _kill_tree(ps)
                    return
                if timeout is not None and time.perf_counter() - t0 > timeout:
                    reason = f"timed out after {timeout:.0f} s"
                    _kill_tree(ps)
                    return
                stop.wait(poll)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        code = proc.wait()
        seconds = time.perf_counter() - t0
        stop.set()
        watcher.join()
        log.seek(0)
        text = log.read()
    if reason is not None:
        raise PeerError(f"{Path(argv[0]).name}: {reason}")
    if code != 0:
        tail = " | ".join(text.strip().splitlines()[-3:])
        raise PeerError(f"{Path(argv[0]).name} exited with {code}: {tail[-400:]}")
    return seconds, peak, text


def _kill_tree(proc: psutil.Process) -> None:
    import psutil

    try:
        procs = [*proc.children(recursive=True), proc]
    except psutil.Error:
        procs = [proc]
    for p in procs:
        try:
            p.kill()
        except psutil.Error:
            pass


def run_peer_measured(
    name: str,
    frame_paths: Sequence[str | Path],
    out_path: str | Path,
    *,
    timeout: float | None = None,
    mem_cap: int | None = None,
    poll: float = 0.02,
) -> PeerRun:
    """Run peer ``name`` on ``frame_paths`` (in Z order), writing ``out_path``.

    Parameters
    ----------
    name : str
        A key of :data:`PEERS`.
    frame_paths : sequence of path
        The frame files, in focus order.
    out_path : path
        The fused image; its extension picks the format. It must not exist yet.
    timeout : float, optional
        Seconds before the whole run is stopped (each command gets what is left).
    mem_cap : int, optional
        Bytes of tree RSS at which the run is stopped, to protect a shared machine.
    poll : float
        Seconds between RSS samples.

    Returns
    -------
    PeerRun
        Wall seconds of all commands together (temporary files included), peak RSS.

    Raises
    ------
    PeerError
        When the peer is missing, fails, times out, hits the cap or writes nothing.
    """
    if name not in PEERS:
        raise ValueError(f"unknown peer {name!r}; choose from {', '.join(PEERS)}")
    if name not in available([name]):
        raise PeerError(f"{name} is not installed; install: {PEERS[name].install}")
    frames = [Path(p) for p in frame_paths]
    if not frames:
        raise ValueError("no frames")
    out = Path(out_path)
    if out.exists():
        raise FileExistsError(f"{out} already exists")
    steps, peak, logs = [], 0, []
    with tempfile.TemporaryDirectory(prefix=f"peer-{name}-") as tmp:
        argvs = PEERS[name].commands(frames, out, Path(tmp))
        for argv in argvs:
            left = None if timeout is None else max(1.0, timeout - sum(steps))
            seconds, rss, text = run_measured(argv, left, mem_cap, poll)
            steps.append(seconds)
            peak = max(peak, rss)
            logs.append(text)
    if not out.exists():
        raise PeerError(f"{name} finished but wrote no {out.name}")
    return PeerRun(seconds=sum(steps), peak_rss=peak, log="\n".join(logs), steps=steps)


def run_peer(name: str, frame_paths: Sequence[str | Path], out_path: str | Path) -> float:
    """Run peer ``name`` on ``frame_paths`` writing ``out_path``; return wall seconds.

    The thin form of :func:`run_peer_measured` (no timeout, no memory cap).
    """
    return run_peer_measured(name, frame_paths, out_path).seconds


if __name__ == "__main__":  # pragma: no cover - a quick inventory
    print(describe())
