#!/usr/bin/env bash
# Effect of --precision bf16 on the CIFAR-10 benchmark (full training set for precompute, full
# test set, dtd, FashionMNIST, gaussian, uniform): LINe, DICE and Energy averages, fp32 vs bf16.
# fp32 results come from the usual cache; bf16 features are cached separately (own cache key).
#   DATA_ROOT=../shared/data CHECKPOINT_ROOT=../shared/checkpoints bash benchmarks/precision_results.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source ./setup_env.sh
DATA_ROOT=${DATA_ROOT:-../shared/data}
CHECKPOINT_ROOT=${CHECKPOINT_ROOT:-../shared/checkpoints}
CACHE_DIR=${CACHE_DIR:-cache}
OUT=${OUT:-output/precision}
SETS=(dtd FashionMNIST gaussian uniform)
for precision in fp32 bf16; do
    flags=(--in-dataset CIFAR-10 --data-root "$DATA_ROOT" --checkpoint "$CHECKPOINT_ROOT/CIFAR-10/densenet/checkpoint_100.pth.tar"
           --precision "$precision" --no-progress)
    cache="$CACHE_DIR"; [ "$precision" = fp32 ] || cache="$CACHE_DIR/$precision"
    python precompute.py "${flags[@]}" --cache-dir "$cache" > /dev/null
    for method in "--method taylor --p-w 90 --p-a 90 --clip_threshold 1.0" "--p 90" ""; do
        # shellcheck disable=SC2086
        python ood_eval.py "${flags[@]}" --cache-dir "$cache" --out-datasets "${SETS[@]}" $method \
            --base-dir "$OUT/$precision" > /dev/null
    done
done
python - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
print(f"{'method':<8}{'fp32 FPR95':>11}{'bf16 FPR95':>11}{'diff':>7}{'fp32 AUROC':>12}{'bf16 AUROC':>11}{'diff':>7}  (%)")
for method in ("line", "dice", "energy"):
    r = {p: json.loads((out / p / "CIFAR-10" / method / "densenet" / "results.json").read_text())["average"]
         for p in ("fp32", "bf16")}
    f32, f16 = 100 * r["fp32"]["FPR95"], 100 * r["bf16"]["FPR95"]
    a32, a16 = 100 * r["fp32"]["AUROC"], 100 * r["bf16"]["AUROC"]
    print(f"{method:<8}{f32:>11.2f}{f16:>11.2f}{f16 - f32:>7.2f}{a32:>12.2f}{a16:>11.2f}{a16 - a32:>7.2f}")
PY
