"""Benchmarks of napari-focusdeep: quality against ground truth, CPU speed and memory.

Run everything with ``python -m benchmarks`` (add ``--quick`` for a few-minute
version) from the repository root; results land in ``benchmarks/results/*.json``
and are written up in ``docs/benchmarks.md``.

Suites (each also runs on its own, ``python -m benchmarks.<suite> [--quick]``):

``model_table``
    Parameter counts, tiling halos and compute per megapixel of the networks
    (:mod:`benchmarks.model_table`).
``quality``
    PSNR/SSIM of every fusion method against ground truth on a held-out simulated
    set (:mod:`benchmarks.quality`).
``cpu_speed``
    CPU seconds per megapixel-frame of every method and peak RSS versus number of
    frames (:mod:`benchmarks.cpu_speed`).

``benchmarks/gpu_speed.py`` is the CUDA counterpart, run on a GPU machine.
Benchmarks are measurements, not tests: nothing here asserts a speed.
"""
