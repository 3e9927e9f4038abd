#!/usr/bin/env bash
# Every benchmark the issue notes quote, in one run (also the script to take to a lent GPU):
# kernels at their default shapes (median of 5), whole ResNet-32 / ResNet-10 training steps, and a
# few steps of the fmnist-lt recipe. Writes JSON lines and logs under ${OUT:-bench-out}/.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-bench-out}"
mkdir -p "$out"
cargo build --release -q
bin=./target/release/longtail
$bin devices | tee "$out/devices.txt"
$bin bench --samples 5 | tee "$out/kernels.txt"
$bin bench --model resnet32 --batch 128 --samples 5 | tee "$out/resnet32.txt"
$bin bench --model resnet32 --batch 128 --samples 1 --whiten ns | tee "$out/resnet32-whiten.txt"
$bin bench --model resnet10 --batch 64 --size 112 --samples 1 | tee "$out/resnet10.txt"
# fmnist-lt: time a few steps (an epoch is floor(12406 / 128) = 96 of them); tiny eval. The run
# directory is this script's own scratch: a previous one is replaced.
rm -rf "$out/fmnist-lt-steps"
$bin train --preset fmnist-lt --max-steps 3 --test-per-class 5 --quiet --out "$out/fmnist-lt-steps" | tee "$out/fmnist-lt-steps.txt"
