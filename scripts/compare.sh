#!/usr/bin/env bash
# longtail vs PyTorch CPU on the same machine, measured alternately in one run: the ResNet-32
# batch-128 training step (3x32x32, cross-entropy, SGD with momentum) of
# `longtail bench --model resnet32 --batch 128` and of scripts/pytorch_cpu_step.py, ROUNDS
# times each, interleaved so both see the same load; prints every pair, the per-round ratio
# and the median ratio (longtail images/s / PyTorch images/s).
#
#   scripts/compare.sh [ROUNDS=3]
#   THREADS=2 SAMPLES=3 BATCH=128 LONGTAIL=target/release/longtail scripts/compare.sh
#
# Needs PyTorch (`pip install torch safetensors`; the CPU build is enough). longtail runs with
# the tune cache (`--tune cached`), tuned once before the first round so tuning is not timed,
# and llvmpipe with the binary's default of two compute threads per core (LP_NUM_THREADS).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
THREADS=${THREADS:-$(nproc)}
SAMPLES=${SAMPLES:-3}
BATCH=${BATCH:-128}
LONGTAIL=${LONGTAIL:-target/release/longtail}
if ! python3 -c "import torch, safetensors" 2>/dev/null; then
    echo "error: PyTorch or safetensors is not importable by python3: pip install torch safetensors" >&2
    exit 1
fi
[ -x "$LONGTAIL" ] || cargo build --release --quiet
"$LONGTAIL" --tune cached tune --model resnet32 --batch "$BATCH" > /dev/null
ratios=()
for r in $(seq 1 "$ROUNDS"); do
    lt=$("$LONGTAIL" --tune cached bench --model resnet32 --batch "$BATCH" --samples "$SAMPLES" --json \
        | python3 -c 'import json,sys; print(json.loads(sys.stdin.readlines()[-1])["images_per_s"])')
    pt=$(python3 scripts/pytorch_cpu_step.py --threads "$THREADS" --samples "$SAMPLES" \
        --batch "$BATCH" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["images_per_s"])')
    ratio=$(python3 -c "print(f'{$lt / $pt:.3f}')")
    ratios+=("$ratio")
    printf 'round %d: longtail %.2f images/s, pytorch cpu (%d threads) %.2f images/s, ratio %s\n' \
        "$r" "$lt" "$THREADS" "$pt" "$ratio"
done
python3 - "${ratios[@]}" <<'PY'
import statistics, sys
r = [float(x) for x in sys.argv[1:]]
print(f"median ratio longtail / pytorch-cpu: {statistics.median(r):.3f} (rounds: {', '.join(sys.argv[1:])})")
PY
