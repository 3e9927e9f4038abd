#!/usr/bin/env bash
# The README's main command: install what is missing, build, list adapters, then train the
# `quick` preset (channel whitening + LDAM-DRW + BET on Fashion-MNIST-LT) and print its accuracy
# table. About 10 minutes on a 2-core CPU with llvmpipe; much less on a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo build --release
./target/release/longtail devices
./target/release/longtail train --preset quick --out "runs/quick-$(date +%Y%m%d-%H%M%S)"
