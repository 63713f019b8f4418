"""The examples train the same model with fastxent's loss and with a reference loss: short runs
must give matching loss curves and a test accuracy far above chance (0.1 for ten digits)."""

from __future__ import annotations

import importlib.util
import pathlib
import subprocess
import sys

import numpy as np
import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


def load_example(name):
    """Import examples/<name>.py as a module (examples/ is not a package)."""
    path = EXAMPLES / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"fastxent_example_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_numpy_mlp_digits_matches_plain_numpy_loss():
    pytest.importorskip("sklearn")
    example = load_example("numpy_mlp_digits")
    # 5 epochs of SGD reach ~0.93 test accuracy with this seed; 0.8 leaves a wide margin.
    results = example.main(epochs=5, verbose=False)
    (ours, ours_acc), (ref, ref_acc) = results["fastxent"], results["numpy"]
    assert len(ours) == len(ref) == 5
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-5)
    assert results["max_curve_diff"] < 1e-5
    assert ours[-1] < 0.5 * ours[0]
    assert ours_acc == ref_acc
    assert ours_acc > 0.8


def test_numpy_mlp_digits_float64():
    pytest.importorskip("sklearn")
    results = load_example("numpy_mlp_digits").main(epochs=2, dtype=np.float64, verbose=False)
    assert results["max_curve_diff"] < 1e-10
    assert results["fastxent"][1] == results["numpy"][1]


@pytest.mark.parametrize("grad_in_forward", [False, True])
def test_torch_digits_matches_torch_loss(grad_in_forward):
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    example = load_example("torch_digits")
    results = example.main(epochs=4, grad_in_forward=grad_in_forward, verbose=False)
    (ours, ours_acc), (ref, ref_acc) = results["fastxent"], results["torch"]
    assert len(ours) == len(ref) == 4
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-5)
    assert ours[-1] < 0.5 * ours[0]
    # float32 rounding could in principle flip one borderline test digit: allow one of 359.
    assert abs(ours_acc - ref_acc) <= 1.5 / 359
    assert ours_acc > 0.8


def test_numpy_example_runs_as_a_script():
    pytest.importorskip("sklearn")
    out = subprocess.run([sys.executable, str(EXAMPLES / "numpy_mlp_digits.py"), "2"],
                         capture_output=True, text=True, check=True).stdout
    assert "fastxent: final train loss" in out and "numpy: final train loss" in out
    assert "largest difference between the two loss curves" in out
