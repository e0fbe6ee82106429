#!/usr/bin/env bash
# CIFAR demo: precompute, then LINe and DICE (the papers' settings, read from the detector
# registry: ood_eval.py --show-flags) and Energy, for CIFAR-10 and
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

ood_sets() {  # $1: the ID dataset. Its papers' OOD sets present under the data root (the dataset
    # spec's, via ood_eval.py --show-ood-sets, which names each absent one), then Fashion-MNIST and noise
    local paper extra
    paper=$(python ood_eval.py --in-dataset "$1" --data-root "$DATA_ROOT" --show-ood-sets)
    extra=$(python ood_eval.py --in-dataset "$1" --data-root "$DATA_ROOT" --show-ood-sets \
        --out-datasets FashionMNIST gaussian uniform)
    echo "$paper $extra"
}

timed() {  # run a command and print its wall time
    local start=$SECONDS
    "$@"
    echo "[wall time: $((SECONDS - start)) s]"
}

paper_flags() {  # the detector flags of a method with the paper's settings, from the registry
    python ood_eval.py --in-dataset "$1" --method "$2" --show-flags
}

run_dataset() {
    local ds=$1
    local flags=(--in-dataset "$ds" --data-root "$DATA_ROOT" --cache-dir "$CACHE_DIR" "${EXTRA[@]}")
    local ckpt="$CHECKPOINT_ROOT/$ds/densenet/checkpoint_100.pth.tar"
    if [ -f "$ckpt" ] || [ "$CHECKPOINT_ROOT" != checkpoints ]; then flags+=(--checkpoint "$ckpt"); fi
    read -r -a sets <<< "$(ood_sets "$ds")"
    read -r -a line_flags <<< "$(paper_flags "$ds" taylor)"
    read -r -a dice_flags <<< "$(paper_flags "$ds" dice)"
    echo "================ ID: $ds   OOD: ${sets[*]} ================"
    echo "---- precompute (contributions, mean feature; caches training features)"
    timed python precompute.py "${flags[@]}"
    echo "---- LINe (${line_flags[*]})"
    timed python ood_eval.py "${flags[@]}" --base-dir "$BASE_DIR" --out-datasets "${sets[@]}" \
        "${line_flags[@]}" --method taylor
    echo "---- DICE (${dice_flags[*]})"
    timed python ood_eval.py "${flags[@]}" --base-dir "$BASE_DIR" --out-datasets "${sets[@]}" "${dice_flags[@]}"
    echo "---- Energy"
    timed python ood_eval.py "${flags[@]}" --base-dir "$BASE_DIR" --out-datasets "${sets[@]}"
}

run_dataset CIFAR-10
if [ -d "$DATA_ROOT/CIFAR-100" ] || [ -d "$DATA_ROOT/cifar-100-python" ]; then
    run_dataset CIFAR-100
else
    echo "CIFAR-100: no $DATA_ROOT/CIFAR-100 or $DATA_ROOT/cifar-100-python; skipped"
fi
