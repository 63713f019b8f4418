"""fastxent.torch.vocab_parallel_cross_entropy: 2 and 3 processes on gloo over localhost, each
holding an uneven slice of the vocabulary, against the single-process loss and gradient of the
full logits (torch.nn.functional.cross_entropy, float64)."""

from __future__ import annotations

import os
import pickle
import socket

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

import fastxent.torch as fxt  # noqa: E402

F = torch.nn.functional
N, C = 23, 29
# Shard boundaries per world size: uneven, and in the 3-way split one shard is a single class.
SPLITS = {2: [0, 11, C], 3: [0, 17, 18, C]}
DTYPES = ["float32", "float64"]
# Each case: options, and how labels are made (every shard gets some; some rows ignored).
CASES = [
    dict(),
    dict(reduction="sum"),
    dict(reduction="none"),
    dict(label_smoothing=0.15),
    dict(weight=True, label_smoothing=0.1),
    dict(weight=True, reduction="mean"),
    dict(ignore_index=3, reduction="mean"),
    dict(reduction="none", label_smoothing=0.2, weight=True),
]


def _data(case_index, dtype):
    gen = torch.Generator().manual_seed(100 + case_index)
    logits = (torch.randn(N, C, generator=gen, dtype=torch.float64) * 3).to(dtype)
    labels = torch.randint(0, C, (N,), generator=gen)
    labels[:6] = torch.tensor([0, 10, 11, 17, 18, C - 1])  # a label in every shard of each split
    options = dict(CASES[case_index])
    ignore = options.get("ignore_index", -100)
    labels[6] = ignore
    labels[9] = ignore
    if options.get("weight"):
        options["weight"] = torch.rand(C, generator=gen, dtype=torch.float64) + 0.5
    grad_out = torch.randn(N, generator=gen, dtype=torch.float64)
    return logits, labels, options, grad_out


def _reference(logits, labels, options, grad_out):
    x = logits.detach().double().requires_grad_()
    opts = dict(options)
    loss = F.cross_entropy(x, labels, **opts)
    (loss * grad_out).sum().backward() if loss.dim() else (loss * 1.7).backward()
    return loss.detach(), x.grad


def _worker(rank, port, folder):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=3)
    try:
        # One set of 3 processes runs both splits: the 2-way one on a subgroup (group=).
        pair = dist.new_group([0, 1])  # every rank must take part in creating it
        out = {}
        for world, group in ((2, pair), (3, None)):
            if rank >= world:
                continue
            lo, hi = SPLITS[world][rank], SPLITS[world][rank + 1]
            for dtype_name in DTYPES:
                for i in range(len(CASES)):
                    logits, labels, options, grad_out = _data(i, getattr(torch, dtype_name))
                    local = logits[:, lo:hi].clone().requires_grad_()
                    loss = fxt.vocab_parallel_cross_entropy(local, labels, lo, group, **options)
                    (loss * grad_out).sum().backward() if loss.dim() else (loss * 1.7).backward()
                    out[world, dtype_name, i] = (loss.detach().double().numpy(),
                                                 local.grad.double().numpy())
        with open(os.path.join(folder, f"rank{rank}.pkl"), "wb") as f:
            pickle.dump(out, f)
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def shard_results(tmp_path_factory):
    """{(world, dtype, case): [(loss, local grad) per rank]} from one spawn of 3 processes
    (each writes its results to a file: a pipe could fill up before the parent reads it)."""
    folder = tmp_path_factory.mktemp("vocab_parallel")
    mp.spawn(_worker, args=(_free_port(), str(folder)), nprocs=3)
    merged = {}
    for rank in range(3):
        with open(folder / f"rank{rank}.pkl", "rb") as f:
            for key, value in pickle.load(f).items():
                merged.setdefault(key, []).append(value)
    return merged


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("dtype_name", DTYPES)
@pytest.mark.parametrize("case", range(len(CASES)), ids=[str(c) for c in CASES])
def test_matches_single_process(shard_results, world, dtype_name, case):
    tol = dict(rtol=1e-5, atol=1e-6) if dtype_name == "float32" else dict(rtol=1e-12, atol=1e-13)
    logits, labels, options, grad_out = _data(case, getattr(torch, dtype_name))
    want_loss, want_grad = _reference(logits, labels, options, grad_out)
    per_rank = shard_results[world, dtype_name, case]
    assert len(per_rank) == world
    for loss, _ in per_rank:  # every process gets the whole loss
        np.testing.assert_allclose(loss, want_loss.numpy(), **tol)
    grad = np.concatenate([g for _, g in per_rank], axis=1)
    assert grad.shape == (N, C)
    np.testing.assert_allclose(grad, want_grad.numpy(), **tol)
