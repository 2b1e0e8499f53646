"""Fuse many stacks, or one huge stack, on a dask.distributed cluster.

``focusdeep batch`` is built from the pieces here:

:func:`discover_stacks`
    turns the command line's INPUTs into stacks (files, folders of frames, and
    the stacks inside a plate-like folder tree);
:func:`plan_batch`
    reads each stack's header once, makes one :class:`BatchTask` per stack (one per
    time point for a file with a T axis) and names its output;
:func:`batch_client`
    a ``LocalCluster`` on this machine, or a client of an existing scheduler
    (``dask-jobqueue`` on SLURM/PBS, see ``docs/scaling.md``);
:func:`run_batch`
    submits one task per stack, collects :class:`TaskResult` as they finish and
    never lets one failed stack stop the others;
:func:`fuse_blocks_distributed`
    the block-wise fusion of :mod:`napari_focusdeep.fusion.core` with its frames
    and blocks run as distributed tasks, for images too large for one worker to
    fuse quickly.

Tasks carry paths, never :class:`~napari_focusdeep.stack.Stack` objects: a lazy
TIFF stack holds a tifffile store that cannot be pickled, and re-opening a file
on the worker costs only its header. Every output is written atomically by
:func:`napari_focusdeep.io.write_image`, so an output that exists is complete and
a rerun of the same batch skips it (resume); what a killed run left behind (hidden
temporary files, block scratch folders) is removed by :func:`clean_stale_files`.

Deep methods keep their networks in a per-process cache
(:mod:`napari_focusdeep.models.methods`), and a dask worker process lives for the
whole batch, so each worker loads a model once, on its first task, and reuses it.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import shutil
import tempfile
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
from distributed.diagnostics.plugin import WorkerPlugin

from .fusion.registry import get_method

__all__ = [
    "BatchUsageError",
    "StackSource",
    "BatchTask",
    "TaskResult",
    "FuseSettings",
    "discover_stacks",
    "plan_batch",
    "normalise_format",
    "parse_device",
    "clean_stale_files",
    "split_done",
    "default_workers",
    "batch_client",
    "run_task",
    "run_batch",
    "fuse_blocks_distributed",
    "format_summary",
]

log = logging.getLogger(__name__)

_STACK_FILE_EXTENSIONS = (".czi", ".nd2", ".lif")  # vendor formats: always whole stacks
_BLOCKS_PREFIX = ".focusdeep-blocks-"
# atomic_write's temporary names: ".{name}.{8 hex}.tmp{suffix}" (see io.writers)
_TEMP_RE = re.compile(r"^\.(?P<name>.+)\.[0-9a-f]{8}\.tmp\.[^.]+$")


class BatchUsageError(ValueError):
    """Bad batch input (missing path, nothing to fuse, two stacks with one output name)."""


# -- data ------------------------------------------------------------------------------
@dataclass(frozen=True)
class StackSource:
    """One stack found on disk: a stack file or a folder of frames, and its output name."""

    path: Path
    name: str


@dataclass(frozen=True)
class BatchTask:
    """One unit of work: fuse ``source`` (time point ``timepoint``) into ``output``."""

    name: str
    source: Path
    output: Path
    timepoint: int | None = None
    frames: int = 0


@dataclass(frozen=True)
class TaskResult:
    """What happened to one stack.

    ``status`` is ``"fused"``, ``"skipped"`` (its output already existed) or
    ``"failed"``; ``message`` says why it failed (one line) and ``detail`` holds the
    traceback from the worker. ``seconds`` is the worker time of the stack (NaN when
    it did not run).
    """

    name: str
    output: Path | None
    frames: int
    seconds: float
    status: str
    message: str = ""
    worker: str = ""
    detail: str = ""


@dataclass(frozen=True)
class FuseSettings:
    """The :func:`~napari_focusdeep.fusion.fuse` arguments every task of a batch shares.

    ``options`` are method options (``device``, ``weights``, ``tile``, ...).
    ``overwrite`` replaces existing outputs instead of skipping them.
    """

    method: str = "pyramid"
    register: bool = True
    reference: str | int = "middle"
    motion: str = "affine"
    channel: int | str | None = None
    block_size: int | None = None
    options: dict[str, Any] = field(default_factory=dict)
    overwrite: bool = False


# -- small helpers -----------------------------------------------------------------------
def normalise_format(fmt: str) -> str:
    """``"tif"``/``".TIF"`` -> ``".tif"``; refuse extensions the writers do not know."""
    from .io import WRITE_EXTENSIONS

    ext = "." + str(fmt).strip().lower().lstrip(".")
    if ext not in WRITE_EXTENSIONS:
        raise BatchUsageError(f"--format {fmt!r} is not one of {', '.join(WRITE_EXTENSIONS)}")
    return ext


def parse_device(value: str) -> str:
    """Accept ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps`` (checked on the worker)."""
    text = str(value).strip().lower()
    if text in ("auto", "cpu", "cuda", "mps") or re.fullmatch(r"cuda:\d+", text):
        return text
    raise ValueError(f"device must be auto, cpu, cuda, cuda:N or mps, not {value!r}")


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    if isinstance(exc, (ValueError, OSError, MemoryError)) and first:
        return first
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def _natural(names: list[os.DirEntry]) -> list[os.DirEntry]:
    from .io import natural_key

    return sorted(names, key=lambda e: natural_key(e.name))


# -- discovery -------------------------------------------------------------------------
def _classify(path: Path) -> str:
    """``"frame"`` (one image), ``"stack"`` (many planes) or ``"unreadable"``."""
    low = path.name.lower()
    if low.endswith(_STACK_FILE_EXTENSIONS):
        return "stack"
    if not low.endswith((".tif", ".tiff", ".btf")):
        return "frame"  # PNG/JPEG hold one image
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            if len(tif.series) > 1:
                return "stack"
            series = tif.series[0]
            # planes other than the colour axes: Z, T, or a generic page sequence
            planes = math.prod(int(n) for ax, n in zip(series.axes, series.shape) if ax not in "YXSC")
            return "stack" if planes > 1 else "frame"
    except Exception:  # noqa: BLE001 - any header failure: let reading report it
        return "unreadable"


def _expand_folder(folder: Path, parts: tuple[str, ...], exclude: set[Path], note: Callable[[str], None]) -> list[StackSource]:
    from .io import FRAME_EXTENSIONS, SUPPORTED_EXTENSIONS
    from .io._tiff import stack_name

    if folder.resolve() in exclude:
        return []
    with os.scandir(folder) as it:
        entries = _natural([e for e in it if not e.name.startswith(".")])
    files = [e for e in entries if e.is_file() and e.name.lower().endswith(SUPPORTED_EXTENSIONS)]
    dirs = [e for e in entries if e.is_dir()]
    kinds = {e.path: _classify(Path(e.path)) for e in files}
    stacks = [e for e in files if kinds[e.path] == "stack"]
    frames = [e for e in files if kinds[e.path] != "stack" and e.name.lower().endswith(FRAME_EXTENSIONS)]
    here = "_".join(parts)
    if frames and not stacks:
        # a folder of single images is one stack (what `focusdeep fuse FOLDER` reads)
        if dirs:
            note(f"{folder}: fused as one stack of {len(frames)} frames; its {len(dirs)} sub-folder(s) are not searched")
        return [StackSource(folder, here or folder.name)]
    ignored = [e.name for e in frames if kinds[e.path] == "frame"]
    if ignored:
        note(f"{folder}: ignored {len(ignored)} single image(s) beside its stack files ({', '.join(ignored[:3])}{', ...' if len(ignored) > 3 else ''})")
    out = []
    for e in entries:  # files and folders together, in natural order (A1, A2, B1.tif, ...)
        if e.path in kinds:
            kind = kinds[e.path]
            if kind == "stack" or (kind == "unreadable" and stacks):
                # an unreadable file among stack files is most likely a broken stack: report it
                out.append(StackSource(Path(e.path), "_".join(parts + (stack_name(Path(e.path)),))))
        elif e.is_dir():
            out.extend(_expand_folder(Path(e.path), parts + (e.name,), exclude, note))
    return out


def discover_stacks(
    inputs: Sequence[str | os.PathLike],
    *,
    exclude: Sequence[str | os.PathLike] = (),
    note: Callable[[str], None] | None = None,
) -> list[StackSource]:
    """Expand batch INPUTs into stacks.

    Rules, applied to each INPUT:

    1. A file is one stack (a multi-page TIFF, OME-TIFF, CZI, ...; its time
       points, if any, become separate tasks in :func:`plan_batch`). Its name is
       the file name without extension.
    2. A folder that holds single images (JPEG, PNG, single-plane TIFF) and no
       stack files is one stack: its frames in natural order, named after the
       folder. Its sub-folders are not searched.
    3. Any other folder (e.g. a plate: ``plate/A1/``, ``plate/A2/`` ... or
       ``plate/A1/pos1.tif`` ...) expands: each multi-plane stack file in it is a
       stack, and each sub-folder is searched by rules 2-3. Single images beside
       stack files are ignored (with a note). The name of a stack found this way
       is its path below the INPUT with ``/`` replaced by ``_``
       (``plate/A1/pos1.tif`` -> ``A1_pos1``).

    Hidden entries (leading ``.``) and the folders in ``exclude`` (the output
    folder) are skipped.

    Parameters
    ----------
    inputs : sequence of path-like
    exclude : sequence of path-like
        Folders never searched.
    note : callable, optional
        Receives one-line notes about what was ignored.

    Returns
    -------
    list of StackSource
        In INPUT order, each folder's entries in natural order; a path given twice
        appears once.

    Raises
    ------
    BatchUsageError
        An INPUT does not exist, is a file no reader takes, or is a folder with no
        stack in it.
    """
    from .io import SUPPORTED_EXTENSIONS, is_supported
    from .io._tiff import stack_name

    note = note or (lambda _msg: None)
    skip = {Path(p).expanduser().resolve() for p in exclude}
    if not inputs:
        raise BatchUsageError("no INPUT given")
    sources: list[StackSource] = []
    seen: set[Path] = set()
    for raw in inputs:
        path = Path(os.fspath(raw)).expanduser()
        if not path.exists():
            raise BatchUsageError(f"{path} does not exist")
        if path.is_dir():
            found = _expand_folder(path, (), skip, note)
            if not found:
                raise BatchUsageError(
                    f"folder {path} holds no stacks (no image frames, stack files or sub-folders with them)"
                )
        elif is_supported(path):
            found = [StackSource(path, stack_name(path))]
        else:
            raise BatchUsageError(f"{path} is not a stack file focusdeep reads ({', '.join(SUPPORTED_EXTENSIONS)})")
        for src in found:
            key = src.path.resolve()
            if key not in seen:
                seen.add(key)
                sources.append(src)
    return sources


def plan_batch(
    sources: Sequence[StackSource],
    outdir: str | os.PathLike,
    *,
    fmt: str = ".tif",
) -> tuple[list[BatchTask], list[TaskResult]]:
    """One task per stack (per time point for files with a T axis).

    Each stack's header is read here, once, to count its time points and frames;
    no pixels are read. A stack whose header cannot be read becomes a failed
    :class:`TaskResult` instead of stopping the batch.

    Outputs are ``OUTDIR/<name><fmt>``, or ``OUTDIR/<name>_t<t><fmt>`` per time
    point, ``t`` zero-padded to the width of the last index so that the files sort
    in time order.

    Returns
    -------
    tasks, failed : list of BatchTask, list of TaskResult

    Raises
    ------
    BatchUsageError
        Two tasks would write the same file (compared case-insensitively, as
        macOS and Windows file systems do).
    """
    from .io import read_stack

    outdir = Path(outdir)
    fmt = normalise_format(fmt)
    tasks: list[BatchTask] = []
    failed: list[TaskResult] = []
    owner: dict[str, Path] = {}

    def claim(name: str, src: Path) -> Path:
        out = outdir / f"{name}{fmt}"
        key = out.name.lower()
        if key in owner and owner[key] != src:
            raise BatchUsageError(
                f"{owner[key]} and {src} would both be written to {out.name}; "
                "rename one or fuse them into different output folders"
            )
        owner[key] = src
        return out

    for src in sources:
        try:
            stack = read_stack(src.path)
            n_t, n_z = stack.n_timepoints, stack.n_frames
        except Exception as exc:  # noqa: BLE001 - a broken stack is reported, the rest go on
            failed.append(TaskResult(src.name, claim(src.name, src.path), 0, math.nan, "failed", _one_line(exc),
                                     detail=traceback.format_exc()))
            continue
        if n_t == 1:
            tasks.append(BatchTask(src.name, src.path, claim(src.name, src.path), 0 if stack.axes.startswith("T") else None, n_z))
            continue
        width = len(str(n_t - 1))
        for t in range(n_t):
            name = f"{src.name}_t{t:0{width}d}"
            tasks.append(BatchTask(name, src.path, claim(name, src.path), t, n_z))
    return tasks, failed


def clean_stale_files(outdir: str | os.PathLike, tasks: Sequence[BatchTask]) -> int:
    """Remove what a killed run left in ``outdir``; return how many entries went.

    These are the hidden temporary files of :func:`~napari_focusdeep.io.atomic_write`
    for this batch's outputs (an output is only ever renamed into place complete)
    and the block scratch folders of :func:`fuse_blocks_distributed`. Nothing else
    is touched. Do not run two batches into one folder at the same time.
    """
    outdir = Path(outdir)
    if not outdir.is_dir():
        return 0
    names = {t.output.name for t in tasks}
    removed = 0
    with os.scandir(outdir) as it:
        for e in it:
            m = _TEMP_RE.match(e.name)
            try:
                if m and m.group("name") in names and e.is_file():
                    os.unlink(e.path)
                    removed += 1
                elif e.name.startswith(_BLOCKS_PREFIX) and e.is_dir():
                    shutil.rmtree(e.path, ignore_errors=True)
                    removed += 1
            except OSError:
                pass  # a file we cannot remove is still ignored: outputs are never read back
    return removed


def split_done(tasks: Sequence[BatchTask], overwrite: bool = False) -> tuple[list[BatchTask], list[TaskResult]]:
    """Tasks still to run, and ``"skipped"`` results for those whose output exists."""
    if overwrite:
        return list(tasks), []
    todo, skipped = [], []
    for t in tasks:
        if t.output.exists():
            skipped.append(TaskResult(t.name, t.output, t.frames, math.nan, "skipped", "output exists"))
        else:
            todo.append(t)
    return todo, skipped


# -- the cluster -------------------------------------------------------------------------
def _cuda_devices() -> int:
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def default_workers(settings: FuseSettings) -> int:
    """Workers for a local cluster: one per GPU for deep methods on CUDA, else one per core."""

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if get_method(settings.method).kind == "deep" and str(settings.options.get("device") or "auto") in ("auto", "cuda"):
        gpus = _cuda_devices()
        if gpus:
            return gpus  # one network per GPU; more workers would only queue on the same GPU
    return max(1, cores)


class _LocalCompute(WorkerPlugin):
    """Worker plugin: dask arrays computed inside a task are computed in that task's thread.

    A task reads its stack through a lazy dask array. Left alone, dask would send
    that computation back to the cluster (a worker has a client), which means
    pickling the graph, and a lazy TIFF holds a tifffile store that cannot be
    pickled. A ``dask.config.set`` context inside each task is no fix: the config
    is process-global, and two threads entering and leaving such contexts restore
    each other's values in the wrong order. So the worker process is configured
    once, when the plugin is registered (and on every worker that joins later).
    """

    name = "focusdeep-local-compute"

    def setup(self, worker: Any) -> None:
        import dask

        dask.config.set(scheduler="synchronous")


class _OneThreadOpenCV(WorkerPlugin):
    """Worker plugin: one OpenCV thread per worker process.

    A local cluster already runs one single-threaded worker per core (dask sets
    ``OMP_NUM_THREADS=1`` for torch and BLAS); OpenCV's own thread pool would
    otherwise oversubscribe the cores N times over.
    """

    name = "focusdeep-opencv-threads"

    def setup(self, worker: Any) -> None:
        import cv2

        cv2.setNumThreads(1)


def _prepare(client: Any) -> None:
    """Configure ``client``'s workers for focusdeep tasks (idempotent)."""
    client.register_plugin(_LocalCompute())


