"""Side by side: focusdeep against the focus stackers labs use today.

One command runs every installed peer (see ``benchmarks/peers.py``) on the same frame
files and writes ``results.json`` and ``results.md`` into ``--work``::

    python benchmarks/compare.py --quick           # minutes: small stacks, one speed case
    python benchmarks/compare.py                   # the full run behind docs/peers.md
    python benchmarks/compare.py --parts quality   # one part; parts accumulate in results.json

Parts, in the order they run (timing last, so nothing else of ours competes with it):

``quality``
    A synthetic set rendered with the project's simulator (photos and procedural
    textures, 5 to 60 frames, 8/16-bit, gray/RGB, clean to high-ISO noise, 0 to 3 %
    focus breathing, shake, occluding depth edges), written as PNG frames. Each output is
    registered onto the ground truth (affine ECC; tools anchor to different frames or
    crop), then PSNR and SSIM are taken on the central 80 %.
``real``
    Real stacks from ``--data`` (no ground truth): a montage of the same crops from
    every tool. Skipped cleanly when the folder is absent. Montages of stacks whose
    licence allows it go to ``--figures``; the others (GPL) stay in ``--work``.
``profile``
    py-spy samples of ``focusdeep fuse`` on the 15-frame speed case, grouped into
    decode / registration / warp / fusion / encode / imports.
``speed``
    Wall time (median of ``--repeats`` runs, tools alternated in a rotating order) and
    peak RSS of the whole process tree (psutil, 20 ms polling) for 15 frames of
    2000x1500 RGB and 40 frames of 4000x3000 RGB JPEG (rendered at 1000x750 and
    upscaled), registration included. The load average is recorded before and after.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import montage as M  # noqa: E402
from benchmarks import peers as P  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
OURS = "focusdeep"
#: our tools: never counted as peers
OUR_TOOLS = ("focusdeep", "focusdeep-any", "focusdeep-n8")
#: tools run only when named in --peers
OPT_IN = ("focusdeep-any", "focusdeep-n8")
GiB = 2**30


# -- the synthetic set -----------------------------------------------------------------
@dataclass(frozen=True)
class SynthSpec:
    """One synthetic stack: where its sharp image comes from and how it is degraded."""

    name: str
    source: str  # a scikit-image sample name, or "scene:<kind>" for procedural textures
    channels: int  # 1 gray, 3 RGB
    dtype: str  # "uint8" or "uint16"
    n_frames: int
    noise: str  # none, low, medium, high, random
    breathing: float
    shake: float = 0.0
    psf: str = "disk"
    max_blur: float = 6.0
    seed: int = 0


#: The scored set. Seeds differ from TUNING's, which picked the peers' options.
SYNTH: tuple[SynthSpec, ...] = (
    SynthSpec("astronaut-rgb8-clean", "astronaut", 3, "uint8", 10, "none", 0.0, seed=11),
    SynthSpec("scene-gray16-low", "scene:mixed", 1, "uint16", 5, "low", 0.01, seed=12),
    SynthSpec("coffee-rgb8-medium", "coffee", 3, "uint8", 15, "medium", 0.02, shake=1.0, psf="gaussian", seed=13),
    SynthSpec("motorcycle-rgb16-low", "motorcycle", 3, "uint16", 25, "low", 0.03, seed=14),
    SynthSpec("cells-gray8-high", "scene:cells", 1, "uint8", 60, "high", 0.005, max_blur=8.0, seed=15),
    SynthSpec("fibres-rgb8-high", "scene:fibres", 3, "uint8", 30, "high", 0.03, shake=1.5, psf="ring", seed=16),
    SynthSpec("camera-gray16-medium", "camera", 1, "uint16", 12, "medium", 0.02, seed=17),
    SynthSpec("chelsea-rgb8-random", "chelsea", 3, "uint8", 40, "random", 0.015, shake=0.5, seed=18),
    SynthSpec("text-rgb16-clean", "scene:text", 3, "uint16", 20, "none", 0.01, max_blur=5.0, seed=19),
)

#: Stacks used only to choose peer options (openfocus's classical method, focusweave's canvas).
TUNING: tuple[SynthSpec, ...] = (
    SynthSpec("tune-rocket-rgb8", "rocket", 3, "uint8", 12, "low", 0.02, shake=0.5, seed=101),
    SynthSpec("tune-scene-gray16", "scene:mixed", 1, "uint16", 9, "medium", 0.01, seed=102),
)


def _sharp_and_depth(spec: SynthSpec, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    import cv2

    from napari_focusdeep.training.simulate import image_source, synthetic_scene

    if spec.source.startswith("scene:"):
        return synthetic_scene(shape, channels=spec.channels, kind=spec.source.split(":", 1)[1], seed=spec.seed)
    sharp, depth = image_source(spec.source, shape=shape, seed=spec.seed)
    if spec.channels == 1 and sharp.ndim == 3:
        sharp = cv2.cvtColor(sharp[..., :3], cv2.COLOR_RGB2GRAY)
    elif spec.channels == 3 and sharp.ndim == 2:
        sharp = np.repeat(sharp[..., None], 3, axis=-1)
    return sharp.astype(np.float32), depth


def _write_frame(path: Path, frame: np.ndarray, **params: int) -> None:
    import cv2

    img = cv2.cvtColor(frame, cv2.COLOR_RGB2BGR) if frame.ndim == 3 else frame
    flags = [cv2.IMWRITE_JPEG_QUALITY, params["jpeg"]] if "jpeg" in params else []
    if not cv2.imwrite(str(path), img, flags):
        raise OSError(f"cannot write {path}")


def make_synthetic(spec: SynthSpec, root: Path, shape: tuple[int, int], max_frames: int | None) -> tuple[list[Path], Path]:
    """Render ``spec`` into ``root/spec.name`` (PNG frames + ``truth.npy``); reused when present."""
    from napari_focusdeep.training.simulate import simulate_stack

    n = spec.n_frames if max_frames is None else min(spec.n_frames, max_frames)
    folder = root / spec.name
    meta = {"spec": asdict(spec), "shape": list(shape), "n_frames": n}
    meta_path = folder / "meta.json"
    if meta_path.exists() and json.loads(meta_path.read_text()) == meta:
        return sorted(folder.glob("frame_*.png")), folder / "truth.npy"
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    sharp, depth = _sharp_and_depth(spec, shape)
    sim = simulate_stack(
        sharp,
        depth,
        n,
        psf=spec.psf,
        max_blur=spec.max_blur,
        breathing=spec.breathing,
        shake=spec.shake,
        noise=None if spec.noise == "none" else spec.noise,
        dtype=np.dtype(spec.dtype),
        seed=spec.seed,
    )
    paths = []
    for i, frame in enumerate(sim.frames):
        p = folder / f"frame_{i:03d}.png"
        _write_frame(p, frame)
        paths.append(p)
    np.save(folder / "truth.npy", sim.sharp.astype(np.float32))
    meta_path.write_text(json.dumps(meta))
    return paths, folder / "truth.npy"


def score(out_path: Path, truth: np.ndarray) -> dict[str, float]:
    """PSNR / SSIM of a tool's output against the ground truth, after registration.

    The output is registered onto the truth (affine ECC, cubic resampling), then the
    central 80 % is compared: registration fills the borders differently in every tool.
    """
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    out = M.read_image(out_path)
    if truth.ndim == 2 and out.ndim == 3:
        out = out.mean(axis=-1)  # a gray stack written back as RGB
    elif truth.ndim == 3 and out.ndim == 2:
        out = np.repeat(out[..., None], truth.shape[-1], axis=-1)
    warped, cc, warp = M.register_to(out, truth, iterations=300)
    H, W = truth.shape[:2]
    y0, x0 = H // 10, W // 10
    a, b = truth[y0 : H - y0, x0 : W - x0], warped[y0 : H - y0, x0 : W - x0]
    psnr = float(peak_signal_noise_ratio(a, b, data_range=1.0))
    ssim = float(structural_similarity(a, b, data_range=1.0, channel_axis=-1 if a.ndim == 3 else None))
    return {"psnr": psnr, "ssim": ssim, "ecc": cc, "scale": float(math.sqrt(abs(np.linalg.det(warp[:, :2]))))}


# -- running tools ---------------------------------------------------------------------
def _run(name: str, frames: Sequence[Path], out: Path, args: argparse.Namespace, *, reuse: bool = False) -> dict[str, Any]:
    """Run one tool (or reuse its existing output); a failure becomes a row, not a crash."""
    if reuse and out.exists():
        return {"ok": True, "seconds": None, "peak_rss": None, "reused": True}
    if out.exists():
        out.unlink()
    try:
        r = P.run_peer_measured(name, frames, out, timeout=args.timeout, mem_cap=int(args.mem_cap * GiB))
    except P.PeerError as exc:
        return {"ok": False, "error": str(exc)}
    return {"ok": True, "seconds": r.seconds, "peak_rss": r.peak_rss, "steps": r.steps}


def _progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def part_quality(tools: list[str], args: argparse.Namespace, specs: Sequence[SynthSpec] = SYNTH, key: str = "quality") -> dict[str, Any]:
    shape = (192, 256) if args.quick else (384, 512)
    max_frames = 12 if args.quick else None
    root = args.work / ("synth-quick" if args.quick else "synth")
    rows = []
    for spec in specs:
        frames, truth_path = make_synthetic(spec, root, shape, max_frames)
        truth = np.load(truth_path)
        row: dict[str, Any] = {"stack": spec.name, "frames": len(frames), "spec": asdict(spec), "tools": {}}
        for name in tools:
            out = root / spec.name / "out" / f"{name}.tif"
            out.parent.mkdir(exist_ok=True)
            res = _run(name, frames, out, args, reuse=args.reuse)
            if res["ok"]:
                try:
                    res.update(score(out, truth))
                except Exception as exc:  # an unreadable output is that tool's failure
                    res.update(ok=False, error=f"scoring failed: {exc}")
            row["tools"][name] = res
            shown = f"{res['psnr']:.2f} dB" if res.get("psnr") is not None else res.get("error", "")[:120]
            _progress(f"[{key}] {spec.name:<22} {name:<19} {shown}")
        rows.append(row)
    return {"shape": list(shape), "rows": rows, "tools": tools, "labels": {t: P.PEERS[t].label for t in tools}}


def merge_quality(old: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
    """Fold a run of some tools into earlier results on the same set (same stacks, same size).

    Lets one tool be re-run (a new version, another option) without re-running the rest.
    """
    if not old or old.get("shape") != new["shape"] or [r["stack"] for r in old["rows"]] != [r["stack"] for r in new["rows"]]:
        return new
    for row_old, row_new in zip(old["rows"], new["rows"]):
        row_old["tools"].update(row_new["tools"])
    old["labels"] = {**old.get("labels", {}), **new["labels"]}
    order = list(P.PEERS)
    old["tools"] = sorted(set(old["tools"]) | set(new["tools"]), key=order.index)
    return old


def summarise_quality(q: dict[str, Any]) -> dict[str, Any]:
    """Means, wins and the targets of issue 6, from a quality part."""
    tools, rows = q["tools"], q["rows"]
    means = {}
    for t in tools:
        ps = [r["tools"][t].get("psnr") for r in rows]
        ss = [r["tools"][t].get("ssim") for r in rows]
        ok = [p for p in ps if p is not None]
        means[t] = {
            "psnr": float(np.mean(ok)) if ok else None,
            "ssim": float(np.mean([s for s in ss if s is not None])) if ok else None,
            "completed": len(ok),
        }
    peers = [t for t in tools if t not in OUR_TOOLS]
    out: dict[str, Any] = {"means": means}
    if OURS in tools and peers:
        wins = 0
        for r in rows:
            ours = r["tools"][OURS].get("psnr")
            others = [r["tools"][t].get("psnr") for t in peers]
            if ours is not None and all(o is None or ours > o for o in others):
                wins += 1
        # the best peer by mean PSNR over the stacks it completed; a peer that failed a
        # stack would otherwise look better by skipping its hardest cases
        complete = [t for t in peers if means[t]["completed"] == len(rows)] or peers
        best = max(complete, key=lambda t: means[t]["psnr"] if means[t]["psnr"] is not None else -1e9)
        margin = None
        if means[OURS]["psnr"] is not None and means[best]["psnr"] is not None:
            margin = means[OURS]["psnr"] - means[best]["psnr"]
        out.update(
            best_peer=best,
            margin_db=margin,
            wins=wins,
            n_stacks=len(rows),
            target_margin_met=margin is not None and margin >= 1.0,
            target_wins_met=wins >= math.ceil(0.75 * len(rows)),
        )
    return out


# -- real stacks -----------------------------------------------------------------------
@dataclass(frozen=True)
class RealStack:
    name: str
    folder: str  # relative to --data
    pattern: str
    licence: str
    publish: bool  # may a figure made from it go into the repository's docs?


REAL: tuple[RealStack, ...] = (
    RealStack("pcb", "focus-stack_pcb/pcb", "pcb_*.jpg", "MIT", True),
    RealStack("depthmap", "focus-stack_pcb/depthmap", "pcb_*.JPG", "MIT", True),
    RealStack("s003", "focus-stacker_s003/s003_stack10_768", "*.jpg", "GPL-3.0", False),
    RealStack("skeleton", "edf_skeleton-zeiss/stack.tif", "", "GPL-3.0", False),
)


def _real_frames(stack: RealStack, data: Path, work: Path) -> list[Path]:
    src = data / stack.folder
    if src.is_dir():
        return sorted(src.glob(stack.pattern))
    # a multi-page TIFF: every peer reads frame files, so split it (into --work, never the repo)
    import tifffile

    arr = tifffile.imread(str(src))
    folder = work / "real" / stack.name / "frames"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, frame in enumerate(arr):
        p = folder / f"frame_{i:03d}.png"
        if not p.exists():
            _write_frame(p, np.ascontiguousarray(frame))
        paths.append(p)
    return paths


def part_real(tools: list[str], args: argparse.Namespace) -> dict[str, Any]:
    data = args.data
    if not data.is_dir():
        _progress(f"[real] {data} is absent: skipping the real stacks")
        return {"skipped": f"{data} absent", "stacks": []}
    stacks = [s for s in REAL if (data / s.folder).exists()]
    if args.quick:
        stacks = [s for s in stacks if s.name in ("s003", "skeleton")]
    done = []
    for stack in stacks:
        frames = _real_frames(stack, data, args.work)
        outdir = args.work / "real" / stack.name / "out"
        outdir.mkdir(parents=True, exist_ok=True)
        results, images = {}, {}
        for name in tools:
            out = outdir / f"{name}.tif"
            res = _run(name, frames, out, args, reuse=args.reuse)
            results[name] = res
            _progress(f"[real] {stack.name:<10} {name:<19} {'ok' if res['ok'] else res['error'][:120]}")
            if res["ok"]:
                images[P.PEERS[name].label] = M.read_image(out)
        entry: dict[str, Any] = {"stack": stack.name, "frames": len(frames), "licence": stack.licence, "tools": results}
        ref = P.PEERS[OURS].label
        if ref in images:
            figure_dir = args.figures if (stack.publish and args.figures is not None) else args.work / "figures"
            target = figure_dir / f"montage_{stack.name}.png"
            if target.exists() and not args.overwrite:
                target = args.work / "figures" / target.name
                _progress(f"[real] {figure_dir / target.name} exists (pass --overwrite); writing {target}")
            title = f"{stack.name}: {len(frames)} frames, {stack.licence}; crops registered onto ours"
            boxes = M.make_montage(images, ref, target, title=title)
            entry.update(montage=str(target), boxes=boxes)
        done.append(entry)
    return {"stacks": done}


# -- speed, memory, profile ------------------------------------------------------------
SPEED_CASES = {
    "15x2000x1500": (15, (1500, 2000)),
    "40x4000x3000": (40, (3000, 4000)),
}


def make_speed_set(root: Path, n: int, shape: tuple[int, int], base: tuple[int, int] = (750, 1000)) -> list[Path]:
    """``n`` RGB JPEG frames (q95) of ``shape``: rendered at ``base`` and upscaled (fast)."""
    import cv2

    from napari_focusdeep.training.simulate import simulate_stack, synthetic_scene

    folder = root / f"speed-{n}x{shape[1]}x{shape[0]}"
    meta = {"n": n, "shape": list(shape), "base": list(base)}
    if (folder / "meta.json").exists() and json.loads((folder / "meta.json").read_text()) == meta:
        return sorted(folder.glob("frame_*.jpg"))
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    sharp, depth = synthetic_scene(base, channels=3, seed=7)
    sim = simulate_stack(sharp, depth, n, breathing=0.02, shake=0.5, noise="low", dtype=np.float32, seed=7, max_blur=4.0)
    paths = []
    for i, frame in enumerate(sim.frames):
        big = cv2.resize(frame, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)
        big = np.clip(np.rint(big * 255), 0, 255).astype(np.uint8)
        p = folder / f"frame_{i:03d}.jpg"
        _write_frame(p, big, jpeg=95)
        paths.append(p)
    (folder / "meta.json").write_text(json.dumps(meta))
    return paths


def part_speed(tools: list[str], args: argparse.Namespace) -> dict[str, Any]:
    cases = {"5x1000x750": (5, (750, 1000))} if args.quick else SPEED_CASES
    result: dict[str, Any] = {"cases": {}}
    for case, (n, shape) in cases.items():
        frames = make_speed_set(args.work, n, shape)
        big = n * shape[0] * shape[1] > 100e6
        load_before = os.getloadavg()
        # the deep tools run once on the small case; the big case runs only --big-peers,
        # --big-repeats times each (a run there takes tens of minutes on 2 shared cores);
        # the order rotates from one repeat to the next
        if big:
            case_tools = [t for t in tools if t in args.big_peers]
            reps = {t: args.big_repeats for t in case_tools}
        else:
            case_tools = list(tools)
            reps = {t: 1 if t in args.deep or t in args.once else args.repeats for t in case_tools}
        runs: dict[str, list[dict[str, Any]]] = {t: [] for t in case_tools}
        for rep in range(max(reps.values())):
            order = case_tools[rep % len(case_tools) :] + case_tools[: rep % len(case_tools)]
            for name in order:
                if rep >= reps[name] or (rep > 0 and not runs[name][0]["ok"]):
                    continue
                out = args.work / "speed-out" / f"{case}-{name}-{rep}.tif"
                out.parent.mkdir(exist_ok=True)
                res = _run(name, frames, out, args)
                res["load"] = os.getloadavg()[0]
                runs[name].append(res)
                shown = f"{res['seconds']:.1f} s, {res['peak_rss'] / GiB:.2f} GiB" if res["ok"] else res["error"][:120]
                _progress(f"[speed] {case} run {rep + 1} {name:<19} {shown}")
                if out.exists():
                    out.unlink()  # 36 MB a result: keep the disk for the frames
        load_after = os.getloadavg()
        summary = {}
        for name, rs in runs.items():
            ok = [r for r in rs if r["ok"]]
            summary[name] = {
                "runs": len(rs),
                "ok": bool(ok) and len(ok) == len(rs),
                "median_s": statistics.median(r["seconds"] for r in ok) if ok else None,
                "all_s": [r["seconds"] for r in ok],
                "peak_rss_gib": max(r["peak_rss"] for r in ok) / GiB if ok else None,
                "error": next((r["error"] for r in rs if not r["ok"]), None),
            }
        result["cases"][case] = {
            "frames": n,
            "shape": list(shape),
            "megapixel_frames": n * shape[0] * shape[1] / 1e6,
            "load_before": load_before,
            "load_after": load_after,
            "summary": summary,
            "not_run": [t for t in tools if t not in case_tools],
        }
    return result


_CATEGORIES = (
    # (category, substrings of a sampled stack that put it there), first match wins: the
    # specific stages before the drivers that call them (decoding happens inside both
    # registration and fusion, warping inside fusion's dask graph)
    ("imports", ("<module> (<frozen importlib", "_find_and_load")),
    ("encode (write result)", ("writers.py", "write_image")),
    ("registration: ECC", ("_ecc_level",)),
    ("registration: phase correlation", ("_phase_shift",)),
    ("decode (read frames)", ("io/_frames.py", "io/_natural.py", "io/_tiff.py", "imread", "imageio", "tifffile", "PIL")),
    ("warp", ("warp_frame", "apply_transforms")),
    ("fusion: pyramid", ("fusion/pyramid.py",)),
    ("fusion: focus measure / depth", ("fusion/_focus.py", "selection_image")),
    ("registration: gray/shrink/normalise", ("registration.py",)),
    ("fusion: driver (to_float, blocks)", ("fusion/core.py",)),
    ("dask scheduling", ("dask/",)),
)


def _categorise(stack: str) -> str:
    for cat, keys in _CATEGORIES:
        if any(k in stack for k in keys):
            return cat
    return "other"


def part_profile(args: argparse.Namespace) -> dict[str, Any]:
    """py-spy samples of ``focusdeep fuse`` on the 15-frame case, grouped by stage."""
    pyspy = P._which("py-spy")
    if pyspy is None:
        return {"skipped": "py-spy is not installed (pip install py-spy)"}
    n, shape = (5, (750, 1000)) if args.quick else SPEED_CASES["15x2000x1500"]
    frames = make_speed_set(args.work, n, shape)
    raw = args.work / "profile.raw.txt"
    out = args.work / "profile-out.tif"
    for p in (raw, out):
        if p.exists():
            p.unlink()
    t0 = time.perf_counter()
    cmd = [pyspy, "record", "--rate", "100", "--format", "raw", "--output", str(raw), "--subprocesses", "--",
           P._exe("focusdeep"), "fuse", *map(str, frames), "-o", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0 or not raw.exists():
        return {"skipped": f"py-spy failed: {proc.stderr.strip()[-300:]}"}
    return {"case": f"{n}x{shape[1]}x{shape[0]}", "wall_s_under_pyspy": wall, **summarise_profile(raw)}


def summarise_profile(raw: Path) -> dict[str, Any]:
    """Shares of py-spy's raw (collapsed) samples per stage and per sampled line."""
    cats: dict[str, int] = {}
    leaves: dict[str, int] = {}
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        c = int(count)
        total += c
        cat = _categorise(stack)
        cats[cat] = cats.get(cat, 0) + c
        leaf = stack.split(";")[-1]
        leaves[leaf] = leaves.get(leaf, 0) + c
    top = sorted(leaves.items(), key=lambda kv: -kv[1])[:12]
    return {
        "samples": total,
        "categories": {k: v / total for k, v in sorted(cats.items(), key=lambda kv: -kv[1])} if total else {},
        "top_leaves": [(k, v / total) for k, v in top] if total else [],
        "raw": str(raw),
    }


