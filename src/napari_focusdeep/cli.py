"""The ``focusdeep`` command line: the same core as the napari plugin, for batch work.

The commands, flags and exit codes are a contract other tools rely on:
exit 0 on success, 2 on bad input or usage (one line on stderr, no traceback),
130 when interrupted. An existing output is never replaced without ``--overwrite``.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

__all__ = ["main"]


class UsageError(Exception):
    """Bad input or usage: reported in one line, exit status 2."""


# -- helpers ---------------------------------------------------------------------------
def _progress_bar(desc: str) -> tuple[Callable[[Any], None], Callable[[], None]]:
    """A tqdm bar on stderr fed by :class:`~napari_focusdeep.fusion.Progress` events."""
    from tqdm import tqdm

    state: dict[str, Any] = {"bar": None, "stage": None}

    def update(p: Any) -> None:
        if state["stage"] != p.stage:
            if state["bar"] is not None:
                state["bar"].close()
            state["bar"] = tqdm(total=p.total, desc=p.message or desc, unit="step", file=sys.stderr, leave=False, disable=None)
            state["stage"] = p.stage
        bar = state["bar"]
        bar.total = p.total
        bar.n = p.done
        bar.refresh()

    def close() -> None:
        if state["bar"] is not None:
            state["bar"].close()

    return update, close


def _check_output(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise UsageError(f"{path} already exists; pass --overwrite to replace it")
    if not path.parent.exists():
        raise UsageError(f"folder {path.parent} does not exist")


def _reference(value: str) -> str | int:
    if value in ("first", "middle", "last"):
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError("reference must be first, middle, last or a frame index") from None


def _channel(value: str) -> str | int:
    if value in ("luminance", "max"):
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError("channel must be luminance, max or a channel index") from None


class _Choices:
    """Argument choices read from a module only when argparse needs them.

    Keeps the choices in one place (the module that implements them) without
    importing it, and OpenCV and dask with it, on every ``focusdeep`` start.
    """

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name

    def _values(self) -> Sequence[str]:
        import importlib

        return getattr(importlib.import_module(self.module, __package__), self.name)

    def __contains__(self, value: object) -> bool:
        return value in self._values()

    def __iter__(self) -> Any:
        return iter(self._values())


def _option(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` -> (key, value); the value is an int, a float or else a string."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    for kind in (int, float):
        try:
            return key.strip(), kind(value)
        except ValueError:
            pass
    return key.strip(), value


def _check_method(name: str, options: dict[str, Any]) -> bool:
    """Check a method and its options before any slow work; True for a deep method.

    A deep method's option check finds and verifies its weights (checksum,
    safetensors header, architecture), so damaged weights are refused before the
    stack is read and registered rather than after.
    """
    from .fusion.registry import get_method

    meth = get_method(name)
    try:
        meth.halo(**{**meth.options, **options})
    except TypeError as exc:  # an unknown --option names the ones the method takes
        raise UsageError(str(exc)) from None
    return meth.kind == "deep"


def _read(inputs: Sequence[str], axes: str | None = None) -> Any:
    from .io import read_stack

    paths = [Path(p) for p in inputs]
    for p in paths:
        if not p.exists():
            raise UsageError(f"{p} does not exist")
    try:
        return read_stack(paths[0] if len(paths) == 1 else paths, axes=axes)
    except ValueError as exc:
        # read_stack speaks Python ("pass axes="); on the command line that is --axes
        raise UsageError(str(exc).replace("pass axes=", "pass --axes").replace("axes=", "--axes ")) from None


def _psnr(a: Any, b: Any) -> float:
    import numpy as np

    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)


# -- commands --------------------------------------------------------------------------
def cmd_fuse(args: argparse.Namespace) -> int:
    from .fusion import fuse
    from .io import write_image

    out = Path(args.output)
    _check_output(out, args.overwrite)
    if args.depth_map:
        _check_output(Path(args.depth_map), args.overwrite)
    if args.save_transforms:
        _check_output(Path(args.save_transforms), args.overwrite)
    if args.raw or _is_raw_input(args.inputs):
        return _fuse_raw(args, out)
    if args.linear_output:
        raise UsageError("--linear-output applies to camera raw input only")
    options: dict[str, Any] = dict(args.option)
    for name in ("device", "weights", "tile"):
        value = getattr(args, name)
        if value is not None:
            options[name] = value
    deep = _check_method(args.method, options)
    stack = _read(args.inputs, args.axes)
    if deep:
        from .models.methods import resampling_note

        note = resampling_note(args.method, stack.n_frames, options.get("weights"))
        if note:
            print(f"focusdeep: warning: {note}", file=sys.stderr)
    transforms = None
    if args.transforms:
        from .registration import Transforms

        transforms = Transforms.load(args.transforms)
    update, close = _progress_bar("fusing")
    try:
        result = fuse(
            stack,
            method=args.method,
            register=not args.no_register,
            reference=args.reference,
            motion=args.motion,
            transforms=transforms,
            interpolation=args.interpolation,
            channel=args.channel,
            block_size=args.block_size,
            depth=bool(args.depth_map),  # the depth map costs time and memory: only when asked
            progress=update,
            **options,
        )
    finally:
        close()
    image, depth = result.image, result.depth
    if args.crop_valid and result.valid_region is not None:
        y0, y1, x0, x1 = result.valid_region
        image = image[..., y0:y1, x0:x1, :] if stack.has_channels else image[..., y0:y1, x0:x1]
        if depth is not None:
            depth = depth[..., y0:y1, x0:x1]
    write_image(out, image, scale=result.scale, unit=result.unit, overwrite=args.overwrite)
    if args.depth_map:
        write_image(Path(args.depth_map), depth, scale=result.scale, unit=result.unit, overwrite=args.overwrite)
    if args.save_transforms and result.transforms is not None:
        result.transforms.save(args.save_transforms)
    blocks = int(result.info.get("blocks", 1))
    how = f", in {blocks} blocks of {result.info.get('block_size')} px" if blocks > 1 else ""
    print(f"wrote {out} ({result.method}, {stack.n_frames} frames{how})", file=sys.stderr)
    return 0


def _is_raw_input(inputs: Sequence[str]) -> bool:
    """Camera raw files, or one folder holding some (decided by extension)."""
    from .io.raw import is_raw, list_raw

    paths = [Path(p) for p in inputs]
    if len(paths) == 1 and paths[0].is_dir():
        return bool(list_raw(paths[0]))
    return bool(paths) and all(is_raw(p) for p in paths)


def _fuse_raw(args: argparse.Namespace, out: Path) -> int:
    """``fuse`` for camera raw bursts: 16-bit sRGB out, optionally linear too."""
    from .fusion.registry import get_method
    from .raw_fusion import fuse_raw, write_raw_result

    paths = [Path(p) for p in args.inputs]
    for p in paths:
        if not p.exists():
            raise UsageError(f"{p} does not exist")
    if not _is_raw_input(args.inputs):
        raise UsageError("--raw: the input is not camera raw files (DNG, RW2, CR2, CR3, NEF, ARW, ORF, RAF, PEF, ...) or a folder of them")
    if getattr(args, "axes", None):
        raise UsageError("--axes does not apply to camera raw files")
    if args.linear_output:
        _check_output(Path(args.linear_output), args.overwrite)
    options = {k: getattr(args, k) for k in ("device", "weights", "tile") if getattr(args, k) is not None}
    transforms = None
    if args.transforms:
        from .registration import Transforms

        transforms = Transforms.load(args.transforms)
    deep = get_method(args.method).kind == "deep"
    if deep and args.weights:  # refuse damaged weights before decoding the raw files
        from .models.weights import resolve_weights, verify_weights

        verify_weights(resolve_weights(args.weights))
    update, close = _progress_bar("fusing")
    try:
        result = fuse_raw(
            paths[0] if len(paths) == 1 else paths,
            method=args.method,
            path="bayer" if args.raw and deep else "auto",
            register=not args.no_register,
            reference=args.reference,
            motion=args.motion,
            transforms=transforms,
            channel=args.channel,
            block_size=args.block_size,
            progress=update,
            **options,
        )
    finally:
        close()
    write_raw_result(result, out, linear_path=args.linear_output, crop_valid=args.crop_valid, overwrite=args.overwrite)
    if args.depth_map:
        depth = result.depth
        if args.crop_valid and result.valid_region is not None:
            y0, y1, x0, x1 = result.valid_region
            depth = depth[y0:y1, x0:x1]
        from .io import write_image

        write_image(Path(args.depth_map), depth, overwrite=args.overwrite)
    if args.save_transforms and result.transforms is not None:
        result.transforms.save(args.save_transforms)
    how = "packed Bayer network" if result.path == "bayer" else "demosaiced sRGB"
    n = len(result.metadata.get("focus_distance_m") or [])
    print(f"wrote {out} ({result.method}, {n} raw frames, {how})", file=sys.stderr)
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    from .fusion import list_methods

    for m in list_methods():
        print(f"{m.name:<14} {m.kind:<10} {m.description}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    info = _read(args.inputs, args.axes).describe()
    width = max(len(k) for k in info)
    for key, value in info.items():
        print(f"{key:<{width}}  {value}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    try:
        from .models.weights import list_models
    except ImportError as exc:  # torch missing
        raise UsageError(f"deep models need PyTorch: {exc}") from None
    models = list_models()
    if not models:
        print("no model weights installed")
    for m in models:
        print(f"{m['name']:<22} {m['architecture']:<14} N={m.get('n_frames') or 'any':<5} {m.get('description', '')}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    import numpy as np

    from .fusion import fuse
    from .fusion.core import to_float
    from .io import write_image
    from .training.simulate import sample_stack

    outdir = Path(args.output)
    outdir.mkdir(parents=True, exist_ok=True)
    fused_path, truth_path, depth_path = outdir / "fused.png", outdir / "ground_truth.png", outdir / "depth.tif"
    for p in (fused_path, truth_path, depth_path):
        _check_output(p, args.overwrite)
    sim = sample_stack()
    update, close = _progress_bar("fusing the sample")
    try:
        result = fuse(sim.frames, method=args.method, reference=sim.reference, progress=update)
    finally:
        close()
    truth = sim.sharp
    fused = to_float(result.image)
    # score the centre, away from borders that registration fills in
    h, w = truth.shape[:2]
    crop = (slice(h // 10, h - h // 10), slice(w // 10, w - w // 10))
    best_frame = max(_psnr(to_float(f)[crop], truth[crop]) for f in sim.frames)
    score = _psnr(fused[crop], truth[crop])
    write_image(fused_path, result.image, overwrite=args.overwrite)
    write_image(truth_path, (np.clip(truth, 0, 1) * 255 + 0.5).astype(np.uint8), overwrite=args.overwrite)
    write_image(depth_path, result.depth, overwrite=args.overwrite)
    print(f"sample: {len(sim.frames)} frames {w}x{h}, 2% focus breathing, low noise")
    print(f"method: {result.method} (registered to frame {sim.reference})")
    print(f"PSNR against ground truth: {score:.2f} dB (best single frame: {best_frame:.2f} dB)")
    print(f"wrote {fused_path}, {truth_path}, {depth_path}")
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    import numpy as np

    from .io import write_image
    from .training.simulate import image_source, simulate_stack, synthetic_scene

    outdir = Path(args.output)
    if outdir.exists() and any(outdir.iterdir()) and not args.overwrite:
        raise UsageError(f"{outdir} is not empty; pass --overwrite to write into it")
    h, w = args.size
    if args.source:
        sharp, depth = image_source(args.source, shape=(h, w), seed=args.seed)
    else:
        sharp, depth = synthetic_scene((h, w), channels=1 if args.gray else 3, seed=args.seed)
    dtype = {"uint8": np.uint8, "uint16": np.uint16, "float32": np.float32}[args.dtype]
    sim = simulate_stack(
        sharp,
        depth,
        args.frames,
        psf=args.psf,
        max_blur=args.max_blur,
        breathing=args.breathing,
        shake=args.shake,
        noise=None if args.noise == "none" else args.noise,
        dtype=dtype,
        seed=args.seed,
    )
    outdir.mkdir(parents=True, exist_ok=True)
    ext = ".png" if dtype != np.float32 else ".tif"
    for i, frame in enumerate(sim.frames):
        write_image(outdir / f"frame_{i:03d}{ext}", frame, overwrite=args.overwrite)
    write_image(outdir / "ground_truth.tif", sim.sharp, overwrite=args.overwrite)
    write_image(outdir / "depth.tif", sim.depth, overwrite=args.overwrite)
    print(f"wrote {len(sim.frames)} frames, ground_truth.tif and depth.tif to {outdir}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    try:
        from .training.train import config_from_args, train
    except ImportError as exc:
        raise UsageError(f"training needs PyTorch: {exc}") from None
    import threading

    stop = threading.Event()
    try:
        with _stop_on_interrupt(stop):
            result = train(config_from_args(args), args.output, resume=not args.no_resume, stop=stop)
    except KeyboardInterrupt:  # a second Ctrl-C: no time for the checkpoint
        print(f"focusdeep: training aborted; the last checkpoint in {args.output} (if any) is kept: "
              "run the same command again to continue from it", file=sys.stderr)
        return 130
    if result.stopped == "stopped":
        if (Path(args.output) / "checkpoint.safetensors").exists():
            print(f"focusdeep: interrupted at step {result.step}; checkpoint saved in {args.output}: "
                  "run the same command again to continue (--no-resume starts afresh)", file=sys.stderr)
        else:
            print("focusdeep: interrupted before training began; nothing was saved", file=sys.stderr)
        return 130
    print(f"step {result.step}: best validation PSNR {result.best_psnr} dB ({result.stopped}); weights: {result.weights}")
    return 0


@contextlib.contextmanager
def _stop_on_interrupt(stop: Any) -> Iterator[None]:
    """Turn the first Ctrl-C into ``stop.set()``; a second one raises KeyboardInterrupt.

    Training checks ``stop`` at every step and then saves a checkpoint, so an
    interrupted run loses nothing and resumes. Raising at once instead could
    land anywhere, even in the middle of writing the checkpoint.
    """
    import os
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return

    owner = os.getpid()

    def _interrupt(signum: int, frame: Any) -> None:
        if os.getpid() != owner:
            # a forked data-loading worker inherits this handler; the training
            # process shuts its workers down itself, so they ignore Ctrl-C
            return
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        try:  # os.write, not print: a handler may interrupt a print to stderr in progress
            os.write(sys.stderr.fileno(), b"\nfocusdeep: stopping after this step to save a checkpoint "
                     b"(Ctrl-C again to abort without it)\n")
        except (OSError, ValueError, AttributeError):
            pass

    previous = signal.signal(signal.SIGINT, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def cmd_batch(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .batch import (
        BatchUsageError,
        FuseSettings,
        batch_client,
        clean_stale_files,
        default_workers,
        discover_stacks,
        format_summary,
        normalise_format,
        plan_batch,
        run_batch,
        split_done,
    )
    from .fusion.registry import get_method

    def note(message: str) -> None:
        print(f"focusdeep: {message}", file=sys.stderr)

    outdir = Path(args.output)
    options: dict[str, Any] = {name: getattr(args, name) for name in ("device", "weights", "tile") if getattr(args, name) is not None}
    settings = FuseSettings(
        method=args.method,
        register=not args.no_register,
        reference=args.reference,
        motion=args.motion,
        channel=args.channel,
        block_size=args.block_size,
        options=options,
        overwrite=args.overwrite,
    )
    try:
        fmt = normalise_format(args.format)
        if outdir.exists() and not outdir.is_dir():
            raise UsageError(f"{outdir} is a file; -o takes a folder")
        if args.workers is not None and args.workers < 1:
            raise UsageError("--workers must be at least 1")
        meth = get_method(args.method)
        meth.halo(**{**meth.options, **options})  # missing weights fail here, not on every worker
        sources = discover_stacks(args.inputs, exclude=[outdir], note=note)
        tasks, failed = plan_batch(sources, outdir, fmt=fmt)
    except BatchUsageError as exc:
        raise UsageError(str(exc)) from None
    outdir.mkdir(parents=True, exist_ok=True)
    removed = clean_stale_files(outdir, tasks)
    if removed:
        note(f"removed {removed} unfinished file(s) an interrupted run left in {outdir}")
    todo, skipped = split_done(tasks, args.overwrite)
    note(f"{len(tasks) + len(failed)} stack(s): {len(todo)} to fuse, {len(skipped)} already done"
         + (f", {len(failed)} unreadable" if failed else ""))
    results = {r.name: r for r in skipped + failed}
    if todo:
        workers = None if args.scheduler else (args.workers or min(default_workers(settings), len(todo)))
        try:
            with batch_client(args.scheduler, workers) as client:
                threads = client.nthreads()
                where = args.scheduler or "a local cluster"
                note(f"dask: {where}, {len(threads)} worker(s), {sum(threads.values())} thread(s)"
                     + ("; tasks wait until workers join" if not threads else ""))
                bar = tqdm(total=len(todo), desc="stacks", unit="stack", file=sys.stderr, disable=None)

                def finished(res: Any) -> None:
                    results[res.name] = res
                    if res.status == "failed":
                        bar.write(f"focusdeep: {res.name} failed: {res.message}", file=sys.stderr)
                    bar.set_postfix_str(f"{res.name} {res.status}", refresh=False)
                    bar.update(1)

                step, close_step = _progress_bar("fusing") if args.distribute_blocks else (None, lambda: None)
                try:
                    run_batch(todo, settings, client, distribute_blocks=args.distribute_blocks,
                              progress=finished, step_progress=step)
                finally:
                    close_step()
                    bar.close()
        except KeyboardInterrupt:
            print(format_summary([r for t in tasks if (r := results.get(t.name))] + failed))
            note("interrupted; finished outputs are kept: run the same command again to fuse the rest")
            return 130
    ordered = [results[t.name] for t in tasks if t.name in results] + failed
    print(format_summary(ordered))
    return 1 if any(r.status == "failed" for r in ordered) else 0


# -- parser ----------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="focusdeep", description="Focus stacking: fuse a z-stack or focus bracket into one all-in-focus image.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__import__('napari_focusdeep').__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("fuse", help="fuse a stack into one image")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="a folder of frames, frame files, or one multi-frame file")
    p.add_argument("--axes", default=None, metavar="LETTERS", help="for stack files that do not say which axis is Z: one letter (T, Z, C, Y, X) per axis longer than 1, e.g. TZCYX")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="output image; its extension picks the format")
    p.add_argument("--method", default="pyramid", help="fusion method (see `focusdeep methods`; default pyramid)")
    p.add_argument("--no-register", action="store_true", help="skip frame registration")
    p.add_argument("--reference", type=_reference, default="middle", help="first, middle (default), last or a frame index")
    p.add_argument("--motion", default="affine", choices=["translation", "euclidean", "affine", "homography"])
    p.add_argument("--channel", type=_channel, default=None, help="measure focus on: luminance (default), max or a channel index")
    p.add_argument("--depth-map", metavar="PATH", help="also write the depth map here")
    p.add_argument("--save-transforms", metavar="PATH", help="write the registration transforms (JSON)")
    p.add_argument("--transforms", metavar="PATH", help="apply these saved transforms instead of registering")
    p.add_argument("--crop-valid", action="store_true", help="crop to the region every registered frame covers")
    p.add_argument("--block-size", type=int, default=None, metavar="PIXELS", help="fuse in blocks to bound memory")
    p.add_argument("--interpolation", default="cubic", choices=_Choices(".registration", "INTERPOLATIONS"),
                   metavar="KIND", help="how registered frames are resampled: %(choices)s (default cubic: keeps fine detail)")
    p.add_argument("--option", action="append", type=_option, default=[], metavar="KEY=VALUE",
                   help="a method option, repeatable, e.g. --option noise=0 (pyramid: classical max selection); "
                        "see the method's documentation")
    p.add_argument("--device", default=None, choices=["auto", "cpu", "cuda", "mps"], help="deep models: where to run")
    p.add_argument("--tile", type=int, default=None, metavar="PIXELS", help="deep models: tile size")
    p.add_argument("--weights", default=None, metavar="PATH", help="deep models: a .safetensors weights file")
    p.add_argument("--raw", action="store_true",
                   help="camera raw input (also found by extension): refuse anything else; with a deep method, "
                   "fuse the packed Bayer planes (needs weights trained with stem='raw')")
    p.add_argument("--linear-output", metavar="PATH", help="camera raw: also write the result in linear sRGB (16-bit TIFF)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.set_defaults(func=cmd_fuse)

    p = sub.add_parser("methods", help="list the fusion methods")
    p.set_defaults(func=cmd_methods)

    p = sub.add_parser("models", help="list installed model weights")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("info", help="describe a stack: frames, size, dtype, scale")
    p.add_argument("inputs", nargs="+", metavar="INPUT")
    p.add_argument("--axes", default=None, metavar="LETTERS", help="for stack files that do not say which axis is Z: one letter (T, Z, C, Y, X) per axis longer than 1, e.g. TZCYX")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("demo", help="fuse the built-in synthetic sample and score it against its ground truth")
    p.add_argument("-o", "--output", default="focusdeep-demo", metavar="DIR", help="folder for the results (default ./focusdeep-demo)")
    p.add_argument("--method", default="pyramid")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("simulate", help="render a synthetic focus bracket with ground truth")
    p.add_argument("-o", "--output", required=True, metavar="DIR")
    p.add_argument("--frames", type=int, default=15)
    p.add_argument("--size", type=int, nargs=2, default=(512, 512), metavar=("H", "W"))
    p.add_argument("--source", default=None, help="an image file or scikit-image sample name (default: procedural)")
    # a metavar, so that argparse lists the choices only when it shows help or an error
    p.add_argument("--psf", default="disk", choices=_Choices(".training.simulate", "PSF_KINDS"), metavar="PSF",
                   help="blur kernel: %(choices)s (default %(default)s)")
    p.add_argument("--max-blur", type=float, default=6.0)
    p.add_argument("--breathing", type=float, default=0.0)
    p.add_argument("--shake", type=float, default=0.0)
    p.add_argument("--noise", default="none", help="none, low, medium, high, random")
    p.add_argument("--gray", action="store_true")
    p.add_argument("--dtype", default="uint8", choices=["uint8", "uint16", "float32"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_simulate)
    p = sub.add_parser("train", help="train or fine-tune a model on simulated or your own data")
    from .training._args import add_train_arguments

    add_train_arguments(p)
    p.set_defaults(func=cmd_train)

    def _device(value: str) -> str:
        # imported when a batch flag is parsed: batch imports dask.distributed (about
        # 1 s), which `focusdeep fuse` never needs
        from .batch import parse_device

        try:
            return parse_device(value)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    p = sub.add_parser(
        "batch",
        help="fuse many stacks (or time points, or plate positions) in parallel on dask.distributed",
        description="Fuse every stack under INPUTs into OUTDIR, one task per stack (per time point of a file "
        "with a T axis). A file is one stack; a folder of images is one stack; any other folder is searched "
        "for stack files and folders of images (a plate). Outputs are named after the inputs; existing outputs "
        "are skipped, so rerunning an interrupted batch resumes it. Exit 0 when all fused, 1 when some failed.",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="stack files, folders of frames, or folders of those")
    p.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="output folder (created if missing)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--scheduler", metavar="ADDRESS", help="use a running dask scheduler (tcp://host:8786)")
    where.add_argument("--workers", type=int, metavar="N", help="local cluster size (default: one per core, one per GPU for deep methods)")
    p.add_argument("--method", default="pyramid", help="fusion method (see `focusdeep methods`; default pyramid)")
    p.add_argument("--format", default=".tif", metavar="EXT", help="output format by extension: .tif (default), .ome.tif, .png, .jpg")
    p.add_argument("--no-register", action="store_true", help="skip frame registration")
    p.add_argument("--reference", type=_reference, default="middle", help="first, middle (default), last or a frame index")
    p.add_argument("--motion", default="affine", choices=["translation", "euclidean", "affine", "homography"])
    p.add_argument("--channel", type=_channel, default=None, help="measure focus on: luminance (default), max or a channel index")
    p.add_argument("--block-size", type=int, default=None, metavar="PIXELS", help="fuse in blocks to bound memory")
    p.add_argument("--distribute-blocks", action="store_true",
                   help="for a few huge images: fuse one stack at a time with its blocks spread over the cluster")
    p.add_argument("--device", type=_device, default=None, metavar="DEVICE",
                   help="deep models: auto, cpu, cuda, cuda:N or mps (a local cluster spreads workers over the GPUs)")
    p.add_argument("--tile", type=int, default=None, metavar="PIXELS", help="deep models: tile size")
    p.add_argument("--weights", default=None, metavar="PATH", help="deep models: a .safetensors weights file")
    p.add_argument("--overwrite", action="store_true", help="fuse again stacks whose output exists, replacing it")
    p.set_defaults(func=cmd_batch)
    return parser


class _Terminated(BaseException):
    """SIGTERM (a scheduler ending the job), raised so that ``finally`` blocks clean up."""


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _show_warning(message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
    # one plain line per warning, instead of Python's "path:line: Category: ...\n  source"
    print(f"focusdeep: warning: {' '.join(str(message).split())}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``focusdeep``; returns the exit status.

    Every failure a user can cause or fix (bad input, damaged files, a missing
    optional package, not enough memory) is one line on stderr and exit status 2;
    Ctrl-C is 130 and SIGTERM 143, both after the temporary files are removed.
    """
    import os
    import signal
    import threading
    import warnings

    parser = build_parser()
    args = parser.parse_args(argv)
    # OpenCV reports undecodable frames on stderr from C++; the error below names the file.
    os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
    previous = None
    if threading.current_thread() is threading.main_thread():

        def _terminate(signum: int, frame: Any) -> None:
            raise _Terminated()

        previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning  # restored by catch_warnings
            return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("focusdeep: interrupted; no output was written", file=sys.stderr)
        return 130
    except _Terminated:
        print("focusdeep: terminated; no output was written", file=sys.stderr)
        return 143
    except (UsageError, ValueError, OSError) as exc:
        # OSError: unreadable files, full disks, permissions (FileNotFoundError, ...)
        print(f"focusdeep: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except ImportError as exc:  # an optional package is missing (MissingExtraError names the extra)
        print(f"focusdeep: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except MemoryError as exc:
        detail = _one_line(exc) if str(exc) else "out of memory"
        print(f"focusdeep: error: not enough memory ({detail}); try --block-size 1024 or a smaller stack", file=sys.stderr)
        return 2
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
