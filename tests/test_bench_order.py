"""The order in which `python -m fastxent.bench` samples what it times (fastxent.bench's
run_interleaved): fastxent's own rows and the copy round-robin first, then the items that pause
after each sample (the peers, Numba) with the copy, so that the peers' thread pools, which can
outlive the pause, do not slow fastxent's samples; each row's "x copy" against the copy's samples
of its own stretch."""

from __future__ import annotations

from fastxent import bench


def _logged(key, log, settle=0.0):
    item = bench.Timed(key, key, "fused", lambda: None)
    item.settle = settle  # (the peers' 0.3 s would only slow the test)
    sample = item.sample

    def logged_sample():
        log.append(key)
        sample()
    item.sample = logged_sample
    return item


def test_pausing_items_are_sampled_after_the_others():
    log: list[str] = []
    items = [_logged("copy", log), _logged("cpp", log), _logged("cpp-forward", log),
             _logged("jax", log, settle=1e-4), _logged("torch", log, settle=1e-4)]
    bench.run_interleaved(items, min_time=0.0, repeats=3)
    # The copy in every round of both stretches, so that its median spans them.
    assert log == ["copy", "cpp", "cpp-forward"] * 3 + ["copy", "jax", "torch"] * 3
    assert all(len(item.samples) == 3 for item in items)
    # Each row is set against the copies of its stretch; the copy row keeps fastxent's.
    copy, cpp, forward, jax, torch = items
    assert cpp.copy_samples == forward.copy_samples == copy.samples
    assert jax.copy_samples == torch.copy_samples and len(jax.copy_samples) == 3
    assert jax.copy_samples is not copy.samples


def test_without_pausing_items_the_copy_still_gets_its_samples():
    log: list[str] = []
    items = [_logged("copy", log), _logged("cpp", log)]
    bench.run_interleaved(items, min_time=0.0, repeats=4)
    assert log == ["copy", "cpp"] * 4
