#!/usr/bin/env bash
# A/B of two longtail binaries on one model step, measured alternately (ABBA) so both see the
# same load (this machine's load moves a step's time by up to 2x within minutes): ROUNDS rounds of
# `bench --model ... --json` per binary, then each binary's median images/s and the median of
# the per-round ratios B / A.
#
#   scripts/ab.sh OLD_BINARY NEW_BINARY [ROUNDS=5] [bench arguments...]
#   scripts/ab.sh /tmp/lt_old target/release/longtail 7 --model resnet8 --batch 64 --size 28 --channels 1 --whiten ns
#
# Both run with `--tune off` (the built-in heuristic), so a tune cache cannot differ between them.
set -euo pipefail
A=${1:?old binary}; B=${2:?new binary}; ROUNDS=${3:-5}
shift 3 || shift $#
ARGS=("$@")
[ ${#ARGS[@]} -gt 0 ] || ARGS=(--model resnet32 --batch 128)
run() { "$1" --tune off bench "${ARGS[@]}" --samples 3 --no-peak --json \
    | python3 -c 'import json,sys; print(json.loads(sys.stdin.readlines()[-1])["images_per_s"])'; }
a=(); b=()
for r in $(seq 1 "$ROUNDS"); do
    # ABBA order: which binary runs first alternates, so a drift in the machine's load
    # within a round does not favour one of them.
    if (( r % 2 )); then x=$(run "$A"); y=$(run "$B"); else y=$(run "$B"); x=$(run "$A"); fi
    a+=("$x"); b+=("$y")
    printf 'round %d: A %.2f images/s, B %.2f images/s, B/A %.3f\n' "$r" "$x" "$y" "$(python3 -c "print($y / $x)")"
done
python3 - "${a[*]}" "${b[*]}" <<'PY'
import statistics, sys
a = [float(v) for v in sys.argv[1].split()]
b = [float(v) for v in sys.argv[2].split()]
r = [y / x for x, y in zip(a, b)]
print(f"median images/s: A {statistics.median(a):.2f}, B {statistics.median(b):.2f}; "
      f"median B/A {statistics.median(r):.3f} (rounds: {', '.join(f'{v:.3f}' for v in r)})")
PY
