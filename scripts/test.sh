#!/usr/bin/env bash
# The README's test command: install what is missing, show the adapter, check format and lints,
# run every test.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
echo "== adapter"
cargo run -q --release -- devices
echo "== format and lints"
cargo fmt --check
cargo clippy -q --all-targets -- -D warnings
echo "== tests"
cargo test --release
