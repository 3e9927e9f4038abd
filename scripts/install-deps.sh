#!/usr/bin/env bash
# Install the system packages longtail needs, only those that are missing (Debian/Ubuntu):
#   mesa-vulkan-drivers + libvulkan1  - a Vulkan driver (llvmpipe runs on the CPU when there is no GPU)
#   dataset-fashion-mnist             - the default training data, under /usr/share/datasets
#   fonts-dejavu-core                 - the font the report's charts are labelled with
# With the argument `mpi`, also what the `mpi` cargo feature (train --distributed mpi) needs:
#   libopenmpi-dev openmpi-bin        - Open MPI's library and mpirun
#   libclang-dev                      - bindgen generates the MPI bindings with it
set -euo pipefail
pkgs=(mesa-vulkan-drivers libvulkan1 dataset-fashion-mnist fonts-dejavu-core)
if [ "${1:-}" = mpi ]; then
  pkgs+=(libopenmpi-dev openmpi-bin libclang-dev)
fi
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "error: cargo not found; install a Rust toolchain (https://rustup.rs), then rerun" >&2
  exit 1
fi
# The test command checks format and lints: add the components a minimal toolchain lacks.
for comp in rustfmt clippy; do
  if ! cargo "${comp/rustfmt/fmt}" --version >/dev/null 2>&1 && command -v rustup >/dev/null 2>&1; then
    rustup component add "$comp"
  fi
done
