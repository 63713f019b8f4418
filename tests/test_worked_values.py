"""Worked values from textbooks and tutorials, checked on every backend."""

from __future__ import annotations

import numpy as np
import pytest

import fastxent
from _helpers import FLOAT_DTYPES

SOFTMAX_IN = [1, 5, 6, 4, 2, 2.6, 6]
SOFTMAX_OUT = [0.00263032, 0.14361082, 0.39037468, 0.05283147, 0.00714996, 0.01302808, 0.39037468]

# Two classifiers' predicted probabilities for the same three examples, labels [0, 1, 0]:
# mean cross-entropy 0.38 and 1.06 (given to two decimals).
NN1 = [[0.9, 0.1], [0.1, 0.9], [0.4, 0.6]]
NN2 = [[0.6, 0.4], [0.3, 0.7], [0.1, 0.9]]
TABLE_LABELS = [0, 1, 0]


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_softmax_worked_example(backend, dtype):
    x = np.array(SOFTMAX_IN, dtype)
    got = fastxent.softmax(x, backend=backend)
    np.testing.assert_allclose(got, SOFTMAX_OUT, atol=5e-9 if dtype == np.float64 else 2e-7)
    # As a batch of rows, and along axis 0 of a column.
    got2 = fastxent.softmax(np.stack([x, x]), backend=backend)
    np.testing.assert_allclose(got2, [SOFTMAX_OUT] * 2, atol=2e-7)
    got3 = fastxent.softmax(x[:, None], axis=0, backend=backend)
    np.testing.assert_allclose(got3[:, 0], SOFTMAX_OUT, atol=2e-7)
    np.testing.assert_allclose(fastxent.log_softmax(x, backend=backend), np.log(SOFTMAX_OUT), atol=3e-6)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize(("table", "expected"), [(NN1, 0.38), (NN2, 1.06)], ids=["NN1", "NN2"])
def test_probability_tables(backend, dtype, table, expected):
    """logits = log p reproduce p under softmax, so the loss is the mean of -log p[label]."""
    logits = np.log(np.array(table)).astype(dtype)
    labels = np.array(TABLE_LABELS)
    loss = fastxent.cross_entropy(logits, labels, backend=backend)
    assert round(float(loss), 2) == expected
    exact = -np.mean(np.log([row[y] for row, y in zip(table, TABLE_LABELS)]))
    np.testing.assert_allclose(float(loss), exact, rtol=1e-6)
    total = fastxent.cross_entropy(logits, labels, reduction="sum", backend=backend)
    np.testing.assert_allclose(float(total), 3 * exact, rtol=1e-6)
    rows = fastxent.cross_entropy(logits, labels, reduction="none", backend=backend)
    np.testing.assert_allclose(rows, [-np.log(row[y]) for row, y in zip(table, TABLE_LABELS)], rtol=1e-6)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("table", [NN1, NN2], ids=["NN1", "NN2"])
def test_gradient_is_softmax_minus_one_hot(backend, dtype, table):
    logits = np.log(np.array(table)).astype(dtype)
    labels = np.array(TABLE_LABELS)
    loss, grad = fastxent.cross_entropy_with_grad(logits, labels, reduction="sum", backend=backend)
    expected = np.array(table) - np.eye(2)[labels]
    np.testing.assert_allclose(grad, expected, atol=1e-6 if dtype == np.float32 else 1e-12)
    # mean divides by the 3 rows.
    _, grad = fastxent.cross_entropy_with_grad(logits, labels, backend=backend)
    np.testing.assert_allclose(grad, expected / 3, atol=1e-6 if dtype == np.float32 else 1e-12)


def test_gradient_worked_softmax_row(backend):
    x = np.array([SOFTMAX_IN])
    for label in range(7):
        loss, grad = fastxent.cross_entropy_with_grad(x, np.array([label]), backend=backend)
        expected = np.array(SOFTMAX_OUT)
        expected[label] -= 1
        np.testing.assert_allclose(grad[0], expected, atol=5e-9)
        np.testing.assert_allclose(loss, -np.log(SOFTMAX_OUT[label]), rtol=1e-6)


def test_uniform_logits(backend):
    """Equal logits: loss log C, gradient 1/C - one_hot (and the same with label smoothing)."""
    for c in (1, 2, 10, 1000):
        x = np.zeros((2, c))
        labels = np.array([0, c - 1])
        loss, grad = fastxent.cross_entropy_with_grad(x, labels, reduction="sum", backend=backend)
        np.testing.assert_allclose(loss, 2 * np.log(c), rtol=1e-12, atol=1e-15)
        expected = np.full((2, c), 1.0 / c)
        expected[0, 0] -= 1
        expected[1, c - 1] -= 1
        np.testing.assert_allclose(grad, expected, atol=1e-15)
        loss = fastxent.cross_entropy(x, labels, label_smoothing=0.3, backend=backend)
        np.testing.assert_allclose(loss, np.log(c), rtol=1e-12, atol=1e-15)


def test_label_smoothing_worked(backend):
    """eps = 1: the loss is the mean over classes of -log p_j, whatever the label."""
    x = np.log(np.array([[0.2, 0.3, 0.5]]))
    for label in range(3):
        loss = fastxent.cross_entropy(x, np.array([label]), label_smoothing=1.0, backend=backend)
        np.testing.assert_allclose(loss, -np.mean(np.log([0.2, 0.3, 0.5])), rtol=1e-12)
        loss = fastxent.cross_entropy(x, np.array([label]), label_smoothing=0.4, backend=backend)
        want = 0.6 * -np.log([0.2, 0.3, 0.5][label]) + 0.4 * -np.mean(np.log([0.2, 0.3, 0.5]))
        np.testing.assert_allclose(loss, want, rtol=1e-12)


def test_weighted_mean_worked(backend):
    """weight [1, 2]: mean divides by the summed target weights (1 + 2 + 1 = 4)."""
    x = np.log(np.array(NN1))
    w = np.array([1.0, 2.0])
    loss = fastxent.cross_entropy(x, np.array(TABLE_LABELS), weight=w, backend=backend)
    want = (-np.log(0.9) - 2 * np.log(0.9) - np.log(0.4)) / 4
    np.testing.assert_allclose(loss, want, rtol=1e-12)
