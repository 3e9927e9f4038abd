#!/usr/bin/env bash
# The README's test command: install what is missing, show the adapter, check format and lints,
# run every test. Builds with the `mpi` feature (Open MPI), so the mpirun tests run too.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh mpi
echo "== adapter"
cargo run -q --release --features mpi -- devices
echo "== format and lints"
cargo fmt --check
cargo clippy -q --all-targets -- -D warnings
cargo clippy -q --all-targets --features mpi -- -D warnings
echo "== tests"
cargo test --release --features mpi