@contextlib.contextmanager
def batch_client(
    scheduler: str | None = None,
    workers: int | None = None,
    *,
    processes: bool = True,
    connect_timeout: float = 20.0,
) -> Iterator[Any]:
    """A ``distributed.Client``: of ``scheduler``, or of a new local cluster.

    Parameters
    ----------
    scheduler : str, optional
        Address of a running scheduler (``tcp://host:8786``), e.g. one started by
        ``dask-jobqueue`` or ``dask scheduler``. Its workers must see the input and
        output paths.
    workers : int, optional
        Local cluster size (default 1); one single-threaded worker per process.
    processes : bool
        Worker processes (default; real parallelism for the Python parts) or
        threads in this process (starts in a fraction of a second; tests).
    connect_timeout : float
        Seconds to wait for ``scheduler``.

    Raises
    ------
    BatchUsageError
        The scheduler cannot be reached.
    """
    from distributed import Client, LocalCluster

    if scheduler:
        try:
            # not the default client: the caller's own dask computations stay where they were
            client = Client(scheduler, timeout=connect_timeout, set_as_default=False)
        except (OSError, TimeoutError) as exc:
            raise BatchUsageError(f"cannot reach the dask scheduler at {scheduler}: {_one_line(exc)}") from None
        try:
            yield client
        finally:
            client.close()
        return
    n = max(1, int(workers or 1))
    cluster = LocalCluster(
        n_workers=n,
        threads_per_worker=1,
        processes=processes,
        dashboard_address=":0",  # any free port: never collide with another cluster's 8787
        silence_logs=logging.ERROR,
    )
    import dask

    # in-process workers share this process's dask config, which _LocalCompute sets
    before = dask.config.get("scheduler", None)
    client = None
    try:
        client = Client(cluster, set_as_default=False)
        client.wait_for_workers(n, timeout=120)
        if processes:
            client.register_plugin(_OneThreadOpenCV())
        yield client
    finally:
        # The cluster first: in-process workers finish what they run while the
        # configuration still holds.
        cluster.close()
        if client is not None:
            client.close()
        if not processes:
            dask.config.set(scheduler=before)


