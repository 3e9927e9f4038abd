#!/usr/bin/env bash
# The README's main command: install what is missing, build, list adapters, run the main job.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo build --release
./target/release/longtail devices
./target/release/longtail mlp --steps 300
./target/release/longtail bench --kernel matmul --shape 1024x1024x1024
