"""The package and examples type-check with mypy (configured in pyproject.toml), and the public
annotations mean something: a user's ordinary calls pass and wrong ones are flagged."""

from __future__ import annotations

import pathlib
import textwrap

import pytest

mypy_api = pytest.importorskip("mypy.api", reason="mypy is in the test extra")

ROOT = pathlib.Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not (ROOT / "pyproject.toml").exists(),
                                reason="needs the source tree (mypy checks python/ and examples/)")


def run_mypy(*args):
    stdout, stderr, status = mypy_api.run(["--config-file", str(ROOT / "pyproject.toml"),
                                           "--no-incremental", *args])
    return stdout + stderr, status


def test_package_and_examples_are_clean():
    report, status = run_mypy(str(ROOT / "python" / "fastxent"), str(ROOT / "examples"))
    assert status == 0, report


def test_user_code_good_and_bad(tmp_path):
    good = tmp_path / "good.py"
    good.write_text(textwrap.dedent("""
        import numpy as np
        import fastxent

        x = np.zeros((4, 10), np.float32)
        y = np.zeros(4, np.int64)
        loss, grad = fastxent.cross_entropy_with_grad(x, y, label_smoothing=0.1)
        total = fastxent.cross_entropy(x, y, reduction="sum", backend="numba")
        probs = fastxent.softmax(x, axis=-1)
        fastxent.set_num_threads(2)
        bce = fastxent.binary_cross_entropy_with_logits(x, np.ones_like(x), reduction="none")
        reveal_type(probs)
    """))
    report, status = run_mypy(str(good))
    assert status == 0, report
    assert "ndarray" in report  # reveal_type: softmax returns an array type, not Any

    bad = tmp_path / "bad.py"
    bad.write_text(textwrap.dedent("""
        import numpy as np
        import fastxent

        x = np.zeros((4, 10), np.float32)
        y = np.zeros(4, np.int64)
        fastxent.cross_entropy(x, y, reduction="average")
        fastxent.cross_entropy_with_grad(x, y, backend="cuda")
        fastxent.set_num_threads("two")
        fastxent.softmax(x, axis=None)
    """))
    report, status = run_mypy(str(bad))
    assert status == 1, report
    for line in (7, 8, 9, 10):
        assert f"bad.py:{line}: error" in report, report
