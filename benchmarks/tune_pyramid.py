"""Choose the ``pyramid`` method's softness ``tau`` on a development set.

The development set is 8 simulated stacks with sources and seeds of their own
(``DEV``), so that the scored set of ``compare.py`` (``SYNTH``) is not what the option
is tuned on. Each stack is written as PNG frames (as ``compare.py`` does), read back,
registered and fused with the default pipeline and each candidate, and scored by PSNR
against its ground truth on the central 80 %.

Usage::

    python -m benchmarks.tune_pyramid                       # tau 1.5, 2, 3 and max selection
    python -m benchmarks.tune_pyramid --tau 1 2 4 --work /tmp/dev
    python -m benchmarks.tune_pyramid --tau 2 --levels 3 6 --json /tmp/levels.json   # detail levels
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ._common import RESULTS_DIR, fmt_table, log, machine, scores, write_json
from .compare import SynthSpec, make_synthetic

#: The development set: other pictures, scenes and seeds than ``compare.SYNTH``.
DEV: tuple[SynthSpec, ...] = (
    SynthSpec("dev-rocket-rgb8-low", "rocket", 3, "uint8", 12, "low", 0.02, shake=0.5, seed=201),
    SynthSpec("dev-cells-gray16-medium", "scene:cells", 1, "uint16", 20, "medium", 0.01, seed=202),
    SynthSpec("dev-coins-gray8-high", "coins", 1, "uint8", 15, "high", 0.02, seed=203),
    SynthSpec("dev-fibres-rgb16-clean", "scene:fibres", 3, "uint16", 8, "none", 0.0, psf="ring", seed=204),
    SynthSpec("dev-ihc-rgb8-random", "immunohistochemistry", 3, "uint8", 30, "random", 0.01, shake=1.0, seed=205),
    SynthSpec("dev-text-gray8-medium", "scene:text", 1, "uint8", 10, "medium", 0.03, psf="gaussian", seed=206),
    SynthSpec("dev-mixed-rgb8-high", "scene:mixed", 3, "uint8", 40, "high", 0.015, max_blur=8.0, seed=207),
    SynthSpec("dev-hubble-rgb16-low", "hubble_deep_field", 3, "uint16", 6, "low", 0.0, seed=208),
)


def candidates(taus: Sequence[float], levels: Sequence[int] = ()) -> dict[str, dict[str, Any]]:
    """Option sets to compare: each ``tau``, classical max selection (``noise=0``), and
    each number of detail ``levels`` at the default ``tau``."""
    out = {f"tau={t:g}": {"tau": float(t)} for t in taus}
    out["max selection"] = {"noise": 0}
    out.update({f"levels={k}": {"levels": int(k)} for k in levels})
    return out


def run(work: Path, taus: Sequence[float], shape: tuple[int, int] = (384, 512), levels: Sequence[int] = ()) -> dict[str, Any]:
    from napari_focusdeep.fusion import fuse
    from napari_focusdeep.fusion.core import to_float
    from napari_focusdeep.io import read_stack

    options = candidates(taus, levels)
    rows = []
    for spec in DEV:
        frames, truth_path = make_synthetic(spec, work, shape, None)
        truth = np.load(truth_path)
        stack = read_stack(frames)
        row: dict[str, Any] = {"stack": spec.name, "psnr": {}}
        for name, opts in options.items():
            image = to_float(fuse(stack, **opts).image)
            row["psnr"][name] = scores(image, truth)[0]
        log(f"{spec.name:<26} " + "  ".join(f"{k} {v:.2f}" for k, v in row["psnr"].items()))
        rows.append(row)
    means = {name: float(np.mean([r["psnr"][name] for r in rows])) for name in options}
    return {"machine": machine(), "shape": list(shape), "options": options, "rows": rows, "means": means}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.tune_pyramid", description=__doc__.split("\n\n")[0])
    ap.add_argument("--tau", type=float, nargs="+", default=[1.5, 2.0, 3.0])
    ap.add_argument("--levels", type=int, nargs="*", default=[], help="also compare these numbers of detail levels")
    ap.add_argument("--work", type=Path, default=Path("/tmp/focusdeep-dev"), help="where the stacks are rendered")
    ap.add_argument("--json", type=Path, default=RESULTS_DIR / "tune_pyramid.json")
    args = ap.parse_args(argv)
    result = run(args.work, args.tau, levels=args.levels)
    write_json(args.json, result)
    names = list(result["options"])
    table = [[r["stack"], *(f"{r['psnr'][n]:.2f}" for n in names)] for r in result["rows"]]
    table.append(["**mean**", *(f"**{result['means'][n]:.2f}**" for n in names)])
    print(fmt_table(["stack", *names], table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
