#!/usr/bin/env bash
# The README's test command: install what is missing, show the adapter, check format and lints,
# run every test. Builds with the `mpi` feature (Open MPI), so the mpirun tests run too.
# Tests run under cargo-nextest when it is installed: one process per test, as many at once as
# the machine has cores. With a cold Mesa shader cache (a fresh CI machine) Lavapipe's LLVM
# generates each pipeline's code at its first dispatch, on the device's one queue thread, so a
# `cargo test` binary (one device shared by its tests) compiles on one core; separate processes
# compile on all of them. Measured on 2 cores, cold: the suite 12 min 10 s -> 9 min 27 s,
# tests/ops_conv.rs 437 s -> 223 s (benches/NOTES.md, session 16). Set LONGTAIL_CARGO_TEST=1
# to run `cargo test` anyway.
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
if [ -z "${LONGTAIL_CARGO_TEST:-}" ] && cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --release --features mpi --no-fail-fast
else
  [ -n "${LONGTAIL_CARGO_TEST:-}" ] ||
    echo "note: cargo-nextest not found, running cargo test (slower with a cold shader" \
      "cache; cargo install --locked cargo-nextest)"
  cargo test --release --features mpi --no-fail-fast
fi