def part_tune(args: argparse.Namespace) -> dict[str, Any]:
    """Score peer variants on the tuning stacks (not the scored set) to choose their options."""
    shape = (384, 512)
    root = args.work / "tune"
    variants = {
        **{f"openfocus:{m}": ["openfocus", m] for m in ("guided_filter", "gfgfgf", "dct", "dtcwt", "openfocus_a", "openfocus_b", "openfocus_c")},
        "focusweave:default": ["focusweave"],
        "focusweave:--keep-size": ["focusweave", "--keep-size"],
    }
    rows = []
    for spec in TUNING:
        frames, truth_path = make_synthetic(spec, root, shape, None)
        truth = np.load(truth_path)
        row: dict[str, Any] = {"stack": spec.name, "variants": {}}
        for key, argv in variants.items():
            out = root / spec.name / "out" / f"{key.replace(':', '_')}.tif"
            out.parent.mkdir(exist_ok=True)
            if out.exists():
                out.unlink()
            if argv[0] == "openfocus":
                cmd = [P._exe("openfocus"), "-i", *map(str, frames), "-o", str(out), "-m", argv[1], "--align", "ecc"]
            else:
                link = root / spec.name / "links"
                if not link.exists():
                    link.mkdir()
                    for i, f in enumerate(frames):
                        (link / f"{i:04d}.png").symlink_to(f.resolve())
                cmd = [P._exe("focusweave"), str(link), "--output", str(out), *argv[1:]]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            res = score(out, truth) if proc.returncode == 0 and out.exists() else {"error": proc.stdout[-200:] + proc.stderr[-200:]}
            row["variants"][key] = res
            _progress(f"[tune] {spec.name} {key:<24} {res.get('psnr', res.get('error'))}")
        rows.append(row)
    return {"rows": rows}


