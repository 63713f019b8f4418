"""fastxent.torch's eager fast path (_torch_fast): which calls take it, and that they get the
general path's answers (test_torch_module runs every option through it against PyTorch)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import fastxent.torch as fxt  # noqa: E402
from fastxent import _torch_fast  # noqa: E402


@pytest.fixture
def general_path_calls(monkeypatch):
    """A list that grows by one per call that reaches the general path's argument checks."""
    calls = []
    original = fxt._check_args

    def spy(*args):
        calls.append(args)
        return original(*args)

    monkeypatch.setattr(fxt, "_check_args", spy)
    return calls


def case(n=9, c=5, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, generator=g, dtype=dtype) * 3
    y = torch.randint(0, c, (n,), generator=g)
    y[::4] = -100  # ignored rows
    return x, y


def loss_and_grad(x, y, grad_output=None, view=lambda t: t, **opts):
    leaf = x.clone().requires_grad_(True)
    loss = fxt.cross_entropy(view(leaf), y, **opts)
    (loss if grad_output is None else loss * grad_output).sum().backward()
    return loss.detach(), leaf.grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_plain_calls_take_it_and_match_the_fused_general_path(dtype, reduction,
                                                              general_path_calls):
    x, y = case(dtype=dtype)
    grad_output = torch.rand(len(y), dtype=dtype) + 0.5 if reduction == "none" else 2.0
    fast = loss_and_grad(x, y, grad_output, reduction=reduction)
    with torch.no_grad():
        fast_no_grad = fxt.cross_entropy(x, y, reduction=reduction)
    assert general_path_calls == []
    general = loss_and_grad(x, y, grad_output, reduction=reduction, grad_in_forward=True)
    assert len(general_path_calls) == 1
    for got, want in zip(fast, general):
        assert got.dtype == want.dtype and got.shape == want.shape
        assert torch.equal(got, want)  # the same fused kernel, bit for bit
    torch.testing.assert_close(fast_no_grad, fast[0], rtol=1e-6, atol=0)
    assert fast_no_grad.dtype == dtype and not fast_no_grad.requires_grad


def test_large_inputs_with_a_gradient_keep_the_lse_default(general_path_calls, monkeypatch):
    """Past FUSED_UP_TO logits a gradient held from forward to backward is no longer small:
    the call keeps the documented default (lse saved, gradient made in backward)."""
    monkeypatch.setattr(_torch_fast, "FUSED_UP_TO", 40)
    x, y = case(9, 5)  # 45 logits
    loss, grad = loss_and_grad(x, y)
    assert len(general_path_calls) == 1
    with torch.no_grad():
        fxt.cross_entropy(x, y)  # no gradient: nothing held, fast either way
    assert len(general_path_calls) == 1
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(x, y))


@pytest.mark.parametrize("refused", ["int32 target", "class axis strided", "3-D input",
                                     "unbatched", "float16", "weight", "smoothing"])
def test_other_calls_take_the_general_path(refused, general_path_calls):
    x, y = case()
    opts = {}
    view = lambda t: t  # noqa: E731
    if refused == "int32 target":
        y = y.to(torch.int32)
    elif refused == "class axis strided":
        x = torch.cat([x, x], dim=1)
        view = lambda t: t[:, ::2]  # noqa: E731
    elif refused == "3-D input":
        x, y = x.reshape(3, 3, 5).transpose(1, 2), y.reshape(3, 3)
    elif refused == "unbatched":
        x, y = x[1], y[1]
    elif refused == "float16":
        x = x.half()
    elif refused == "weight":
        opts["weight"] = torch.rand(5)
    else:
        opts["label_smoothing"] = 0.1
    loss, grad = loss_and_grad(x, y, view=view, **opts)
    assert len(general_path_calls) == 1
    leaf = x.float().clone().requires_grad_(True)
    want = torch.nn.functional.cross_entropy(view(leaf), y.long(), **opts)
    want.backward()
    torch.testing.assert_close(loss.float(), want.detach(), rtol=2e-3, atol=1e-5)
    torch.testing.assert_close(grad.float(), leaf.grad, rtol=2e-3, atol=1e-5)


def test_it_follows_the_backend(general_path_calls, monkeypatch):
    from fastxent import _backends

    monkeypatch.setenv("FASTXENT_BACKEND", "numpy")
    _backends.reset()
    try:
        x, y = case()
        loss, _ = loss_and_grad(x, y)
    finally:
        monkeypatch.delenv("FASTXENT_BACKEND")
        _backends.reset()
    assert len(general_path_calls) == 1
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(x, y))
