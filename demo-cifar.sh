#!/usr/bin/env bash
# CIFAR demo: precompute, then LINe (paper settings), DICE (p = 90) and Energy, for CIFAR-10 and
# (where its data exists) CIFAR-100, on the OOD sets found under the data root plus the
# synthetic gaussian and uniform noise sets. One forward pass per image: the three evaluations
# share the cached features.
#
#   bash demo-cifar.sh                                   # ./datasets, ./checkpoints (downloaded)
#   DATA_ROOT=../shared/data CHECKPOINT_ROOT=../shared/checkpoints bash demo-cifar.sh
#
# Environment: DATA_ROOT (default datasets), CHECKPOINT_ROOT (default checkpoints),
# CACHE_DIR (default cache), BASE_DIR (default output/ood_scores), EXTRA_FLAGS (passed to both scripts).
set -euo pipefail
cd "$(dirname "$0")"
source ./setup_env.sh

DATA_ROOT=${DATA_ROOT:-datasets}
CHECKPOINT_ROOT=${CHECKPOINT_ROOT:-checkpoints}
CACHE_DIR=${CACHE_DIR:-cache}
BASE_DIR=${BASE_DIR:-output/ood_scores}
read -r -a EXTRA <<< "${EXTRA_FLAGS:-}"

ood_sets() {  # named OOD sets present under the data root, then the noise sets
    local sets=()
    for name in SVHN LSUN LSUN_resize iSUN dtd places365 FashionMNIST; do
        case $name in
            SVHN) path=ood_datasets/svhn/svhn_test_subset.npz ;;
            dtd) path=ood_datasets/dtd/images ;;
            FashionMNIST) path=ood_datasets/FashionMNIST/raw ;;
            *) path=ood_datasets/$name ;;
        esac
        if [ -e "$DATA_ROOT/$path" ]; then sets+=("$name"); else echo "  (no $DATA_ROOT/$path: skipping $name)" >&2; fi
    done
    echo "${sets[@]}" gaussian uniform
}

timed() {  # run a command and print its wall time
    local start=$SECONDS
    "$@"
    echo "[wall time: $((SECONDS - start)) s]"
}

run_dataset() {
    local ds=$1 p_w=$2 p_a=$3
    local flags=(--in-dataset "$ds" --data-root "$DATA_ROOT" --cache-dir "$CACHE_DIR" "${EXTRA[@]}")
    local ckpt="$CHECKPOINT_ROOT/$ds/densenet/checkpoint_100.pth.tar"
    if [ -f "$ckpt" ] || [ "$CHECKPOINT_ROOT" != checkpoints ]; then flags+=(--checkpoint "$ckpt"); fi
    read -r -a sets <<< "$(ood_sets)"
    echo "================ ID: $ds   OOD: ${sets[*]} ================"
    echo "---- precompute (contributions, mean feature; caches training features)"
    timed python precompute.py "${flags[@]}"
    echo "---- LINe (p_w = $p_w, p_a = $p_a, tau = 1.0)"
    timed python ood_eval.py "${flags[@]}" --base-dir "$BASE_DIR" --out-datasets "${sets[@]}" \
        --p-w "$p_w" --p-a "$p_a" --method taylor --clip_threshold 1.0
    echo "---- DICE (p = 90)"
    timed python ood_eval.py "${flags[@]}" --base-dir "$BASE_DIR" --out-datasets "${sets[@]}" --p 90
    echo "---- Energy"
    timed python ood_eval.py "${flags[@]}" --base-dir "$BASE_DIR" --out-datasets "${sets[@]}"
}

run_dataset CIFAR-10 90 90
if [ -d "$DATA_ROOT/CIFAR-100" ] || [ -d "$DATA_ROOT/cifar-100-python" ]; then
    run_dataset CIFAR-100 90 10
else
    echo "CIFAR-100: no $DATA_ROOT/CIFAR-100 or $DATA_ROOT/cifar-100-python; skipped"
fi
