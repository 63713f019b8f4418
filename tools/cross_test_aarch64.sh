#!/usr/bin/env bash
# Cross-compiles cpp/tests/kernel_test for aarch64 and runs it under qemu-user, so the NEON
# kernels are compared with the scalar ones on an x86_64 machine.
# Needs (Debian/Ubuntu): apt-get install g++-aarch64-linux-gnu qemu-user cmake
# Usage: tools/cross_test_aarch64.sh [build-dir]   (default: build/aarch64-kernel-test)
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build/aarch64-kernel-test}

cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_SYSTEM_NAME=Linux -DCMAKE_SYSTEM_PROCESSOR=aarch64 \
  -DCMAKE_CXX_COMPILER=aarch64-linux-gnu-g++ \
  -DFASTXENT_PYTHON=OFF -DFASTXENT_TESTS=ON
cmake --build "$build" --target kernel_test

# qemu finds the aarch64 loader and libstdc++ of the cross toolchain here.
QEMU_LD_PREFIX=/usr/aarch64-linux-gnu qemu-aarch64 "$build/kernel_test"