# -- one stack -------------------------------------------------------------------------
def _worker_name() -> str:
    try:
        from distributed import get_worker

        return str(get_worker().name)
    except (ImportError, ValueError):
        return ""


def _worker_options(settings: FuseSettings) -> dict[str, Any]:
    """Method options for this worker: spread local workers over the GPUs they see."""
    options = dict(settings.options)
    if get_method(settings.method).kind != "deep" or str(options.get("device") or "auto") not in ("auto", "cuda"):
        return options
    try:
        from distributed import get_worker

        index = get_worker().name
    except (ImportError, ValueError):
        return options
    gpus = _cuda_devices()
    if gpus > 1 and isinstance(index, int):
        # LocalCluster names its workers 0..N-1: worker i uses GPU i mod N, so each
        # GPU holds the network of its own workers only.
        options["device"] = f"cuda:{index % gpus}"
    return options


def _read(source: Path, timepoint: int | None) -> Any:
    from .io import read_stack

    stack = read_stack(source)
    return stack.timepoint(timepoint) if timepoint is not None else stack


def run_task(task: BatchTask, settings: FuseSettings) -> TaskResult:
    """Fuse one stack and write its output (runs on a worker).

    Reads ``task.source`` itself, so only paths travel to the worker. Any error is
    caught and returned as a ``"failed"`` result: one bad stack never kills the
    worker's other tasks.
    """
    from .fusion import fuse
    from .io import write_image

    start = time.perf_counter()
    worker = _worker_name()
    try:
        # the frames are computed in this thread (see _LocalCompute), one at a time
        get_method(settings.method)  # registry loaded before fuse() looks the method up
        stack = _read(task.source, task.timepoint)
        result = fuse(
            stack,
            method=settings.method,
            register=settings.register,
            reference=settings.reference,
            motion=settings.motion,
            channel=settings.channel,
            block_size=settings.block_size,
            depth=False,  # a batch writes the fused images only
            **_worker_options(settings),
        )
        write_image(task.output, result.image, scale=result.scale, unit=result.unit, overwrite=settings.overwrite)
    except Exception as exc:  # noqa: BLE001 - reported in the summary, the batch goes on
        log.info("fusing %s failed", task.name, exc_info=True)
        return TaskResult(task.name, task.output, task.frames, time.perf_counter() - start, "failed",
                          _one_line(exc), worker, traceback.format_exc())
    return TaskResult(task.name, task.output, stack.n_frames, time.perf_counter() - start, "fused", "", worker)


