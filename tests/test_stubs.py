"""The committed stub of the extension module (fastxent/_core.pyi) matches what nanobind's
stubgen writes for the module built now, so type checkers see the real signatures."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import fastxent

REGENERATE = "python tools/gen_stubs.py"
STUB = Path(fastxent.__file__).parent / "_core.pyi"


def test_package_is_marked_typed():
    assert (STUB.parent / "py.typed").is_file()


def test_extension_stub_is_current(tmp_path):
    nanobind = pytest.importorskip("nanobind")
    header, _, committed = STUB.read_text(encoding="utf-8").partition("\n")
    made_with = re.search(r"with nanobind (\S+);", header)
    assert made_with, f"{STUB} lacks its generator header; run `{REGENERATE}`"
    if made_with.group(1) != nanobind.__version__:
        # stubgen's formatting changes between nanobind versions; compare like with like.
        pytest.skip(f"stub made with nanobind {made_with.group(1)}, {nanobind.__version__} installed")
    out = tmp_path / "_core.pyi"
    subprocess.run([sys.executable, "-m", "nanobind.stubgen", "-q", "-m", "fastxent._core",
                    "-o", str(out)], check=True)
    assert out.read_text(encoding="utf-8") == committed, (
        f"{STUB} is stale (the bindings changed): run `{REGENERATE}` after rebuilding")
