"""Train a small PyTorch classifier on scikit-learn's 8x8 digits, twice.

Once with ``fastxent.torch.CrossEntropyLoss`` and once with ``torch.nn.CrossEntropyLoss``. Same
seed, same initialisation, same batch order: the loss curves agree closely (float32 rounding
only) and so do the final test accuracies.

    python examples/torch_digits.py [epochs]
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torch

import fastxent.torch as fxt


def load_digits_split(seed=0, test_fraction=0.2):
    """(x_train, y_train, x_test, y_test) tensors: pixels scaled to [0, 1], a seeded split."""
    from sklearn.datasets import load_digits  # ships with scikit-learn: no download

    digits = load_digits()
    x = torch.tensor(digits.data / 16.0, dtype=torch.float32)
    y = torch.tensor(digits.target, dtype=torch.int64)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_test = int(round(test_fraction * len(y)))
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]


def make_model(hidden):
    return torch.nn.Sequential(
        torch.nn.Linear(64, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 10),
    )


def train(criterion, data, *, epochs, hidden, lr, batch_size, seed):
    """SGD with momentum; returns (per-epoch mean training loss, final test accuracy)."""
    x_train, y_train, x_test, y_test = data
    torch.manual_seed(seed)                                  # same initial weights both runs
    model = make_model(hidden)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    shuffle = torch.Generator().manual_seed(seed)            # same batch order both runs
    curve = []
    for _ in range(epochs):
        order = torch.randperm(len(y_train), generator=shuffle)
        total, batches = 0.0, 0
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            loss = criterion(model(x_train[idx]), y_train[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item()
            batches += 1
        curve.append(total / batches)
    with torch.no_grad():
        accuracy = (model(x_test).argmax(dim=1) == y_test).float().mean().item()
    return np.array(curve), accuracy


def _warm_up(criterion, data, hidden, batch_size):
    """One throwaway step, so the timings compare the losses: the first optimizer created in a
    process imports torch._dynamo (seconds), which would be billed to whichever runs first."""
    model = make_model(hidden)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    criterion(model(data[0][:batch_size]), data[1][:batch_size]).backward()
    optimizer.step()


def main(epochs=20, hidden=64, lr=0.05, batch_size=32, seed=0, grad_in_forward=False,
         threads=1, verbose=True):
    """Train both ways; returns {"fastxent": (curve, accuracy), "torch": (curve, accuracy),
    "max_curve_diff": float}. threads: torch's intra-op threads while training (restored
    after); 1 by default because a 64-wide MLP gains nothing from more and a busy machine
    makes thread hand-offs cost more than the work."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _compare(epochs, hidden, lr, batch_size, seed, grad_in_forward, verbose)
    finally:
        torch.set_num_threads(previous)


def _compare(epochs, hidden, lr, batch_size, seed, grad_in_forward, verbose):
    data = load_digits_split(seed=seed)
    criteria = {
        "fastxent": fxt.CrossEntropyLoss(label_smoothing=0.05, grad_in_forward=grad_in_forward),
        "torch": torch.nn.CrossEntropyLoss(label_smoothing=0.05),
    }
    results = {}
    for name, criterion in criteria.items():
        _warm_up(criterion, data, hidden, batch_size)
        start = time.perf_counter()
        curve, accuracy = train(criterion, data, epochs=epochs, hidden=hidden, lr=lr,
                                batch_size=batch_size, seed=seed)
        results[name] = (curve, accuracy)
        if verbose:
            print(f"{name:>8}: final train loss {curve[-1]:.5f}, test accuracy {accuracy:.4f} "
                  f"({time.perf_counter() - start:.2f} s)")
    results["max_curve_diff"] = float(np.max(np.abs(results["fastxent"][0] - results["torch"][0])))
    if verbose:
        print(f"largest difference between the two loss curves: {results['max_curve_diff']:.2e}")
    return results


if __name__ == "__main__":
    main(epochs=int(sys.argv[1]) if len(sys.argv) > 1 else 20)