# -- many stacks -----------------------------------------------------------------------
def run_batch(
    tasks: Sequence[BatchTask],
    settings: FuseSettings,
    client: Any,
    *,
    distribute_blocks: bool = False,
    scratch: str | os.PathLike | None = None,
    progress: Callable[[TaskResult], None] | None = None,
    step_progress: Callable[[Any], None] | None = None,
) -> list[TaskResult]:
    """Run ``tasks`` on ``client``'s cluster; results in task order.

    Parameters
    ----------
    tasks : sequence of BatchTask
        Usually the ``todo`` of :func:`split_done`.
    settings : FuseSettings
    client : distributed.Client
    distribute_blocks : bool
        Fuse the stacks one after another, each with its frames and blocks spread
        over the cluster (:func:`fuse_blocks_distributed`): for a few huge images.
        Otherwise (default) each stack is one task and stacks run side by side.
    scratch : path-like, optional
        For ``distribute_blocks``: a folder every worker can write (default: each
        output's folder).
    progress : callable, optional
        Called with each :class:`TaskResult` as its stack finishes.
    step_progress : callable, optional
        For ``distribute_blocks``: receives the
        :class:`~napari_focusdeep.fusion.Progress` of the current stack.

    Returns
    -------
    list of TaskResult
        A stack whose worker died (``KilledWorker``, out of memory) is a
        ``"failed"`` result like any other error.
    """
    _prepare(client)
    if distribute_blocks:
        return _run_blockwise(tasks, settings, client, scratch, progress, step_progress)
    from distributed import as_completed

    run = uuid.uuid4().hex[:8]
    futures = {}
    for i, task in enumerate(tasks):
        # earlier tasks first (priority), unique keys so reruns never hit cached results
        fut = client.submit(run_task, task, settings, key=f"focusdeep-{task.name}-{run}-{i}", priority=len(tasks) - i, pure=False)
        futures[fut] = i
    results: list[TaskResult | None] = [None] * len(tasks)
    try:
        for fut in as_completed(list(futures), loop=client.loop):
            i = futures[fut]
            task = tasks[i]
            try:
                res = fut.result()
            except Exception as exc:  # noqa: BLE001 - the worker died or the task never ran
                res = TaskResult(task.name, task.output, task.frames, math.nan, "failed", _one_line(exc))
            results[i] = res
            if progress is not None:
                progress(res)
    finally:
        # Interrupted (Ctrl-C): stop what is queued; running tasks finish their write
        # or leave only a temporary file, never a partial output.
        client.cancel([f for f in futures if not f.done()])
    return [r for r in results if r is not None]


