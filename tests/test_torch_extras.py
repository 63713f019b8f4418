"""fastxent.torch with probability targets, z-loss, softcap and accuracy: every run path (eager
lse / grad / in-place, custom ops) against the same loss written in plain PyTorch autograd."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import fastxent.torch as fxt  # noqa: E402
from fastxent.torch import _cross_entropy  # noqa: E402

F = torch.nn.functional
RUNS = [("eager", "lse"), ("eager", "grad"), ("eager", "inplace"), ("ops", "lse"), ("ops", "grad")]
RUN_IDS = [f"{p}-{m}" for p, m in RUNS]
JIT_DEPRECATION = "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"


def torch_loss(x, y, weight=None, *, reduction="mean", label_smoothing=0.0, z_loss=0.0,
               softcap=None, ignore_index=-100):
    """The definition in plain PyTorch: cap, cross-entropy, z-loss over the rows not ignored."""
    z = x if softcap is None else softcap * torch.tanh(x / softcap)
    ce = F.cross_entropy(z, y, weight, ignore_index=ignore_index, reduction=reduction,
                         label_smoothing=label_smoothing)
    if not z_loss:
        return ce
    lse = torch.logsumexp(z, dim=1)
    kept = torch.ones_like(lse, dtype=torch.bool) if y.is_floating_point() else y != ignore_index
    rows = torch.where(kept, z_loss * lse**2, torch.zeros_like(lse))
    if reduction == "none":
        return ce + rows
    return ce + (rows.sum() / kept.sum() if reduction == "mean" else rows.sum())


def case(seed, n=10, c=6, soft=False, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, generator=g, dtype=dtype) * 3
    if soft:
        y = torch.rand(n, c, generator=g, dtype=dtype)
        y = y / y.sum(dim=1, keepdim=True)
    else:
        y = torch.randint(0, c, (n,), generator=g)
        y[::4] = -100
    return x, y


OPTIONS = {
    "z": dict(z_loss=0.01),
    "cap": dict(softcap=2.0),
    "all": dict(z_loss=0.02, softcap=3.0, label_smoothing=0.1),
}


@pytest.mark.parametrize("path,mode", RUNS, ids=RUN_IDS)
@pytest.mark.parametrize("soft", [False, True], ids=["labels", "probabilities"])
@pytest.mark.parametrize("name", list(OPTIONS))
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_matches_plain_torch(path, mode, soft, name, reduction):
    x, y = case(3, soft=soft)
    w = torch.rand(6, dtype=torch.float64) + 0.5
    opts = dict(OPTIONS[name], reduction=reduction)
    leaf = x.clone().requires_grad_(True)
    want = torch_loss(leaf, y, w, **opts)
    want.sum().backward()
    mine = x.clone().requires_grad_(True)
    got = _cross_entropy(mine.clone(), y, w, -100, reduction, opts.get("label_smoothing", 0.0),
                         grad_in_forward=mode == "grad", inplace=mode == "inplace",
                         use_ops=path == "ops", z_loss=opts.get("z_loss", 0.0),
                         softcap=opts.get("softcap"))
    got.sum().backward()
    torch.testing.assert_close(got.detach(), want.detach(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(mine.grad, leaf.grad, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("path,mode", RUNS, ids=RUN_IDS)
def test_returns_z_loss_and_accuracy(path, mode):
    x, y = case(5, n=12, c=5)
    leaf = x.clone().requires_grad_(True)
    loss, z, acc = _cross_entropy(leaf.clone(), y, None, -100, "mean", 0.0,
                                  grad_in_forward=mode == "grad", inplace=mode == "inplace",
                                  use_ops=path == "ops", z_loss=0.1, return_z_loss=True,
                                  return_accuracy=True)
    kept = y != -100
    want_z = (0.1 * torch.logsumexp(x, 1)[kept] ** 2).mean()
    want_acc = (x.argmax(1)[kept] == y[kept]).double().mean()
    torch.testing.assert_close(z, want_z)
    torch.testing.assert_close(acc, want_acc)
    assert not z.requires_grad and not acc.requires_grad
    loss.backward()
    assert leaf.grad is not None


def test_module_and_nd_probability_targets():
    g = torch.Generator().manual_seed(8)
    x = torch.randn(3, 5, 4, 2, generator=g, dtype=torch.float64)  # (N, C, d1, d2)
    t = torch.softmax(torch.randn(3, 5, 4, 2, generator=g, dtype=torch.float64), dim=1)
    loss_fn = fxt.CrossEntropyLoss(label_smoothing=0.1, z_loss=1e-3, softcap=4.0,
                                   reduction="none", return_z_loss=True)
    assert "z_loss=0.001" in repr(loss_fn) and "softcap=4.0" in repr(loss_fn)
    leaf = x.clone().requires_grad_(True)
    loss, z = loss_fn(leaf, t)
    assert loss.shape == z.shape == (3, 4, 2)
    ref_leaf = x.clone().requires_grad_(True)
    capped = 4.0 * torch.tanh(ref_leaf / 4.0)
    want = (F.cross_entropy(capped, t, label_smoothing=0.1, reduction="none")
            + 1e-3 * torch.logsumexp(capped, dim=1) ** 2)
    torch.testing.assert_close(loss, want.detach())
    loss.sum().backward()
    want.sum().backward()
    torch.testing.assert_close(leaf.grad, ref_leaf.grad)


@pytest.mark.filterwarnings(JIT_DEPRECATION)
def test_compiles_fullgraph_with_options():
    x, y = case(9, n=16, c=7, dtype=torch.float32)

    def step(x, y):
        loss, z, acc = fxt.cross_entropy(x, y, z_loss=1e-2, softcap=5.0, return_z_loss=True,
                                         return_accuracy=True, grad_in_forward=True)
        return loss, z, acc

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    leaf = x.clone().requires_grad_(True)
    loss, z, acc = compiled(leaf, y)
    loss.backward()
    ref = x.clone().requires_grad_(True)
    want = torch_loss(ref, y, z_loss=1e-2, softcap=5.0)
    want.backward()
    torch.testing.assert_close(loss, want.detach())
    torch.testing.assert_close(leaf.grad, ref.grad)
    kept = y != -100
    capped = 5.0 * torch.tanh(x / 5.0)
    torch.testing.assert_close(acc, (capped.argmax(1)[kept] == y[kept]).double().mean())


def test_bad_options_raise():
    x, y = case(1)
    with pytest.raises(ValueError, match="z_loss"):
        fxt.cross_entropy(x, y, z_loss=-1.0)
    with pytest.raises(ValueError, match="softcap"):
        fxt.cross_entropy(x, y, softcap=0.0)
    with pytest.raises(ValueError, match="target"):
        fxt.cross_entropy(x, torch.rand(10, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="return_accuracy"):
        fxt.cross_entropy(x, torch.rand(10, 6, dtype=torch.float64), return_accuracy=True)
