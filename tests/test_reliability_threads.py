"""Many Python threads calling at once (the GIL is released in the kernels, the pool is
shared), and fork() after the pool has started: every answer stays right."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import fastxent
from _helpers import num_threads

pytestmark = pytest.mark.skipif("cpp" not in fastxent.info()["backends"], reason="extension not built")


def make_jobs(n):
    rng = np.random.default_rng(7)
    jobs = []
    for k in range(n):
        # Mixed shapes: short rows (small-class path), long rows (split across the pool), many rows.
        rows, classes = [(300, 10), (2, 40000), (64, 2000), (1, 5)][k % 4]
        x = rng.standard_normal((rows, classes)).astype([np.float32, np.float64][k % 2])
        y = rng.integers(0, classes, rows)
        jobs.append((x, y))
    return jobs


def compute(x, y):
    loss, grad = fastxent.cross_entropy_with_grad(x, y, reduction="none", label_smoothing=0.05)
    return loss, grad, fastxent.logsumexp(x)


@pytest.mark.parametrize("pool", [1, 2, 4])
def test_many_python_threads_at_once(pool):
    jobs = make_jobs(16)
    with num_threads(pool):
        expected = [compute(x, y) for x, y in jobs]
        results = [None] * len(jobs)
        errors = []
        start = threading.Barrier(len(jobs))

        def worker(k):
            try:
                start.wait()
                for _ in range(5):
                    results[k] = compute(*jobs[k])
            except Exception as exc:  # noqa: BLE001 - reported by the main thread
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(len(jobs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors, errors
    for want, got in zip(expected, results):
        for a, b in zip(want, got):
            # Same partition of the work, whoever runs it: the same bits.
            np.testing.assert_array_equal(a, b)


FORK_SCRIPT = """
import os, sys, warnings
import numpy as np, fastxent
fastxent.set_num_threads(int(sys.argv[1]))
rng = np.random.default_rng(3)
x = rng.standard_normal((2, 40000)).astype(np.float32)  # long rows: the pool's workers run
y = np.array([5, 39999])
def compute():
    loss, grad = fastxent.cross_entropy_with_grad(x, y, reduction="none", label_smoothing=0.05)
    return [loss, grad, fastxent.logsumexp(x)]
want = compute()
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: forking with threads
    pid = os.fork()
if pid == 0:  # the child: the pool's threads did not survive the fork
    status = 1
    try:
        got = compute()
        fastxent.set_num_threads(2)
        got += compute()
        status = 0 if all(np.allclose(a, b, rtol=1e-6, atol=1e-7) for a, b in zip(want * 2, got)) else 2
    finally:
        os._exit(status)
_, status = os.waitpid(pid, 0)
assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, f"child status {status}"
assert all(np.array_equal(a, b) for a, b in zip(want, compute())), "the parent's pool broke"
print("ok")
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
@pytest.mark.parametrize("pool", [1, 2])
def test_fork_after_use(pool):
    # In a fresh interpreter: other libraries loaded by the suite (JAX) object to fork().
    done = subprocess.run([sys.executable, "-c", FORK_SCRIPT, str(pool)], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


@pytest.mark.parametrize("pool", [2, 3])
def test_calls_between_pauses_of_every_length(pool):
    """Calls after pauses shorter and longer than the workers' spin (100 us): a worker may wake
    after the caller has done every task of a call, or join the next call. The same bits each
    time, and no call left waiting."""
    rng = np.random.default_rng(11)
    x = rng.standard_normal((4096, 16)).astype(np.float32)  # two pool tasks' worth and more
    y = rng.integers(0, 16, 4096)
    with num_threads(pool):
        want_loss, want_grad = fastxent.cross_entropy_with_grad(x, y)
        out = np.empty_like(x)
        for pause in rng.choice([0.0, 2e-5, 9e-5, 1.2e-4, 4e-4, 2e-3], size=120):
            if pause:
                time.sleep(pause)
            loss, _ = fastxent.cross_entropy_with_grad(x, y, out=out)
            assert loss == want_loss
            np.testing.assert_array_equal(out, want_grad)