def _run_blockwise(
    tasks: Sequence[BatchTask],
    settings: FuseSettings,
    client: Any,
    scratch: str | os.PathLike | None,
    progress: Callable[[TaskResult], None] | None,
    step_progress: Callable[[Any], None] | None,
) -> list[TaskResult]:
    from .io import write_image

    results = []
    for task in tasks:
        start = time.perf_counter()
        try:
            result = fuse_blocks_distributed(
                task.source,
                client,
                timepoint=task.timepoint,
                method=settings.method,
                register=settings.register,
                reference=settings.reference,
                motion=settings.motion,
                channel=settings.channel,
                block_size=settings.block_size,
                scratch=scratch if scratch is not None else task.output.parent,
                progress=step_progress,
                **settings.options,
            )
            write_image(task.output, result.image, scale=result.scale, unit=result.unit, overwrite=settings.overwrite)
            res = TaskResult(task.name, task.output, task.frames, time.perf_counter() - start, "fused", "", "cluster")
        except Exception as exc:  # noqa: BLE001 - reported, the batch goes on
            res = TaskResult(task.name, task.output, task.frames, time.perf_counter() - start, "failed",
                             _one_line(exc), "cluster", traceback.format_exc())
        results.append(res)
        if progress is not None:
            progress(res)
    return results


