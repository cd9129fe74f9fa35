#!/usr/bin/env bash
# The GPU measurements docs/hunyuan.md lists as pending, most wanted first, each under its own time
# limit, so a short loan of a GPU (minutes) yields the most figures. Usage:
#   bash benchmarks/pending_gpu.sh [SECONDS [STEP...]]   # total budget, default 540; only the named steps
# Prints each step's table; logs go to $OUT (or ./pending_gpu) as STEP.log. A step that would not
# fit in the time left is listed as skipped, not started.
#
# Compiled kernels can travel between loans: a cold warm-up (compiling and autotuning the UNet and
# the VAE decoder) takes minutes of a 900-s loan. After each step the compile caches are saved to
# $OUT as compile_cache.tgz.00, .01, ... (15 MiB parts: a loan returns files of 16 MiB at most),
# unless they exceed CACHE_LIMIT_MIB, 58 by default: at most 4 parts, as a loan returns 8 files and
# 64 MiB in all and gpu.txt and the logs must come back too, so name at most three steps a call
# (one 13-window UNet shape with every GEGLU tile config's kernels made 48 MiB). Copy the parts
# into benchmarks/.compile_cache/ (git-ignored) and carry that folder (`carry:
# ["benchmarks/.compile_cache"]`; the tree that travels is 64 MiB at most), and the next loan
# starts from them. They fit one torch, Triton and GPU: another's caches are only missed, never wrong.
set -u
budget=${1:-540}
if [[ ! $budget =~ ^[0-9]+$ ]]; then
    echo "usage: $0 [SECONDS [STEP...]]: the budget comes first, in seconds (got '$budget')" >&2
    exit 2
fi
shift $(($# > 0 ? 1 : 0))
wanted=" $* "
steps=" e2e_250_stock_kernels unet_fused e2e_250_bf16 e2e_1000_memory e2e_250_with_baseline unet_attention kernel_tests geglu_kernel "
for name in "$@"; do
    if [[ $steps != *" $name "* ]]; then
        echo "unknown step '$name'; the steps are:$steps" >&2
        exit 2
    fi
done
logs=${OUT:-pending_gpu}
mkdir -p "$logs"
python=${PYTHON:-python3}
start=$SECONDS
carried=${COMPILE_CACHE:-benchmarks/.compile_cache}
cache=$(mktemp -d)
export TORCHINDUCTOR_CACHE_DIR=$cache/inductor TRITON_CACHE_DIR=$cache/triton
if compgen -G "$carried/compile_cache.tgz.*" > /dev/null; then
    # a part that did not come back leaves cut kernel files that the compilers would load as hits
    if cat "$carried"/compile_cache.tgz.* | gzip -t 2> /dev/null; then
        cat "$carried"/compile_cache.tgz.* | tar xz -C "$cache" && echo "== compile caches from $carried: $(du -sh "$cache" | cut -f1)"
    else
        echo "== compile caches in $carried ignored: the archive is incomplete (a part is missing or cut)"
    fi
fi

limit_mib=${CACHE_LIMIT_MIB:-58}
if [[ ! $limit_mib =~ ^[0-9]+$ ]]; then
    echo "CACHE_LIMIT_MIB must be a whole number of MiB (got '$limit_mib')" >&2
    exit 2
fi
save_caches() {  # the caches as they are now, in $logs (a step killed at its limit keeps the last save)
    rm -f "$logs"/compile_cache.tgz.*
    if ! tar cz -C "$cache" -f "$cache.tgz" .; then
        echo "== compile caches not saved: tar failed"
    elif (($(stat -c %s "$cache.tgz") > limit_mib * 1048576)); then
        echo "== compile caches not saved: $(du -m "$cache.tgz" | cut -f1) MiB compressed, over CACHE_LIMIT_MIB=$limit_mib"
    else
        split -b 15M -d "$cache.tgz" "$logs/compile_cache.tgz."
    fi
    rm -f "$cache.tgz"
}
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader | tee "$logs/gpu.txt"

step() {  # NAME NEEDED_SECONDS COMMAND...
    local name=$1 needed=$2; shift 2
    if [[ $wanted != "  " && $wanted != *" $name "* ]]; then
        return
    fi
    local left=$((budget - (SECONDS - start)))
    if ((left < needed)); then
        echo "== $name: skipped ($left s left, needs about $needed)"
        return
    fi
    echo "== $name: $*"
    # Python's warnings (a "...Warning: " line and the source line after it) stay in the log only
    timeout "$left" "$@" 2>&1 | tee "$logs/$name.log" | grep -v -E 'Warning: |^ +warnings\.warn\('
    save_caches
}

# Ours as the best measured form runs it (the 13 windows of a step in one UNet call: one shape to
# compile, about 200 s cold on an H200) with diffusers' GEGLU and 3-D convolutions instead of the
# fused kernels: on an H200 the compiled stock GEGLU outran the kernel at every width (session 26).
step e2e_250_stock_kernels 300 "$python" benchmarks/hunyuan_gpu.py --dtypes fp16 --frames 250 --windows-per-call 13 \
    --skip-baseline-above 0 --stock-kernels
# One UNet call: stock against fused kernels, compiled, with the kernel profile (~170 s per compile).
step unet_fused 380 "$python" benchmarks/hunyuan_unet.py --variants compile-stock compile --calls 3 --profile
step e2e_250_bf16 300 "$python" benchmarks/hunyuan_gpu.py --dtypes bf16 --frames 250 --windows-per-call 13 \
    --skip-baseline-above 0
# 47 windows a step in calls of 13, 13, 13 and 8: two shapes to compile; the peak should stay the 250-frame one's.
step e2e_1000_memory 560 "$python" benchmarks/hunyuan_gpu.py --dtypes fp16 --frames 1000 --windows-per-call 13 \
    --skip-baseline-above 0
# Ours beside the baseline (measured on an H200 in session 26; wanted on an H100, the published figure's card).
step e2e_250_with_baseline 480 "$python" benchmarks/hunyuan_gpu.py --dtypes fp16 --frames 250 --windows-per-call 13
step unet_attention 200 "$python" benchmarks/hunyuan_unet.py --variants compile compile-flash-attention
# The kernel tests that need CUDA (fp16 and bf16 against the formula, a failing kernel's fallback).
step kernel_tests 60 "$python" -m pytest -q -p no:cacheprovider tests/test_hunyuan_kernels.py
# The fused GEGLU kernel against cuBLAS and inductor, per tile config (about 40 s).
step geglu_kernel 60 "$python" benchmarks/geglu_kernel.py
echo "== done in $((SECONDS - start)) s; logs in $logs"
