#!/usr/bin/env bash
# GPU check (issue 24): what must hold on a CUDA machine, in one run of at most ~8 minutes.
#
#   bash benchmarks/gpu_check.sh            # needs CUDA; exits 3 on a machine without it
#
# 1. the device-sensitive tests with pytest --device cuda;
# 2. precompute.py + ood_eval.py (energy, DICE, LINe) on a CIFAR-10 subset (2,000 training images,
#    1,000 per test/OOD set: dtd, FashionMNIST) on cpu and on cuda; per-image scores must agree;
# 3. bf16/fp16 autocast throughput vs fp32 (benchmarks/bench_precision.py);
# 4. the LINe layer against the plain head at batches 64/256/1024 (benchmarks/bench_line_batches.py).
# Everything is logged to $GPU_CHECK_OUT (default output/gpu_check); summary.txt lists each step.
set -uo pipefail
cd "$(dirname "$0")/.."
SHARED="${LINE_SHARED_DIR:-../shared}"
OUT="${GPU_CHECK_OUT:-output/gpu_check}"
PY="${PYTHON:-python}"

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 3)"; then
    echo "gpu_check: torch sees no CUDA GPU on this machine; nothing to check (exit 3)" >&2
    exit 3
fi
rm -rf "$OUT/cpu" "$OUT/cuda"  # this script's own folders: a rerun never compares an earlier run's files
mkdir -p "$OUT"
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
"$PY" -c "import torch; print('torch', torch.__version__, 'on', torch.cuda.get_device_name(0))" | tee -a "$SUMMARY"
FAILED=0

step() {  # step NAME COMMAND...: runs one check, logs it, records ok/FAIL and its time
    local name="$1"; shift
    local t0=$SECONDS status
    if "$@" > "$OUT/$name.log" 2>&1; then status=ok; else status=FAIL; FAILED=1; fi
    printf '%-5s %-22s %4ds  %s\n' "$status" "$name" $((SECONDS - t0)) "$OUT/$name.log" | tee -a "$SUMMARY"
}

CKPT="$SHARED/checkpoints/CIFAR-10/densenet/checkpoint_100.pth.tar"
COMMON=(--in-dataset CIFAR-10 --data-root "$SHARED/data" --checkpoint "$CKPT")
run_device() {  # run_device cpu|cuda: the subset benchmark on one device, in its own folders
    local dev="$1"
    "$PY" precompute.py "${COMMON[@]}" --device "$dev" --max-samples 2000 --cache-dir "$OUT/$dev/cache" \
        --no-progress &&
    "$PY" ood_eval.py "${COMMON[@]}" --device "$dev" --max-samples 1000 --cache-dir "$OUT/$dev/cache" \
        --base-dir "$OUT/$dev/scores" --methods energy,dice,line --out-datasets dtd FashionMNIST
}

step tests-cuda "$PY" -m pytest -q -p no:cacheprovider --device cuda tests/test_route.py
step pipeline-cpu run_device cpu
step pipeline-cuda run_device cuda
step scores-agree "$PY" benchmarks/compare_score_dirs.py "$OUT/cpu/scores" "$OUT/cuda/scores"
step precision-bf16 "$PY" benchmarks/bench_precision.py --device cuda --precision bf16 -b 256
step precision-fp16 "$PY" benchmarks/bench_precision.py --device cuda --precision fp16 -b 256
step line-batches-cuda "$PY" benchmarks/bench_line_batches.py --device cuda
echo "summary: $SUMMARY"
exit $FAILED
