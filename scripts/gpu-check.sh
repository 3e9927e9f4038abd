#!/usr/bin/env bash
# The one prepared check for a lent GPU (issue 9): every kernel variant's harness tests on that
# adapter, the adapter's ceilings, the kernel and model benchmarks, and PyTorch CUDA's step when
# torch with CUDA is importable. The device machine has no Rust toolchain, so the binaries are
# built here and carried:
#
#   here:  scripts/gpu-check.sh prepare      # release build, packs .gpucheck/ (~25 MB, ignored)
#                                            # and Debian's Vulkan loader into .gl/ (ignored)
#   there: scripts/gpu-check.sh run          # device tool: carry [".gpucheck", ".gl"]
#
# `run` writes JSON lines and logs into ${OUT:-gpu-check-out}/ and a summary gpu-check.json; it is
# sized for well under 8 minutes on a GPU (each step has its own timeout). Vulkan loaders: see the
# device tool's README (.gl/*.deb are unpacked when present); without libvulkan it says what to
# install and stops.
set -uo pipefail
cd "$(dirname "$0")/.."
mode="${1:-run}"
# The harness tests of every kernel and variant (GEMM and direct convolutions, vec4 and scalar
# batch norm, whitening methods, eigen up to 512, losses, optimizer, long-K launches), and data
# parallel on the adapter opened twice, and the f16 kernels and steps (their library-level tests:
# the CLI ones need the build tree).
# GPU_CHECK_TESTS / GPU_CHECK_SMOKE=1 (a tiny bench selection) are for checking this script itself
# on a slow adapter.
read -r -a tests <<< "${GPU_CHECK_TESTS:-ops_basic ops_conv ops_norm ops_layers losses whiten eigen_large loop_cap optim harness resnet parallel f16}"

