#!/usr/bin/env bash
# Compiles every C++ file for Windows x86_64, and the non-x86 ones for Windows ARM64, with the
# MSVC branches of cpp/portable.h switched on (FASTXENT_CHECK_MSVC_PATHS), using the clang
# inside the `ziglang` package (`pip install ziglang`), and checks that no GCC builtin is used
# outside portable.h's and dispatch.cpp's GCC branches. No MSVC here: this shows the MSVC paths
# have no POSIX-only or GCC-only call left, not that MSVC itself accepts the code (the wheels
# workflow's Windows job does that).
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
# GCC builtins are allowed only in portable.h (its GCC branch) and dispatch.cpp (its CPU probe
# for GCC/Clang, after the MSVC one).
if grep -n "__builtin_" cpp/*.h cpp/*.cpp cpp/simd/*.h src/*.cpp | grep -v "^cpp/portable.h:" |
   grep -v "^cpp/dispatch.cpp:"; then
  echo "FAIL: GCC builtins outside portable.h"
  exit 1
fi
common=(-target x86_64-windows-gnu -std=c++17 -O1 -Icpp -DFASTXENT_CHECK_MSVC_PATHS
        -DFASTXENT_HAVE_AVX2 -DFASTXENT_HAVE_AVX512)
status=0
for f in cpp/*.cpp; do
  flags=()
  case "$f" in
    *avx2*) flags=(-mavx2 -mfma -mf16c) ;;
    *avx512*) flags=(-mavx512f -mavx512dq -mavx512vl -mavx512bw -mfma -mavx2 -mf16c) ;;
    *neon*) continue ;;  # aarch64: below
    *dispatch*) flags=(-mxsave) ;;  # _xgetbv (MSVC needs no flag for it)
  esac
  if python -m ziglang c++ "${common[@]}" "${flags[@]}" -c "$f" -o "$out/$(basename "$f").o"; then
    echo "ok   $f"
  else
    echo "FAIL $f"
    status=1
  fi
done
# Windows on ARM64: the scalar and NEON files with the MSVC branches (FX_PREFETCH's __prefetch).
# MinGW's clang does not define _M_ARM64 (MSVC's macro), so it is defined here. MinGW's headers
# declare __prefetch without <intrin.h>, so a missing include would not show here.
arm=(-target aarch64-windows-gnu -std=c++17 -O1 -Icpp -DFASTXENT_CHECK_MSVC_PATHS -D_M_ARM64
     -DFASTXENT_HAVE_NEON)
for f in cpp/*.cpp; do
  case "$f" in *avx*) continue ;; esac
  if python -m ziglang c++ "${arm[@]}" -c "$f" -o "$out/arm64-$(basename "$f").o"; then
    echo "ok   $f (arm64)"
  else
    echo "FAIL $f (arm64)"
    status=1
  fi
done
exit $status
