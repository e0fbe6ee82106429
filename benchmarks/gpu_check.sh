#!/usr/bin/env bash
# GPU check (issue 24): everything that must hold on a CUDA machine, in one run of at most ~8 minutes.
#
#   bash benchmarks/gpu_check.sh                        # needs CUDA; exits 3 at once without it
#   GPU_CHECK_DEVICE=cpu bash benchmarks/gpu_check.sh   # DRY RUN on the CPU, tiny sizes: NOT the GPU check
#
# Steps (each logged to $OUT/<step>.log; one ok/FAIL line per step in $OUT/summary.txt):
#  1. tests-device: the tests that take a device, with pytest --device cuda (tests/test_route.py:
#     DICE and LINe layers, SparsifiedClassifier; tests/test_on_device.py: extraction, contributions,
#     the adapter, fit/score through a model, ODIN, RankFeat and every network-level detector, GradNorm);
#  2. pipeline-cpu / pipeline-cuda: precompute.py + ood_eval.py --methods <every feature-level
#     detector of detectors.registry> on a CIFAR-10 subset (--max-samples 1000 for both scripts,
#     --max-ood-samples 1000, dtd and FashionMNIST), then features-agree: per-image scores relative
#     1e-4 or Spearman >= 0.9999, every FPR95/AUROC within 0.05 points (benchmarks/gpu_check_compare.py);
#  3. network-cpu / network-cuda / network-agree: the network-level detectors on 200 images, compared alike;
#  4. torchrun-1 / torchrun-agree: torchrun --nproc_per_node=1 gives the plain process's scores (rel 1e-6);
#  5. precision-bf16 / precision-fp16: the subset runs end to end under autocast (energy, DICE, LINe);
#  6. throughput: images/s, fp32 and bf16, batch 256, DenseNet-101 (32 px) and ResNet-50 (random,
#     224 px), model only and end to end from JPEG files (benchmarks/gpu_throughput.py);
#  7. line-vs-resnet50: the LINe layer's time next to ResNet-50's forward at batches 64, 256, 1024
#     (benchmarks/bench_line_batches.py), scores checked against the per-sample formula.
# The summary ends with the throughput table and the LINe/ResNet-50 table. Output folder:
# $GPU_CHECK_OUT (default output/gpu_check; output/gpu_check_dry for the dry run), printed at the end.
set -uo pipefail
cd "$(dirname "$0")/.."
SHARED="${LINE_SHARED_DIR:-../shared}"
PY="${PYTHON:-python}"
DEV="${GPU_CHECK_DEVICE:-cuda}"

if [ "$DEV" = cuda ]; then
    if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 3)" 2>/dev/null; then
        echo "gpu_check: torch sees no CUDA GPU on this machine; nothing to check (exit 3)" >&2
        exit 3
    fi
    OUT="${GPU_CHECK_OUT:-output/gpu_check}"
    N=1000 NOOD=1000 NNET=200 BATCH=256 CPU_BATCH=256 WORKERS=4 STEP_LIMIT=300 SECOND=cuda
    THROUGHPUT=(--device cuda -b 256 -n 1000 --batches 5 --workers 8)
    DETECTOR_FLAGS=()
    LINE_BENCH=(--device cuda --batch-sizes 64,256,1024 --resnet-repeat 3)
elif [ "$DEV" = cpu ]; then
    OUT="${GPU_CHECK_OUT:-output/gpu_check_dry}"
    N=30 NOOD=20 NNET=10 BATCH=8 CPU_BATCH=4 WORKERS=0 STEP_LIMIT=300 SECOND=cpu-again
    THROUGHPUT=(--device cpu -b 4 -n 4 --batches 1 --workers 0)
    DETECTOR_FLAGS=(--knn-k 3 --nnguide-k 3 --nnguide-fraction 1 --openmax-no-correct-only)  # 30 training images: smaller neighbourhoods; OpenMax on every image
    LINE_BENCH=(--device cpu --batch-sizes 4 --classes 20 --check 4)
else
    echo "gpu_check: GPU_CHECK_DEVICE must be cuda (the check) or cpu (a dry run), not '$DEV'" >&2
    exit 2
fi
rm -rf "$OUT"  # this script's own folder: a rerun never compares an earlier run's files
mkdir -p "$OUT"
SUMMARY="$OUT/summary.txt"
{
    [ "$DEV" = cpu ] && echo "DRY RUN ON THE CPU (GPU_CHECK_DEVICE=cpu), tiny sizes: NOT THE GPU CHECK"
    echo "gpu_check $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
    "$PY" -c "import torch; print('torch', torch.__version__, 'on', torch.cuda.get_device_name(0) if '$DEV' == 'cuda' else 'cpu')"
} | tee "$SUMMARY"
FAILED=0

set -m  # each step and its watchdog in a process group of its own, so that a stuck step is stopped whole
step() {  # step NAME COMMAND...: runs one check (at most STEP_LIMIT s), logs it, records ok/FAIL and its time
    local name="$1"; shift
    local t0=$SECONDS status pid watchdog
    "$@" > "$OUT/$name.log" 2>&1 &
    pid=$!
    (sleep "$STEP_LIMIT"; echo "gpu_check: stopped after ${STEP_LIMIT}s" >> "$OUT/$name.log"; kill -TERM -- -"$pid") \
        > /dev/null 2>&1 &
    watchdog=$!
    if wait "$pid"; then status=ok; else status=FAIL; FAILED=1; fi
    kill -TERM -- -"$watchdog" 2> /dev/null; wait "$watchdog" 2> /dev/null
    printf '%-5s %-20s %4ds  %s\n' "$status" "$name" $((SECONDS - t0)) "$OUT/$name.log" | tee -a "$SUMMARY"
}

