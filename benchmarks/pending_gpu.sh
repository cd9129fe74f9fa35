#!/usr/bin/env bash
# The GPU measurements docs/hunyuan.md lists as pending, most wanted first, each under its own time
# limit, so a short loan of a GPU (minutes) yields the most figures. Usage:
#   bash benchmarks/pending_gpu.sh [SECONDS]        # total budget, default 540
# Prints each step's table; logs go to $OUT (or ./pending_gpu) as STEP.log. A step that would not
# fit in the time left is listed as skipped, not started.
set -u
budget=${1:-540}
logs=${OUT:-pending_gpu}
mkdir -p "$logs"
python=${PYTHON:-python3}
start=$SECONDS
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader | tee "$logs/gpu.txt"

step() {  # NAME NEEDED_SECONDS COMMAND...
    local name=$1 needed=$2; shift 2
    local left=$((budget - (SECONDS - start)))
    if ((left < needed)); then
        echo "== $name: skipped ($left s left, needs about $needed)"
        return
    fi
    echo "== $name: $*"
    timeout "$left" "$@" 2>&1 | tee "$logs/$name.log" | grep -v -e Warning -e warn
}

# End to end at 250 frames with two windows per call: compiles a second UNet shape for the 13th window
# (~130 s); the baseline was measured on an H100 (1.529 frames/s), so it is skipped here.
step e2e_250_two_windows 450 "$python" benchmarks/hunyuan_gpu.py --dtypes fp16 --frames 250 --windows-per-call 2 \
    --skip-baseline-above 0
# One UNet call per variant, with the kernel profile (compiles each variant: ~150 s each cold).
step unet_attention 200 "$python" benchmarks/hunyuan_unet.py --variants compile compile-flash-attention
step unet_max_autotune 400 "$python" benchmarks/hunyuan_unet.py --variants compile-max-autotune --profile
step e2e_250_bf16 150 "$python" benchmarks/hunyuan_gpu.py --dtypes bf16 --frames 250 --skip-baseline-above 0
step e2e_1000_memory 320 "$python" benchmarks/hunyuan_gpu.py --dtypes fp16 --frames 1000 --skip-baseline-above 0
echo "== done in $((SECONDS - start)) s; logs in $logs"
