#!/usr/bin/env bash
# CIFAR demo: precompute, then LINe and DICE (the papers' settings, read from the detector
# registry: ood_eval.py --show-flags) and Energy, for CIFAR-10 and
# (where its data exists) CIFAR-100, on the OOD sets found under the data root plus the
# synthetic gaussian and uniform noise sets. One forward pass per image: the three evaluations
# share the cached features.
#
#   bash demo-cifar.sh --help                            # usage and measured durations; runs nothing
#   bash demo-cifar.sh --quick                           # a subset: a few minutes on 2 CPU cores
#   bash demo-cifar.sh                                   # ./datasets, ./checkpoints (downloaded)
#   DATA_ROOT=../shared/data CHECKPOINT_ROOT=../shared/checkpoints bash demo-cifar.sh
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: bash demo-cifar.sh [--quick] [-h|--help] [FLAGS...]

Runs precompute.py (LINe's class contributions and DICE's mean feature, one pass over the ID
training set), then ood_eval.py three times: LINe and DICE with the papers' settings, and Energy.
ID: CIFAR-10, and CIFAR-100 when its data is under DATA_ROOT. OOD: the papers' sets found under
DATA_ROOT, FashionMNIST (when present), gaussian and uniform noise. Sets up .venv from
requirements.txt on first use (a few minutes).

Options:
  --quick      a subset for both scripts: --max-samples 1000 (1,000 class-balanced training
               images, 1,000 ID test images) and, for ood_eval.py, --max-ood-samples 500
               (at most 500 images per OOD set)
  -h, --help   print this and exit; nothing is set up or run
  FLAGS        every other argument, including any --option that is not the demo's own, is
               passed on to precompute.py and ood_eval.py after the demo's flags (so it wins):
               e.g. --workers 0, --device cuda:0, -b 128, --max-samples 200. Use flags both
               scripts accept. `--` ends the demo's options.

Environment:
  DATA_ROOT        data root (default: datasets)
  CHECKPOINT_ROOT  checkpoints root (default: checkpoints; downloaded there when absent)
  CACHE_DIR        statistics and feature cache (default: cache)
  BASE_DIR         results (default: output/ood_scores)
  EXTRA_FLAGS      flags for both scripts, as FLAGS (placed before FLAGS)

Measured on a 2-core CPU without GPU (the development machine; CIFAR-10 only, no CIFAR-100 data):
  bash demo-cifar.sh --quick   120 s in all from a fresh clone, idle machine (about 80 s of it
                               setting up .venv): precompute 11 s, LINe 24 s, DICE 4 s, Energy 4 s
  bash demo-cifar.sh           1,047 s (precompute 590 s, LINe 444 s, DICE 7 s, Energy 6 s)
EOF
}

QUICK=0
ARGS=()
while [ $# -gt 0 ]; do
    case "$1" in
        -h | --help) usage; exit 0 ;;
        --quick) QUICK=1 ;;
        --) shift; ARGS+=("$@"); break ;;
        *) ARGS+=("$1") ;;  # not the demo's own: passed on to both scripts
    esac
    shift
done

cd "$(dirname "$0")"
source ./setup_env.sh

DATA_ROOT=${DATA_ROOT:-datasets}
CHECKPOINT_ROOT=${CHECKPOINT_ROOT:-checkpoints}
CACHE_DIR=${CACHE_DIR:-cache}
BASE_DIR=${BASE_DIR:-output/ood_scores}
read -r -a EXTRA <<< "${EXTRA_FLAGS:-}"
SUBSET=()     # both scripts
OOD_LIMIT=()  # ood_eval.py only (precompute.py reads no OOD set)
if [ "$QUICK" = 1 ]; then
    SUBSET=(--max-samples 1000)
    OOD_LIMIT=(--max-ood-samples 500)
    echo "--quick: ${SUBSET[*]} for both scripts, ${OOD_LIMIT[*]} for ood_eval.py"
fi

ood_sets() {  # $1: the ID dataset. Its papers' OOD sets present under the data root (the dataset
    # spec's, via ood_eval.py --show-ood-sets, which names each absent one), then Fashion-MNIST and noise
    local paper extra
    paper=$(python ood_eval.py --in-dataset "$1" --data-root "$DATA_ROOT" --show-ood-sets)
    extra=$(python ood_eval.py --in-dataset "$1" --data-root "$DATA_ROOT" --show-ood-sets \
        --out-datasets FashionMNIST gaussian uniform)
    echo "$paper $extra"
}

timed() {  # print a command, run it and print its wall time
    local start=$SECONDS
    echo "+ $*"
    "$@"
    echo "[wall time: $((SECONDS - start)) s]"
}

paper_flags() {  # the detector flags of a method with the paper's settings, from the registry
    python ood_eval.py --in-dataset "$1" --method "$2" --show-flags
}

run_dataset() {
    local ds=$1
    local flags=(--in-dataset "$ds" --data-root "$DATA_ROOT" --cache-dir "$CACHE_DIR")
    local ckpt="$CHECKPOINT_ROOT/$ds/densenet/checkpoint_100.pth.tar"
    if [ -f "$ckpt" ] || [ "$CHECKPOINT_ROOT" != checkpoints ]; then flags+=(--checkpoint "$ckpt"); fi
    local user=("${SUBSET[@]}" "${EXTRA[@]}" "${ARGS[@]}")  # last, so they win over the demo's
    local eval=(python ood_eval.py "${flags[@]}" --base-dir "$BASE_DIR")
    read -r -a sets <<< "$(ood_sets "$ds")"
    read -r -a line_flags <<< "$(paper_flags "$ds" taylor)"
    read -r -a dice_flags <<< "$(paper_flags "$ds" dice)"
    echo "================ ID: $ds   OOD: ${sets[*]} ================"
    echo "---- precompute (contributions, mean feature; caches training features)"
    timed python precompute.py "${flags[@]}" "${user[@]}"
    echo "---- LINe (${line_flags[*]})"
    timed "${eval[@]}" --out-datasets "${sets[@]}" "${line_flags[@]}" --method taylor "${OOD_LIMIT[@]}" "${user[@]}"
    echo "---- DICE (${dice_flags[*]})"
    timed "${eval[@]}" --out-datasets "${sets[@]}" "${dice_flags[@]}" "${OOD_LIMIT[@]}" "${user[@]}"
    echo "---- Energy"
    timed "${eval[@]}" --out-datasets "${sets[@]}" "${OOD_LIMIT[@]}" "${user[@]}"
}

run_dataset CIFAR-10
if [ -d "$DATA_ROOT/CIFAR-100" ] || [ -d "$DATA_ROOT/cifar-100-python" ]; then
    run_dataset CIFAR-100
else
    echo "CIFAR-100: no $DATA_ROOT/CIFAR-100 or $DATA_ROOT/cifar-100-python; skipped"
fi
echo "[demo wall time: $SECONDS s in all]"