methods_of_kind() {  # every method name (variants included) of the registry's detectors of one kind
    "$PY" -c "from detectors.registry import DETECTORS as D; print(','.join(n for c in D if c.kind == '$1' for n in c.variants()))"
}
FEATURE_METHODS=$(methods_of_kind features)
NETWORK_METHODS=$(methods_of_kind network)
echo "feature-level: $FEATURE_METHODS" | tee -a "$SUMMARY"
echo "network-level: $NETWORK_METHODS" | tee -a "$SUMMARY"

CKPT="$SHARED/checkpoints/CIFAR-10/densenet/checkpoint_100.pth.tar"
COMMON=(--in-dataset CIFAR-10 --data-root "$SHARED/data" --checkpoint "$CKPT" --no-progress
        --workers "$WORKERS" --max-samples "$N")
OOD=(--out-datasets dtd FashionMNIST --max-ood-samples "$NOOD")

subset() {  # subset DEVICE NAME METHODS [FLAGS...]: precompute.py + ood_eval.py in $OUT/NAME
    local dev="$1" name="$2" methods="$3" detector_flags=(); shift 3
    [ "$methods" = "$FEATURE_METHODS" ] && detector_flags=("${DETECTOR_FLAGS[@]}")
    "$PY" precompute.py "${COMMON[@]}" --device "$dev" --cache-dir "$OUT/$name/cache" "$@" &&
    "$PY" ood_eval.py "${COMMON[@]}" --device "$dev" --cache-dir "$OUT/$name/cache" \
        --base-dir "$OUT/$name/scores" --methods "$methods" "${OOD[@]}" "${detector_flags[@]}" "$@"
}

network() {  # network DEVICE: the network-level detectors on NNET images per set
    "$PY" ood_eval.py --in-dataset CIFAR-10 --data-root "$SHARED/data" --checkpoint "$CKPT" --no-progress \
        --workers "$WORKERS" --device "$1" --cache-dir "$OUT/network-$1/cache" --base-dir "$OUT/network-$1/scores" \
        --methods "$NETWORK_METHODS" --max-samples "$NNET" --out-datasets dtd FashionMNIST --max-ood-samples "$NNET"
}

torchrun_1() {  # precompute.py + ood_eval.py (energy, DICE, LINe) under torchrun with one process
    local run=("$PY" -m torch.distributed.run --standalone --nproc_per_node=1)
    "${run[@]}" precompute.py "${COMMON[@]}" --device "$DEV" -b "$BATCH" --cache-dir "$OUT/torchrun/cache" &&
    "${run[@]}" ood_eval.py "${COMMON[@]}" --device "$DEV" -b "$BATCH" --cache-dir "$OUT/torchrun/cache" \
        --base-dir "$OUT/torchrun/scores" --methods energy,dice,line "${OOD[@]}"
}

# On the CPU dry run the second "device" is the CPU again, with another batch size.
step tests-device "$PY" -m pytest -q -p no:cacheprovider --device "$DEV" tests/test_route.py tests/test_on_device.py
step pipeline-cpu subset cpu cpu "$FEATURE_METHODS" -b "$CPU_BATCH"
step pipeline-"$SECOND" subset "$DEV" "$SECOND" "$FEATURE_METHODS" -b "$BATCH"
step features-agree "$PY" benchmarks/gpu_check_compare.py "$OUT/cpu/scores" "$OUT/$SECOND/scores"
step network-cpu network cpu
[ "$DEV" = cuda ] && step network-cuda network cuda
[ "$DEV" = cuda ] && step network-agree "$PY" benchmarks/gpu_check_compare.py "$OUT/network-cpu/scores" \
    "$OUT/network-cuda/scores"
step torchrun-1 torchrun_1
step torchrun-agree "$PY" benchmarks/gpu_check_compare.py "$OUT/torchrun/scores" "$OUT/$SECOND/scores" \
    --rtol 1e-6 --no-spearman
step precision-bf16 subset "$DEV" bf16 energy,dice,line --precision bf16 -b "$BATCH"
if [ "$DEV" = cuda ]; then
    step precision-fp16 subset cuda fp16 energy,dice,line --precision fp16 -b "$BATCH"
else
    echo "skip  precision-fp16         (fp16 autocast needs CUDA)" | tee -a "$SUMMARY"
fi
step throughput "$PY" benchmarks/gpu_throughput.py "${THROUGHPUT[@]}" --out "$OUT/throughput.txt"
step line-vs-resnet50 "$PY" benchmarks/bench_line_batches.py "${LINE_BENCH[@]}"

{
    echo
    cat "$OUT/throughput.txt" 2>/dev/null || echo "(no throughput table: see $OUT/throughput.log)"
    echo
    grep -A20 '^LINe layer' "$OUT/line-vs-resnet50.log" 2>/dev/null || echo "(no LINe table: see $OUT/line-vs-resnet50.log)"
    echo
    [ "$FAILED" = 0 ] && echo "all checks passed" || echo "SOME CHECKS FAILED: see the FAIL lines above"
    [ "$DEV" = cpu ] && echo "(dry run on the CPU: NOT THE GPU CHECK)"
} | tee -a "$SUMMARY"
echo "output folder: $OUT; summary: $SUMMARY"
exit $FAILED
