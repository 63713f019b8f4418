#!/usr/bin/env bash
# Builds fastxent with AddressSanitizer + UndefinedBehaviorSanitizer (-DFASTXENT_SANITIZE=ON)
# and runs the C++ kernel test and the Python test suite against that build. Any sanitizer
# report aborts the run (UB is made fatal in CMakeLists.txt), so exit status 0 means clean.
# Needs GCC or Clang with libasan/libubsan. Usage: tools/run_sanitized_tests.sh [pytest args]
# The Python suite runs in its own venv (no system site-packages: an editable install there
# would shadow this build) with the light test dependencies; torch/jax/numba tests skip.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
build="$repo/build/sanitize"
venv="$build/venv"
python=${PYTHON:-python3}
cxx=${CXX:-g++}
mkdir -p "$build"
# Both cores for the builds (a Makefile build is serial otherwise).
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}

# 1. The extension module and the C++ kernel test, sanitized, from one build tree (the kernels
# are compiled once: under the sanitizers that is most of this script's time), in a fresh venv.
if [[ ! -x "$venv/bin/python" ]]; then
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  "$venv/bin/python" -m pip install --quiet "scikit-build-core>=0.10" "nanobind>=2.4" numpy pytest \
    hypothesis ml_dtypes
fi
CXX="$cxx" "$venv/bin/python" -m pip install --quiet --no-build-isolation --force-reinstall --no-deps \
  -C cmake.build-type=RelWithDebInfo -C cmake.define.FASTXENT_SANITIZE=ON \
  -C cmake.define.FASTXENT_TESTS=ON -C build-dir="$build/wheel" "$repo"

# 2. The C++ kernel and thread pool tests, leak checking on.
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 "$build/wheel/kernel_test"
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 "$build/wheel/thread_pool_test"

# 3. The Python suite against the sanitized extension.
# The sanitizer runtimes must be loaded before the interpreter (it is not instrumented).
preload="$("$cxx" -print-file-name=libasan.so):$("$cxx" -print-file-name=libubsan.so)"
# CPython's own allocations live until exit by design: leak checking stays off for Python.
# Run outside the source tree so the installed (sanitized) package is the one imported.
cd "$build"
FASTXENT_SANITIZED=1 LD_PRELOAD="$preload" ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 \
  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  "$venv/bin/python" -m pytest "$repo/tests" -q -p no:cacheprovider "$@"