case "$mode" in
prepare)
  cargo build --release --all-targets -q || exit 1
  stage=$(mktemp -d)
  cp target/release/longtail "$stage/"
  for t in "${tests[@]}"; do
    f=$(ls -t target/release/deps/"$t"-* 2>/dev/null | grep -v '\.d$' | head -1)
    [ -n "$f" ] || { echo "no test executable for $t" >&2; exit 1; }
    cp "$f" "$stage/$t"
  done
  strip "$stage"/* || exit 1
  # The device tool carries at most 64 MiB: the executables travel xz-compressed.
  rm -rf .gpucheck && mkdir -p .gpucheck
  tar -C "$stage" -cJf .gpucheck/bin.tar.xz . || exit 1
  rm -rf "$stage"
  grep -qx '/.gpucheck/' .git/info/exclude 2>/dev/null || echo '/.gpucheck/' >> .git/info/exclude
  # The device machine may have no Vulkan loader: carry Debian's (amd64, whatever this host is).
  if ! ls .gl/libvulkan1_*.deb >/dev/null 2>&1; then
    mkdir -p .gl /tmp/amd64/partial
    o=(-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64)
    apt-get "${o[@]}" update -qq && (cd .gl && apt-get "${o[@]}" download libvulkan1) ||
      echo "warning: could not download libvulkan1 into .gl/; the device may lack a loader" >&2
  fi
  du -sh .gpucheck .gl
  ;;
run)
  out="${OUT:-gpu-check-out}"
  mkdir -p "$out"
  t0=$(date +%s)
  if [ -d .gl ]; then
    for f in .gl/*.deb; do dpkg -x "$f" /; done
    ldconfig
  fi
  if ! ldconfig -p | grep -q libvulkan; then
    echo "no Vulkan loader (libvulkan.so.1): apt-get install libvulkan1, or carry the .deb files" \
      "as the device tool's README says (.gl/)" | tee "$out/error.txt"
    exit 2
  fi
  nv=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
  [ -e "$nv" ] && export VK_DRIVER_FILES="$nv"
  [ -e .gpucheck/bin.tar.xz ] || { echo "run 'scripts/gpu-check.sh prepare' first" >&2; exit 2; }
  exe=$(mktemp -d)
  tar -C "$exe" -xJf .gpucheck/bin.tar.xz || exit 2
  bin="$exe/longtail"
  $bin devices --json > "$out/devices.json" 2> "$out/devices.err"
  : > "$out/tests.jsonl"
  for t in "${tests[@]}"; do
    s=$(date +%s)
    skip=()
    [ "$t" = parallel ] && skip=(--skip train_on --skip bad_device)
    [ "$t" = f16 ] && skip=(--skip f16_run --skip f16_with)
    timeout 150 "$exe/$t" "${skip[@]}" > "$out/test-$t.log" 2>&1
    rc=$?
    line=$(grep -E '^test result' "$out/test-$t.log" | tail -1)
    printf '{"test":"%s","rc":%d,"seconds":%d,"result":"%s"}\n' "$t" "$rc" "$(( $(date +%s) - s ))" "$line" >> "$out/tests.jsonl"
  done
  if [ "${GPU_CHECK_SMOKE:-0}" = 1 ]; then
    kern=(--kernel add) model=(--model resnet8 --batch 8 --samples 1) r10=(--size 32 --batch 4)
  else
    kern=() model=(--model resnet32 --batch 128 --samples 10) r10=(--size 112 --batch 64)
  fi
  # Variant choice on this adapter (a fresh cache, every candidate timed), then the benches
  # run with those choices.
  export LONGTAIL_TUNE_CACHE="$out/tune-cache"
  if [ "${GPU_CHECK_SMOKE:-0}" = 1 ]; then tune=(--model resnet8 --batch 8); else tune=(--model resnet32 --batch 128); fi
  timeout 120 $bin --tune full tune "${tune[@]}" --precision f32,f16 --json > "$out/tune.json" 2> "$out/tune.err"
  timeout 120 $bin bench --peak --json > "$out/peak.jsonl" 2> "$out/peak.err"
  timeout 180 $bin bench "${kern[@]}" --json --samples 5 > "$out/kernels.jsonl" 2> "$out/kernels.err"
  timeout 60 $bin bench "${model[@]}" --json > "$out/resnet32.json" 2>&1
  timeout 60 $bin bench "${model[@]}" --whiten ns --json > "$out/resnet32-whiten.json" 2>&1
  # Every launch of the step with its GPU time (text): where a GPU's step goes, kernel by kernel.
  timeout 60 $bin bench "${model[@]}" --launches > "$out/resnet32-launches.txt" 2>&1
  # Half precision (f16 activations, f32 master weights, loss scaling).
  timeout 60 $bin bench "${model[@]}" --precision f16 --json > "$out/resnet32-f16.json" 2>&1
  # Data parallel over the one GPU opened twice: what the collectives' host round trips cost.
  timeout 60 $bin bench "${model[@]}" --devices 0,0 --json > "$out/resnet32-2dev.json" 2>&1
  timeout 60 $bin bench "${model[@]}" --devices 0,0 --sync-bn --json > "$out/resnet32-2dev-syncbn.json" 2>&1
  timeout 90 $bin bench --model resnet10 "${r10[@]}" --samples 5 --json > "$out/resnet10.json" 2>&1
  timeout 90 $bin bench --model resnet50 "${r10[@]}" --samples 3 --json > "$out/resnet50.json" 2>&1
  if python3 -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    timeout 120 python3 scripts/pytorch_cpu_step.py --device cuda --samples 20 --json > "$out/pytorch-cuda.json" 2>&1
  else
    echo '{"skipped":"torch with CUDA is not importable"}' > "$out/pytorch-cuda.json"
  fi
  python3 - "$out" "$t0" <<'PY'
import json, os, sys, time
out, t0 = sys.argv[1], int(sys.argv[2])
def load(name, lines=False):
    p = os.path.join(out, name)
    try:
        with open(p) as f:
            txt = f.read()
        if lines:
            return [json.loads(l) for l in txt.splitlines() if l.strip().startswith("{")]
        try:
            return json.loads(txt)
        except ValueError:  # a line of text before the JSON
            return json.loads(txt[min(i for i in (txt.find("{"), txt.find("[")) if i >= 0):])
    except Exception as e:
        return {"error": f"{name}: {e}"}
s = {"seconds": int(time.time()) - t0, "devices": load("devices.json"),
     "tests": load("tests.jsonl", True), "tune": load("tune.json"), "peak": load("peak.jsonl", True),
     "kernels": load("kernels.jsonl", True), "resnet32": load("resnet32.json"),
     "resnet32_whiten": load("resnet32-whiten.json"), "resnet32_f16": load("resnet32-f16.json"),
     "resnet32_2dev": load("resnet32-2dev.json"), "resnet32_2dev_syncbn": load("resnet32-2dev-syncbn.json"), "resnet10": load("resnet10.json"), "resnet50": load("resnet50.json"),
     "pytorch_cuda": load("pytorch-cuda.json")}
with open(os.path.join(out, "gpu-check.json"), "w") as f:
    json.dump(s, f, indent=1)
bad = [t["test"] for t in s["tests"] if isinstance(t, dict) and t.get("rc") != 0]
print(f"gpu-check: {s['seconds']} s; failing test binaries: {bad or 'none'}")
r = s["resnet32"]; p = s["pytorch_cuda"]
if isinstance(r, dict) and "ms" in r:
    line = f"resnet32 b128: {r['ms']:.2f} ms/step"
    if isinstance(p, dict) and "ms" in p:
        line += f"; pytorch cuda {p['ms']:.2f} ms/step -> {p['ms'] / r['ms']:.2f}x of PyTorch's speed"
    print(line)
PY
  ;;
*)
  echo "usage: scripts/gpu-check.sh prepare|run" >&2
  exit 2
  ;;
esac