# -- one huge stack, block by block ------------------------------------------------------
def _estimate_task(source: Path, timepoint: int | None, motion: str, reference: str | int) -> Any:
    from .registration import estimate_transforms

    stack = _read(source, timepoint)
    data = stack.data if stack.has_channels else stack.data[..., None]
    return estimate_transforms(data, motion=motion, reference=reference)


def _spill_task(
    source: Path, timepoint: int | None, transforms: Any, frames: list[int], spill: str, interpolation: str = "cubic"
) -> int:
    """Read (and warp) ``frames`` into the shared ``(Z, Y, X, C)`` memory-mapped file."""
    from .registration import apply_transforms

    stack = _read(source, timepoint)
    data = stack.data if stack.has_channels else stack.data[..., None]
    if transforms is not None:
        # lazy: only the frames asked for are warped
        data = apply_transforms(data, transforms, interpolation=interpolation)
    mm = np.load(spill, mmap_mode="r+")
    for z in frames:
        mm[z] = np.asarray(data[z])
    mm.flush()
    del mm
    return len(frames)


def _block_task(spill: str, block: Any, method: str, opts: dict[str, Any], channel: Any, ramp: int) -> tuple[np.ndarray, np.ndarray]:
    """Fuse one block from the spilled frames; the core (or, when blending, the whole read region)."""
    from .fusion.core import selection_image, to_float
    from .fusion.registry import TileOutOfMemory

    meth = get_method(method)
    mm = np.load(spill, mmap_mode="r")
    ry0, ry1, rx0, rx1 = block.read
    try:
        acc = meth.make(int(mm.shape[0]), (ry1 - ry0, rx1 - rx0, int(mm.shape[3])), **opts)
        for z in range(int(mm.shape[0])):
            frame = to_float(np.asarray(mm[z, ry0:ry1, rx0:rx1]))
            acc.add(frame, selection_image(frame, channel))
        out, dep = acc.finish()
    except TileOutOfMemory as exc:
        raise MemoryError(f"{exc}; use a smaller block size") from None
    finally:
        if meth.release is not None:
            meth.release()
    if ramp:
        return out, dep
    y0, y1, x0, x1 = block.core
    return np.ascontiguousarray(out[y0 - ry0 : y1 - ry0, x0 - rx0 : x1 - rx0]), np.ascontiguousarray(dep[y0 - ry0 : y1 - ry0, x0 - rx0 : x1 - rx0])


