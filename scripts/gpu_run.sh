#!/usr/bin/env bash
# The prepared GPU job (see docs/models.md): train the shipped models on simulated data and
# measure CUDA speed, writing weights and logs under $OUT. Runs on the lent GPU machine,
# whose own Python has torch, torchvision, OpenCV, numpy, safetensors and scikit-image; dask
# and its two small dependencies travel as wheels in .whl/ (see docs/models.md).
# Usage: OUT=/some/dir TRAIN_MINUTES=6.5 bash scripts/gpu_run.sh
set -uo pipefail
OUT=${OUT:?set OUT to a folder for results}
TRAIN_MINUTES=${TRAIN_MINUTES:-6.5}
# the shipped configuration: a correction of the classical pyramid at half resolution (fast on CPUs),
# continued from the shipped weights; ANY_INIT=none trains from scratch
ANY_MODEL=${ANY_MODEL:-'{"features": 32, "front_blocks": 1, "groups": 2, "blocks_per_group": 2, "align": false, "base": "pyramid", "scale": 2, "noise_input": true}'}
ANY_INIT=${ANY_INIT:-focusdeep-any}
# the paper's fixed-length network, also as a correction of the pyramid (full resolution, with alignment)
FIXED_MODEL=${FIXED_MODEL:-'{"features": 32, "front_blocks": 2, "groups": 2, "blocks_per_group": 2, "n_frames": 8, "base": "pyramid", "noise_input": true}'}
FIXED_INIT=${FIXED_INIT:-focusdeep}
ANY_WORKERS=${ANY_WORKERS:-9}
FIXED_WORKERS=${FIXED_WORKERS:-5}
DEVICE=${DEVICE:-cuda}
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD/src
else
    export PYTHONPATH=$PWD/src
fi
mkdir -p "$OUT"
LOGS=$(mktemp -d)
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true; python3 -c "import torch, sys; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'python', sys.version.split()[0])"; nproc; } 2>&1 | tee "$LOGS/machine.txt"

# 1. the two trainings side by side (the GPU is idle most of the time; data simulation runs on the CPUs)
python3 -m napari_focusdeep.training.train -o "$OUT/any" --architecture focusdeep-any --model "$ANY_MODEL" --init "$ANY_INIT" \
    --frames 3 16 --read-noise-scale 8 --steps 100000 --minutes "$TRAIN_MINUTES" --batch-size 8 --lr 4e-4 --val-every 250 --val-count 24 \
    --workers "$ANY_WORKERS" --device "$DEVICE" --seed 1 > "$LOGS/any.log" 2>&1 &
pid_any=$!
python3 -m napari_focusdeep.training.train -o "$OUT/fixed" --architecture focusdeep --model "$FIXED_MODEL" --init "$FIXED_INIT" \
    --fixed-frames 8 --read-noise-scale 8 --steps 100000 --minutes "$TRAIN_MINUTES" --batch-size 8 --lr 4e-4 --val-every 250 --val-count 24 \
    --workers "$FIXED_WORKERS" --device "$DEVICE" --seed 2 > "$LOGS/fixed.log" 2>&1 &
pid_fixed=$!
wait $pid_any; echo "focusdeep-any exit $?"; tail -5 "$LOGS/any.log"
wait $pid_fixed; echo "focusdeep exit $?"; tail -5 "$LOGS/fixed.log"

# 2. CUDA checks: deform conv against torchvision, throughput with fp16/bf16 autocast
python3 benchmarks/gpu_speed.py --device "$DEVICE" --weights-dir "$OUT" 2>&1 | tee "$LOGS/speed.txt"
# what comes back (at most 8 files): weights + configs + per-step logs, and one report
for d in any fixed; do rm -f "$OUT/$d/checkpoint.safetensors" "$OUT/$d/checkpoint.json"; done
for f in machine any fixed speed; do echo "== $f"; cat "$LOGS/$f.txt" "$LOGS/$f.log" 2>/dev/null; done > "$OUT/report.txt"
ls -laR "$OUT"
