"""Arguments of ``focusdeep train``, kept free of torch so the CLI starts fast."""
from __future__ import annotations

import argparse

__all__ = ["add_train_arguments"]


def add_train_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the trainer's options to ``p``."""
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="run folder (checkpoints, log, weights)")
    p.add_argument(
        "--data", default=None, metavar="DIR",
        help="fine-tune on your own stacks: one sub-folder per stack with ground_truth.* (or gt.*, *_gt.*) beside the frames",
    )
    p.add_argument(
        "--pseudo-gt", default="none", choices=["none", "pyramid", "laplacian", "wavelet"],
        help="make a pseudo ground truth with this method for stacks that have none (use low-noise stacks)",
    )
    p.add_argument(
        "--reference", default="middle", metavar="FRAME",
        help="first, middle, last or an index: the frame whose geometry the ground truths are in (default middle)",
    )
    p.add_argument("--no-register", action="store_true", help="the stacks in --data are already aligned")
    p.add_argument(
        "--raw", action="store_true",
        help="train a raw-input network (packed RGGB in, linear camera RGB out) on simulated raw bursts, "
        "starting from the shipped RGB weights unless --init says otherwise",
    )
    p.add_argument("--architecture", default="focusdeep-any", choices=["focusdeep-any", "focusdeep", "unet"])
    p.add_argument("--model", default="{}", metavar="JSON", help='model keyword arguments, e.g. \'{"features": 32}\'')
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--minutes", type=float, default=None, help="stop after this much time (see --clock)")
    p.add_argument(
        "--clock", default="wall", choices=["wall", "cpu"],
        help="what --minutes counts: wall time, or this process's CPU time (all threads)",
    )
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument(
        "--lr", type=float, default=None,
        help="peak learning rate (default 2e-4 from scratch, 5e-5 when fine-tuning on --data)",
    )
    p.add_argument("--schedule", default="cosine", choices=["cosine", "step"])
    p.add_argument("--crop", type=int, default=128)
    p.add_argument("--frames", type=int, nargs=2, default=(4, 16), metavar=("MIN", "MAX"))
    p.add_argument("--fixed-frames", type=int, default=None, help="fixed burst length (the focusdeep and unet models)")
    p.add_argument("--no-noise", action="store_true", help="train without injected noise")
    p.add_argument(
        "--noise-level", default="random", choices=["random", "low", "medium", "high"],
        help="noise injected into --data crops: a random level per crop (default) or your camera's fixed one",
    )
    p.add_argument(
        "--read-noise-scale", type=float, default=1.0, metavar="FACTOR",
        help="simulated bursts: read noise variance up to FACTOR times Brooks et al.'s (default 1)",
    )
    p.add_argument(
        "--photos", default=None, metavar="NAMES",
        help="simulated bursts: comma-separated scikit-image picture names or image files to crop "
        "(default: the training set of napari_focusdeep.training.data)",
    )
    p.add_argument(
        "--scenes", default=None, metavar="KINDS",
        help="simulated bursts: comma-separated procedural scene kinds (mixed, fractal, cells, fibres, text, leaves; default all)",
    )
    p.add_argument(
        "--dark-fraction", type=float, default=None, metavar="F",
        help="simulated bursts: the fraction of scenes dimmed before the noise goes in (default 0.25)",
    )
    p.add_argument("--val-every", type=int, default=100)
    p.add_argument("--val-count", type=int, default=16)
    p.add_argument("--patience", type=int, default=None, help="early stop after this many validations without gain")
    p.add_argument("--workers", type=int, default=0, help="data-loading processes")
    p.add_argument(
        "--init", default=None, metavar="WEIGHTS",
        help="start from these .safetensors weights or installed name; 'none' trains from scratch "
        "(default: the shipped weights with --data, scratch on simulated data)",
    )
    p.add_argument(
        "--freeze", default=None, metavar="PARTS",
        help="comma-separated top-level parts of the network kept fixed, e.g. extract,align (fine-tunes faster)",
    )
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-resume", action="store_true", help="start afresh even if a checkpoint exists")
    return p