def fuse_blocks_distributed(
    source: str | os.PathLike,
    client: Any,
    *,
    timepoint: int | None = None,
    method: str = "pyramid",
    register: bool = True,
    reference: str | int = "middle",
    motion: str = "affine",
    transforms: Any = None,
    interpolation: str = "cubic",
    channel: int | str | None = None,
    block_size: int | None = None,
    scratch: str | os.PathLike | None = None,
    progress: Callable[[Any], None] | None = None,
    **options: Any,
) -> Any:
    """Fuse one (huge) stack with its frames and blocks as distributed tasks.

    The same block-wise fusion as :func:`~napari_focusdeep.fusion.fuse` with
    ``block_size`` (same block grid from :func:`~napari_focusdeep.fusion.core.block_grid`,
    same halo and blending, so the same result), in three steps:

    1. registration (ECC, each frame to the previous, chained) runs as one task;
    2. tasks read and warp groups of frames, each frame once, into a memory-mapped
       ``.npy`` in ``scratch``;
    3. one task per block fuses that block from the mapped frames (reading only
       its own pixels); this process assembles the blocks as they arrive.

    Parameters
    ----------
    source : path-like
        The stack (file or folder of frames); workers open it themselves.
    client : distributed.Client
    timepoint : int, optional
        Time point of a stack with a T axis (required for those).
    method, register, reference, motion, transforms, interpolation, channel, block_size, **options
        As for :func:`~napari_focusdeep.fusion.fuse`.
    scratch : path-like, optional
        Folder for the mapped frames, readable and writable by every worker (on a
        cluster: a shared file system). Default: the system temporary folder, which
        only a local cluster shares. Needs the stack's size in free space.
    progress : callable, optional
        Receives :class:`~napari_focusdeep.fusion.Progress` for the ``"register"``,
        ``"prepare"`` and ``"fuse"`` stages.

    Returns
    -------
    FusionResult
        ``image`` in the stack's dtype, ``depth`` (times the z-step where known),
        ``transforms``, ``valid_region``, ``scale``; ``info`` has the block count.
    """
    from distributed import as_completed

    from .fusion.core import FusionResult, Progress, _ramp, block_grid, from_float

    _prepare(client)
    path = Path(os.fspath(source))
    stack = _read(path, timepoint)
    if stack.axes.startswith("T"):
        raise ValueError(f"{path.name} has {stack.n_timepoints} time points; pass timepoint=")
    meth = get_method(method)
    opts = {**meth.options, **options}
    halo, align = int(meth.halo(**opts)), int(meth.align(**opts))
    ramp = int(opts.get("ramp", 0)) if meth.blend else 0
    block = int(block_size or opts.get("block_size") or opts.get("tile") or meth.default_block)
    n, (h, w), c = stack.n_frames, stack.frame_shape, stack.n_channels
    blocks = block_grid((h, w), block, halo, align, ramp)
    report = progress or (lambda _p: None)
    workdir = Path(tempfile.mkdtemp(prefix=_BLOCKS_PREFIX, dir=scratch))
    futures: list[Any] = []
    pending: set[Any] = set()
    try:
        tf = transforms
        if register and tf is None and n > 1:
            report(Progress(0, 1, "register", "registering"))
            fut = client.submit(_estimate_task, path, timepoint, motion, reference, pure=False)
            futures.append(fut)
            tf = fut.result()
            report(Progress(1, 1, "register", "registering"))
        spill = str(workdir / "frames.npy")
        mm = np.lib.format.open_memmap(spill, mode="w+", dtype=stack.dtype, shape=(n, h, w, c))
        del mm  # the header and (sparse) file exist; workers fill the frames in
        # a few frame groups per worker thread: each task re-opens the stack's header once
        slots = max(1, sum(client.nthreads().values()))
        groups = [g.tolist() for g in np.array_split(np.arange(n), min(n, 2 * slots)) if len(g)]
        futures = [client.submit(_spill_task, path, timepoint, tf, g, spill, interpolation, pure=False) for g in groups]
        done = 0
        for fut in as_completed(futures, loop=client.loop):
            done += fut.result()
            report(Progress(done, n, "prepare", "reading and registering frames"))
        if meth.prepare is not None:
            # whole-stack options (pyramid's noise level), resolved once as fuse() does
            opts = meth.prepare(np.load(spill, mmap_mode="r"), channel, dict(opts))
        futures = [client.submit(_block_task, spill, b, meth.name, opts, channel, ramp, pure=False) for b in blocks]
        where = {f.key: b for f, b in zip(futures, blocks)}
        image = np.zeros((h, w, c), np.float32)
        depth = np.zeros((h, w), np.float32)
        weight = np.zeros((h, w), np.float32) if ramp else None
        finished = as_completed(futures, loop=client.loop)
        pending = set(futures)
        futures = []  # from here on `pending` holds them: a consumed block's result is freed on the cluster
        for i, fut in enumerate(finished, 1):
            out, dep = fut.result()
            pending.discard(fut)
            b = where[fut.key]
            del fut
            y0, y1, x0, x1 = b.core
            if weight is None:
                image[y0:y1, x0:x1] = out
                depth[y0:y1, x0:x1] = dep
            else:
                ry0, ry1, rx0, rx1 = b.read
                wgt = _ramp(h, y0, y1, ry0, ry1, ramp)[:, None] * _ramp(w, x0, x1, rx0, rx1, ramp)[None, :]
                image[ry0:ry1, rx0:rx1] += out * wgt[..., None]
                depth[ry0:ry1, rx0:rx1] += dep * wgt
                weight[ry0:ry1, rx0:rx1] += wgt
            del out, dep
            report(Progress(i, len(blocks), "fuse", f"fusing ({meth.name}, {len(blocks)} blocks)"))
        if weight is not None:
            image /= np.maximum(weight, 1e-12)[..., None]
            depth /= np.maximum(weight, 1e-12)
    finally:
        client.cancel([f for f in futures if not f.done()] + [f for f in pending if not f.done()])
        shutil.rmtree(workdir, ignore_errors=True)
    depth_unit = "frame"
    if stack.z_step:
        depth = depth * np.float32(stack.z_step)
        depth_unit = stack.unit or "physical"
    return FusionResult(
        image=from_float(image if stack.has_channels else image[..., 0], stack.dtype),
        depth=depth.astype(np.float32),
        depth_unit=depth_unit,
        method=meth.name,
        transforms=tf,
        valid_region=getattr(tf, "valid_region", None),
        scale={k: v for k, v in stack.scale.items() if k in "YX"},
        unit=stack.unit,
        info={"blocks": len(blocks), "halo": halo, "block_size": block, "distributed": True},
    )


# -- report ----------------------------------------------------------------------------
def format_summary(results: Sequence[TaskResult]) -> str:
    """The end-of-batch table: stack, frames, seconds, status (with the reason for failures)."""
    rows = [("stack", "frames", "seconds", "status")]
    for r in results:
        secs = "-" if math.isnan(r.seconds) else f"{r.seconds:.1f}"
        status = r.status if not r.message or r.status == "skipped" else f"{r.status}: {r.message}"
        rows.append((r.name, str(r.frames) if r.frames else "-", secs, status))
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    w2 = max(len(r[2]) for r in rows)
    lines = [f"{a:<{w0}}  {b:>{w1}}  {c:>{w2}}  {d}" for a, b, c, d in rows]
    counts = {s: sum(r.status == s for r in results) for s in ("fused", "skipped", "failed")}
    lines.append(f"{counts['fused']} fused, {counts['skipped']} skipped (already done), {counts['failed']} failed")
    return "\n".join(lines)