# -- reporting -------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    import cv2

    info = {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "opencv": cv2.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
        info["memory_gib"] = round(int(mem) / 2**20, 1)
    except OSError:
        pass
    info["tools"] = {n: P.peer_version(n) for n in P.available()}
    return info


def _fmt(v: float | None, spec: str) -> str:
    return "failed" if v is None else format(v, spec)


def render(results: dict[str, Any]) -> str:
    """Markdown tables from ``results.json``."""
    lines: list[str] = []
    m = results.get("machine", {})
    if m:
        lines += [f"Machine: {m.get('cpu')}, {m.get('cores')} cores, {m.get('memory_gib')} GiB; Python {m.get('python')}, "
                  f"OpenCV {m.get('opencv')}, numpy {m.get('numpy')}.",
                  "Tools: " + ", ".join(f"{k} {v}" for k, v in m.get("tools", {}).items()) + ".", ""]
    q = results.get("quality")
    if q:
        tools = q["tools"]
        s = summarise_quality(q)
        lines += [f"### Quality: PSNR dB / SSIM on the central 80 % ({q['shape'][0]}x{q['shape'][1]} px)", ""]
        labels = {**{t: P.PEERS[t].label for t in tools}, **q.get("labels", {})}  # as run
        lines.append("| stack | N | " + " | ".join(labels[t] for t in tools) + " |")
        lines.append("|---|---|" + "---|" * len(tools))
        for r in q["rows"]:
            ps = {t: r["tools"][t].get("psnr") for t in tools}
            best = max((v for v in ps.values() if v is not None), default=None)
            cells = []
            for t in tools:
                res = r["tools"][t]
                if res.get("psnr") is None:
                    cells.append("failed")
                    continue
                cell = f"{res['psnr']:.2f} / {res['ssim']:.3f}"
                cells.append(f"**{cell}**" if res["psnr"] == best else cell)
            lines.append(f"| {r['stack']} | {r['frames']} | " + " | ".join(cells) + " |")
        means = s["means"]
        lines.append("| **mean** | | " + " | ".join(
            f"{_fmt(means[t]['psnr'], '.2f')} / {_fmt(means[t]['ssim'], '.3f')}"
            + ("" if means[t]["completed"] == len(q["rows"]) else f" ({means[t]['completed']}/{len(q['rows'])} ran)")
            for t in tools) + " |")
        # indicative only: these runs were not alternated or repeated (the speed part is)
        fresh = [r for r in q["rows"] if all(r["tools"][t].get("seconds") is not None for t in tools if r["tools"][t].get("ok"))]
        if fresh:
            secs = {t: sum(r["tools"][t]["seconds"] for r in fresh if r["tools"][t].get("ok")) for t in tools}
            ran = {t: sum(1 for r in fresh if r["tools"][t].get("ok")) for t in tools}
            lines.append("| wall s, sum over " + f"{len(fresh)} stacks (indicative) | | "
                         + " | ".join(f"{secs[t]:.0f}" + ("" if ran[t] == len(fresh) else f" ({ran[t]} ran)") for t in tools) + " |")
        lines.append("")
        if "best_peer" in s:
            lines.append(
                f"Ours minus the best peer's mean ({labels[s['best_peer']]}): {_fmt(s['margin_db'], '+.2f')} dB "
                f"(target >= +1 dB: {'met' if s['target_margin_met'] else 'NOT met'}); ours beats every peer on "
                f"{s['wins']}/{s['n_stacks']} stacks (target >= 3/4: {'met' if s['target_wins_met'] else 'NOT met'})."
            )
            errors = [(r["stack"], t, r["tools"][t]["error"]) for r in q["rows"] for t in tools if not r["tools"][t].get("ok", True) or r["tools"][t].get("psnr") is None]
            if errors:
                lines += ["", "Failures:"] + [f"- {st} / {t}: {e}" for st, t, e in errors if e]
            lines.append("")
    t = results.get("tune")
    if t:
        keys = list(t["rows"][0]["variants"])
        lines += ["### Peer options chosen on the tuning stacks (PSNR dB)", "",
                  "| variant | " + " | ".join(r["stack"] for r in t["rows"]) + " | mean |", "|---|" + "---|" * (len(t["rows"]) + 1)]
        for k in keys:
            vals = [r["variants"][k].get("psnr") for r in t["rows"]]
            mean = float(np.mean(vals)) if all(v is not None for v in vals) else None
            lines.append(f"| {k} | " + " | ".join(_fmt(v, ".2f") for v in vals) + f" | {_fmt(mean, '.2f')} |")
        lines.append("")
    real = results.get("real")
    if real:
        lines += ["### Real stacks", ""]
        if real.get("skipped"):
            lines.append(f"Skipped: {real['skipped']}.")
        for e in real.get("stacks", []):
            failed = [f"{k} ({v['error'][:80]})" for k, v in e["tools"].items() if not v["ok"]]
            lines.append(f"- {e['stack']} ({e['frames']} frames, {e['licence']}): montage `{e.get('montage', 'none')}`"
                         + (f"; failed: {', '.join(failed)}" if failed else ""))
        lines.append("")
    prof = results.get("profile")
    if prof and not prof.get("skipped"):
        lines += [f"### Profile of `focusdeep fuse` ({prof['case']}, py-spy, {prof['samples']} samples, "
                  f"{prof['wall_s_under_pyspy']:.1f} s under py-spy)", "", "| stage | share of samples |", "|---|---|"]
        lines += [f"| {k} | {v:.1%} |" for k, v in prof["categories"].items()]
        lines += ["", "Top sampled lines:", ""] + [f"- {v:.1%} `{k}`" for k, v in prof["top_leaves"]] + [""]
    sp = results.get("speed")
    if sp:
        for case, c in sp["cases"].items():
            lines += [f"### Speed and memory: {case} ({c['megapixel_frames']:.0f} MP-frames), load average "
                      f"{c['load_before'][0]:.2f} before, {c['load_after'][0]:.2f} after", "",
                      "| tool | runs | median wall s | runs s | peak RSS GiB | ours / tool (time) |", "|---|---|---|---|---|---|"]
            ours = c["summary"].get(OURS, {}).get("median_s")
            for name, v in c["summary"].items():
                ratio = f"{ours / v['median_s']:.2f}" if ours and v["median_s"] else ""
                med = _fmt(v["median_s"], ".1f") if v["median_s"] is not None else f"failed: {v['error'][:80]}"
                lines.append(f"| {P.PEERS[name].label} | {v['runs']} | {med} | {', '.join(f'{x:.1f}' for x in v['all_s'])} | "
                             f"{_fmt(v['peak_rss_gib'], '.2f')} | {ratio} |")
            if c.get("not_run"):
                lines.append(f"Not run on this case (see --big-peers): {', '.join(c['not_run'])}.")
            lines.append("")
    return "\n".join(lines)


# -- command line ----------------------------------------------------------------------
PARTS = ("tune", "quality", "real", "profile", "speed")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small stacks and one small speed case (minutes)")
    parser.add_argument("--parts", default="quality,real,profile,speed",
                        help=f"comma-separated, from {', '.join(PARTS)} (tune re-chooses peer options)")
    parser.add_argument("--peers", default=",".join(t for t in P.PEERS if t not in OPT_IN),
                        help=f"tools to run (default: every installed one but {', '.join(OPT_IN)}, slow on CPU)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/focusdeep-peers"), help="frames, outputs and results")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data", help="real stacks (skipped when absent)")
    parser.add_argument("--figures", type=Path, default=REPO / "docs" / "images", help="where publishable montages go")
    parser.add_argument("--overwrite", action="store_true", help="replace existing montages in --figures")
    parser.add_argument("--reuse", action="store_true", help="re-score existing outputs instead of re-running tools")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per tool (median reported)")
    parser.add_argument("--big-peers", default=f"{OURS},focusweave",
                        help="tools timed on the 40-frame 4000x3000 case (default: ours and the fastest peer)")
    parser.add_argument("--big-repeats", type=int, default=1, help="timed runs per tool on the 40-frame case")
    parser.add_argument("--deep", default="focusdeep-any,openfocus-stackmff",
                        help="neural tools: timed once on the 15-frame case, not on the 40-frame case")
    parser.add_argument("--once", default="enfuse,rawhdr",
                        help="slow peers timed once on the 15-frame case (not --repeats times)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds before a tool's run is stopped")
    parser.add_argument("--mem-cap", type=float, default=10.0, help="GiB of RSS at which a tool's run is stopped")
    args = parser.parse_args(argv)
    args.big_peers = set(args.big_peers.split(","))
    args.deep = set(args.deep.split(","))
    args.once = set(args.once.split(","))
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    bad = [p for p in parts if p not in PARTS]
    if bad:
        parser.error(f"unknown part(s) {', '.join(bad)}; choose from {', '.join(PARTS)}")
    wanted = [t.strip() for t in args.peers.split(",") if t.strip()]
    try:
        tools = P.available(wanted)
    except ValueError as exc:
        parser.error(str(exc))
    for name, how in P.missing(wanted).items():
        _progress(f"skipping {name}: not installed; install: {how}")
    if OURS in wanted and OURS not in tools:
        parser.error("focusdeep itself is not installed (pip install -e .)")
    args.work.mkdir(parents=True, exist_ok=True)
    results_path = args.work / ("results-quick.json" if args.quick else "results.json")
    results: dict[str, Any] = json.loads(results_path.read_text()) if results_path.exists() else {}
    results["machine"] = machine()
    for part in PARTS:  # fixed order: timing last
        if part not in parts:
            continue
        _progress(f"== {part}")
        if part == "tune":
            results["tune"] = part_tune(args)
        elif part == "quality":
            results["quality"] = merge_quality(results.get("quality"), part_quality(tools, args))
        elif part == "real":
            results["real"] = part_real(tools, args)
        elif part == "profile":
            results["profile"] = part_profile(args)
        elif part == "speed":
            results["speed"] = part_speed(tools, args)
        results_path.write_text(json.dumps(results, indent=1, default=float))
    report = render(results)
    results_path.with_suffix(".md").write_text(report + "\n")
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
