"""fastxent.torch: cross_entropy / CrossEntropyLoss against torch.nn.functional.cross_entropy.

Every option combination is run through every way the module can execute: the eager
autograd.Function ("eager") and the custom ops that torch.compile sees ("ops"), in each
gradient mode ("lse": gradient from the saved lse, "grad": grad_in_forward, "inplace"), and
the eager fast path for plain calls ("eager-fast": the other eager runs keep off it; with
options it does not take, it hands the call on to the eager-lse path).
"""

from __future__ import annotations

import itertools
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")

import fastxent.torch as fxt  # noqa: E402
from fastxent.torch import _cross_entropy  # noqa: E402

F = torch.nn.functional
REDUCTIONS = ["mean", "sum", "none"]
# (path, mode): in-place is eager-only (it needs mark_dirty, which custom ops don't have).
RUNS = [("eager", "lse"), ("eager", "grad"), ("eager", "inplace"), ("eager", "fast"),
        ("ops", "lse"), ("ops", "grad")]
RUN_IDS = [f"{p}-{m}" for p, m in RUNS]
# torch.compile imports inductor, which imports a deprecated torch.jit API.
JIT_DEPRECATION = "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"


def fx_loss(x, y, weight=None, *, path="eager", mode="lse", ignore_index=-100,
            reduction="mean", label_smoothing=0.0):
    return _cross_entropy(x, y, weight, ignore_index, reduction, label_smoothing,
                          grad_in_forward=mode == "grad", inplace=mode == "inplace",
                          use_ops=path == "ops", fast_path=mode == "fast")


def loss_and_grad(fn, x, y, grad_output=None, **opts):
    """(loss, d(sum(loss * grad_output))/dx) with x a fresh leaf; the loss function gets a
    non-leaf copy of it (so in-place mode is allowed and cannot clobber x)."""
    leaf = x.detach().clone().requires_grad_(True)
    loss = fn(leaf.clone(), y, **opts)
    scaled = loss if grad_output is None else loss * grad_output
    (grad,) = torch.autograd.grad(scaled.sum(), leaf)
    return loss.detach(), grad


def torch_ce(x, y, weight=None, **opts):
    return F.cross_entropy(x, y.long(), weight, **opts)


def assert_close(got, want, rtol):
    """Within rtol of the reference, elementwise, with absolute slack rtol * max|reference|
    (entries near zero come from cancellations like p_y - 1)."""
    assert got.dtype == want.dtype and got.shape == want.shape
    finite = want[torch.isfinite(want)]
    scale = finite.abs().max().item() if finite.numel() else 1.0
    torch.testing.assert_close(got, want, rtol=rtol, atol=rtol * max(scale, 1e-30),
                               equal_nan=True)


def make_case(seed, n=9, c=7, dtype=torch.float32, weight=False, ignore=False, scale=3.0,
              ignore_index=-100):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(n, c, generator=g, dtype=torch.float64) * scale).to(dtype)
    y = torch.randint(0, c, (n,), generator=g)
    if ignore:
        y[1::3] = ignore_index
    w = (torch.rand(c, generator=g, dtype=torch.float64) * 1.8 + 0.2).to(dtype) if weight else None
    return x, y, w


RTOL = {torch.float32: 1e-6, torch.float64: 1e-12}


# ----------------------------------------------------------------------------------------------
# Values and gradients against PyTorch


@pytest.mark.parametrize("path,mode", RUNS, ids=RUN_IDS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_matches_torch_every_option(path, mode, reduction, dtype):
    for k, (weight, ignore, smoothing) in enumerate(
            itertools.product([False, True], [False, True], [0.0, 0.1])):
        x, y, w = make_case(k, dtype=dtype, weight=weight, ignore=ignore)
        opts = dict(reduction=reduction, label_smoothing=smoothing)
        rows = torch.rand(y.shape, dtype=dtype, generator=torch.Generator().manual_seed(k)) + 0.5
        for grad_output in (None, torch.tensor(0.75, dtype=dtype) if reduction != "none" else rows):
            got = loss_and_grad(fx_loss, x, y, grad_output, weight=w, path=path, mode=mode, **opts)
            want = loss_and_grad(torch_ce, x, y, grad_output, weight=w, **opts)
            msg = f"weight={weight} ignore={ignore} smoothing={smoothing} go={grad_output}"
            for a, b in zip(got, want):
                try:
                    assert_close(a, b, RTOL[dtype])
                except AssertionError as exc:
                    raise AssertionError(f"{msg}: {exc}") from None


@pytest.mark.parametrize("path,mode", RUNS, ids=RUN_IDS)
def test_ignore_index_inside_class_range_and_all_ignored(path, mode):
    x, y, _ = make_case(3)
    y[::2] = 4                              # ignore_index that is also a valid class
    for labels in (y, torch.full_like(y, 4)):   # some rows ignored, then all (mean -> NaN)
        for reduction in REDUCTIONS:
            opts = dict(ignore_index=4, reduction=reduction, label_smoothing=0.2)
            got = loss_and_grad(fx_loss, x, labels, path=path, mode=mode, **opts)
            want = loss_and_grad(torch_ce, x, labels, **opts)
            for a, b in zip(got, want):
                assert_close(a, b, 1e-6)


@pytest.mark.parametrize("path,mode", RUNS, ids=RUN_IDS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_unbatched_input(path, mode, reduction):
    x = torch.randn(11, generator=torch.Generator().manual_seed(1))
    y = torch.tensor(5)
    got = loss_and_grad(fx_loss, x, y, path=path, mode=mode, reduction=reduction)
    want = loss_and_grad(torch_ce, x, y, reduction=reduction)
    assert got[0].shape == ()
    for a, b in zip(got, want):
        assert_close(a, b, 1e-6)


@pytest.mark.parametrize("path,mode", [r for r in RUNS if r[1] != "inplace"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", [(3, 5, 4), (2, 6, 3, 4), (2, 4, 1, 3, 2)])
def test_class_axis_one_with_extra_dims(path, mode, reduction, shape):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(shape, generator=g) * 2
    y = torch.randint(0, shape[1], (shape[0],) + shape[2:], generator=g)
    y.view(-1)[::5] = -100
    w = torch.rand(shape[1], generator=g) + 0.5
    opts = dict(weight=w, reduction=reduction, label_smoothing=0.05)
    go = torch.rand(y.shape, generator=g) if reduction == "none" else None
    got = loss_and_grad(fx_loss, x, y, go, path=path, mode=mode, **opts)
    want = loss_and_grad(torch_ce, x, y, go, **opts)
    assert got[0].shape == want[0].shape
    for a, b in zip(got, want):
        assert_close(a, b, 1e-6)


@pytest.mark.parametrize("path,mode", [r for r in RUNS if r[1] != "inplace"])
@pytest.mark.parametrize("layout", ["transposed", "row_slice", "row_step"])
def test_non_contiguous_input(path, mode, layout):
    g = torch.Generator().manual_seed(4)
    if layout == "transposed":
        x = torch.randn(7, 10, generator=g).t()           # class axis strided
    elif layout == "row_slice":
        x = torch.randn(10, 12, generator=g)[:, 2:9]      # rows of a wider array
    else:
        x = torch.randn(20, 7, generator=g)[::2]
    y = torch.randint(0, 7, (10,), generator=g)
    leaf = x.detach().requires_grad_(True)                # a non-contiguous leaf
    loss = fx_loss(leaf, y, path=path, mode=mode, label_smoothing=0.1)
    (grad,) = torch.autograd.grad(loss, leaf)
    want = loss_and_grad(torch_ce, x.contiguous(), y, label_smoothing=0.1)
    assert_close(loss.detach(), want[0], 1e-6)
    assert_close(grad, want[1], 1e-6)


@pytest.mark.parametrize("path,mode", RUNS, ids=RUN_IDS)
@pytest.mark.parametrize("target_dtype", [torch.int8, torch.int16, torch.int32, torch.int64,
                                          torch.uint8])
def test_any_integer_target_dtype(path, mode, target_dtype):
    x, y, _ = make_case(5)
    got = loss_and_grad(fx_loss, x, y.to(target_dtype), path=path, mode=mode)
    want = loss_and_grad(torch_ce, x, y)
    for a, b in zip(got, want):
        assert_close(a, b, 1e-6)


@pytest.mark.parametrize("path,mode", RUNS, ids=RUN_IDS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_empty_batch(path, mode, reduction):
    x = torch.zeros(0, 5)
    y = torch.zeros(0, dtype=torch.int64)
    got = loss_and_grad(fx_loss, x, y, path=path, mode=mode, reduction=reduction)
    want = loss_and_grad(torch_ce, x, y, reduction=reduction)
    for a, b in zip(got, want):
        assert_close(a, b, 1e-6)


@pytest.mark.parametrize("path,mode", RUNS, ids=RUN_IDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_half_precision_native(path, mode, dtype, reduction):
    x, y, w = make_case(6, dtype=dtype, weight=True, ignore=True)
    got = loss_and_grad(fx_loss, x, y, weight=w, path=path, mode=mode, label_smoothing=0.1,
                        reduction=reduction)
    # The 16-bit logits computed in float32 inside the kernels and rounded once: the exact
    # answer for those (rounded) inputs, in float64, then rounded to the input's dtype.
    want = loss_and_grad(torch_ce, x.double(), y, weight=w.double(), label_smoothing=0.1,
                         reduction=reduction)
    assert got[0].dtype == dtype and got[1].dtype == dtype
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b.to(dtype))    # the dtype's default tolerance: ~1 ulp


def test_module_matches_torch_module():
    x, y, w = make_case(7, weight=True, ignore=True)
    for reduction in REDUCTIONS:
        for grad_in_forward in (False, True):
            ours = fxt.CrossEntropyLoss(w, ignore_index=-100, reduction=reduction,
                                        label_smoothing=0.1, grad_in_forward=grad_in_forward)
            ref = torch.nn.CrossEntropyLoss(w, reduction=reduction, label_smoothing=0.1)
            got = loss_and_grad(ours, x, y)
            want = loss_and_grad(ref, x, y)
            for a, b in zip(got, want):
                assert_close(a, b, 1e-6)


def test_module_weight_is_a_buffer():
    w = torch.rand(5) + 0.5
    module = fxt.CrossEntropyLoss(w, reduction="sum", inplace=True)
    assert "weight" in module.state_dict()
    assert "inplace=True" in repr(module) and "reduction='sum'" in repr(module)
    module = module.double()
    assert module.weight.dtype == torch.float64
    assert fxt.CrossEntropyLoss().weight is None
    x = torch.randn(4, 5, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3])
    torch.testing.assert_close(module(x, y), F.cross_entropy(x, y, w.double(), reduction="sum"))


def test_options_after_weight_are_keyword_only():
    # torch's deprecated size_average/reduce sit in these positions: refuse, don't reinterpret.
    with pytest.raises(TypeError):
        fxt.CrossEntropyLoss(None, None, -100)
    with pytest.raises(TypeError):
        fxt.cross_entropy(torch.randn(2, 3), torch.tensor([0, 1]), None, None, -100)


# ----------------------------------------------------------------------------------------------
# Autograd machinery


def jacobian_fresh_graphs(fn, x, n_out):
    """d fn(x)[i] / dx row by row, a new graph for each row (in-place mode scales its saved
    gradient in place, so it cannot be backpropagated twice as gradcheck does)."""
    rows = []
    for i in range(n_out):
        leaf = x.detach().clone().requires_grad_(True)
        (g,) = torch.autograd.grad(fn(leaf).reshape(-1)[i], leaf)
        rows.append(g.reshape(-1))
    return torch.stack(rows)


@pytest.mark.parametrize("path,mode", RUNS, ids=RUN_IDS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gradcheck_float64_every_option(path, mode, reduction):
    for k, (weight, ignore, smoothing) in enumerate(
            itertools.product([False, True], [False, True], [0.0, 0.3])):
        x, y, w = make_case(10 + k, n=5, c=4, dtype=torch.float64, weight=weight, ignore=ignore)
        x.requires_grad_(True)

        def fn(inp, y=y, w=w, smoothing=smoothing):
            # clone(): a non-leaf for in-place mode; harmless for the others.
            return fx_loss(inp.clone(), y, w, path=path, mode=mode, reduction=reduction,
                           label_smoothing=smoothing)

        if mode == "inplace" and reduction == "none":
            # gradcheck backpropagates one-hot grad_outputs through one retained graph.
            ref = torch.autograd.functional.jacobian(
                lambda inp: F.cross_entropy(inp, y, w, reduction="none",
                                            label_smoothing=smoothing), x)
            got = jacobian_fresh_graphs(fn, x, len(y))
            torch.testing.assert_close(got, ref.reshape(len(y), -1), rtol=1e-12, atol=1e-14)
        else:
            assert torch.autograd.gradcheck(fn, (x,), eps=1e-6, atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize("path,mode", RUNS, ids=RUN_IDS)
def test_double_backward_raises(path, mode):
    x, y, _ = make_case(11, dtype=torch.float64)
    leaf = x.requires_grad_(True)
    loss = fx_loss(leaf.clone(), y, path=path, mode=mode)
    with pytest.raises(RuntimeError, match="second derivative .* is not implemented"):
        # loss * 2: a grad_output that does not itself require grad (where
        # once_differentiable would let the gradient through as a silent constant).
        (grad,) = torch.autograd.grad(loss * 2.0, leaf, create_graph=True)
        grad.pow(2).sum().backward()


@pytest.mark.parametrize("path,mode", RUNS, ids=RUN_IDS)
def test_retain_graph_second_backward(path, mode):
    x, y, _ = make_case(13)
    leaf = x.clone().requires_grad_(True)
    loss = fx_loss(leaf.clone(), y, path=path, mode=mode)
    loss.backward(retain_graph=True)
    first = leaf.grad.clone()
    if mode != "inplace":
        loss.backward(retain_graph=True)
        (loss * 3).backward(retain_graph=True)
        loss.backward()
        torch.testing.assert_close(leaf.grad, 6 * first)
        return
    # In-place: the gradient lives in the overwritten logits, which the leaf's .grad may share
    # and which a grad_output != 1 scales in place. Repeated passes are right until autograd
    # notices a modification, and then it raises; never silently wrong.
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        total = 1.0
        for scale in (1.0, 3.0, 1.0, 2.0):
            (loss * scale).backward(retain_graph=True)
            total += scale
            torch.testing.assert_close(leaf.grad, total * first)


@pytest.mark.parametrize("path,mode", RUNS, ids=RUN_IDS)
def test_no_grad_and_inputs_not_requiring_grad(path, mode):
    x, y, w = make_case(12, weight=True)
    want = F.cross_entropy(x, y, w)
    for context in (torch.no_grad, torch.inference_mode):
        leaf = x.clone().requires_grad_(True)
        inp = leaf.clone()
        before = inp.detach().clone()
        with context():
            loss = fx_loss(inp, y, w, path=path, mode=mode)
        assert not loss.requires_grad and loss.grad_fn is None
        assert_close(loss, want, 1e-6)
        assert torch.equal(inp.detach(), before)      # in-place mode: nothing to overwrite
    inp = x.clone()
    loss = fx_loss(inp, y, w, path=path, mode=mode)
    assert not loss.requires_grad
    assert torch.equal(inp, x)


def test_trains_through_a_linear_layer_in_place():
    # The intended use: the output of a Linear layer overwritten by its own gradient.
    g = torch.Generator().manual_seed(14)
    h = torch.randn(16, 8, generator=g)
    y = torch.randint(0, 5, (16,), generator=g)
    grads = {}
    for name in ("torch", "inplace"):
        torch.manual_seed(0)
        layer = torch.nn.Linear(8, 5)
        logits = layer(h)
        if name == "torch":
            loss = F.cross_entropy(logits, y, label_smoothing=0.1)
        else:
            values, version = logits.detach().clone(), logits._version
            loss = fxt.cross_entropy(logits, y, label_smoothing=0.1, inplace=True)
            assert logits._version > version          # autograd was told about the write
            want_grad = loss_and_grad(torch_ce, values, y, label_smoothing=0.1)[1]
            assert_close(logits.detach(), want_grad, 1e-6)  # the storage now holds the gradient
        loss.backward()
        grads[name] = (loss.detach(), layer.weight.grad, layer.bias.grad)
    for a, b in zip(grads["inplace"], grads["torch"]):
        assert_close(a, b, 1e-6)


def test_inplace_refuses_what_it_cannot_overwrite_safely():
    x, y, _ = make_case(15)
    leaf = x.clone().requires_grad_(True)
    cases = {
        "leaf tensor that requires grad": leaf,
        "view": leaf.clone().view(9, 7),
        "class axis last": leaf.clone().reshape(3, 3, 7).transpose(1, 2).contiguous(),
        "contiguous": torch.empty_strided((9, 7), (1, 9)).copy_(leaf),  # not a view
    }
    for problem, inp in cases.items():
        before = inp.detach().clone()
        target = y.reshape(3, 3) if inp.dim() == 3 else y
        with pytest.raises(RuntimeError, match=f"inplace=True .*{problem}"):
            fxt.cross_entropy(inp, target, inplace=True)
        assert torch.equal(inp.detach(), before)
    with pytest.raises(RuntimeError, match="torch.compile"):
        fx_loss(leaf.clone(), y, path="ops", mode="inplace")


def test_inplace_over_a_tensor_another_node_saved_fails_at_backward():
    x, y, _ = make_case(16)
    leaf = x.clone().requires_grad_(True)
    logits = leaf.exp()                        # ExpBackward saves its output
    loss = fxt.cross_entropy(logits, y, inplace=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


# ----------------------------------------------------------------------------------------------
# Custom ops and torch.compile


@pytest.mark.parametrize("extras", [(0.0, 0.0, False), (0.01, 3.0, True)],
                         ids=["plain", "zloss-softcap-accuracy"])
def test_custom_ops_pass_opcheck(extras):
    x, y, w = make_case(17, weight=True, ignore=True)
    for reduction in REDUCTIONS:
        options = (-100, 0.1, reduction, *extras)
        args = (x.clone().requires_grad_(True), y, w, *options)
        torch.library.opcheck(torch.ops.fastxent.ce_forward.default, args)
        torch.library.opcheck(torch.ops.fastxent.ce_fused.default, args)
        _, lse, _, _ = torch.ops.fastxent.ce_forward(x, y, w, *options)
        go = torch.rand(9) if reduction == "none" else torch.tensor(0.5)
        torch.library.opcheck(torch.ops.fastxent.ce_backward.default,
                              (go, x, y, lse, w, *options))
        torch.library.opcheck(torch.ops.fastxent.ce_scale_grad.default, (x, go))


def _small_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 5))


def _compile_case():
    g = torch.Generator().manual_seed(18)
    h = torch.randn(24, 8, generator=g)
    y = torch.randint(0, 5, (24,), generator=g)
    y[::7] = -100
    return h, y


@pytest.mark.filterwarnings(JIT_DEPRECATION)
def test_torch_compile_fullgraph_inductor_matches_eager():
    h, y = _compile_case()
    w = torch.rand(5) + 0.5
    results = []
    for compiled in (False, True):
        model = _small_model()
        criterion = fxt.CrossEntropyLoss(w, label_smoothing=0.1)

        def step(h, y, model=model, criterion=criterion):
            return criterion(model(h), y)

        fn = torch.compile(step, fullgraph=True) if compiled else step
        loss = fn(h, y)
        loss.backward()
        results.append([loss.detach()] + [p.grad for p in model.parameters()])
    want = loss_and_grad(torch_ce, _small_model()(h).detach(), y, weight=w, label_smoothing=0.1)
    assert_close(results[1][0], want[0], 1e-6)
    for a, b in zip(results[1], results[0]):
        assert_close(a, b, 1e-6)


@pytest.mark.filterwarnings(JIT_DEPRECATION)
@pytest.mark.parametrize("grad_in_forward", [False, True])
def test_torch_compile_graphs_contain_the_ops(grad_in_forward):
    # aot_eager with graph recording: cheap (no inductor), and shows what the compiler sees.
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    graphs = []

    def record(gm, _inputs):
        graphs.append(str(gm.graph))
        return make_boxed_func(gm.forward)

    backend = aot_autograd(fw_compiler=record, bw_compiler=record)
    h, y = _compile_case()
    model = _small_model()

    def step(h, y):
        return fxt.cross_entropy(model(h), y, reduction="none",
                                 grad_in_forward=grad_in_forward).mean()

    torch._dynamo.reset()
    loss = torch.compile(step, backend=backend, fullgraph=True)(h, y)
    loss.backward()
    forward, backward = graphs
    if grad_in_forward:
        assert "fastxent.ce_fused" in forward and "fastxent.ce_scale_grad" in backward
    else:
        assert "fastxent.ce_forward" in forward and "fastxent.ce_backward" in backward
    ref_model = _small_model()
    F.cross_entropy(ref_model(h), y, reduction="none").mean().backward()
    for p, q in zip(model.parameters(), ref_model.parameters()):
        assert_close(p.grad, q.grad, 1e-6)


# ----------------------------------------------------------------------------------------------
# Errors


def test_clear_errors():
    x, y, w = make_case(19)
    with pytest.raises(ValueError, match=r"target must have shape \(9,\)"):
        fxt.cross_entropy(x, y[:5])
    with pytest.raises(ValueError, match=r"target must have shape \(9, 7\)"):
        fxt.cross_entropy(x, y.double())  # float targets are class probabilities
    with pytest.raises(TypeError, match="integer tensor"):
        fxt.cross_entropy(x, y > 2)
    with pytest.raises(TypeError, match="floating-point"):
        fxt.cross_entropy(y.reshape(9, 1), y)
    with pytest.raises(TypeError, match="input must be a torch.Tensor"):
        fxt.cross_entropy(x.numpy(), y)
    with pytest.raises(ValueError, match="reduction"):
        fxt.cross_entropy(x, y, reduction="avg")
    with pytest.raises(ValueError, match="reduction"):
        fxt.CrossEntropyLoss(reduction="avg")
    with pytest.raises(ValueError, match=r"weight must have shape \(7,\)"):
        fxt.cross_entropy(x, y, torch.ones(6))
    with pytest.raises(RuntimeError, match="weight.detach"):
        fxt.cross_entropy(x, y, torch.ones(7, requires_grad=True))
    with pytest.raises(ValueError, match="class dimension"):
        fxt.cross_entropy(torch.tensor(1.0), torch.tensor(0))
    with pytest.raises(ValueError, match="label_smoothing"):
        fxt.cross_entropy(x, y, label_smoothing=1.5)
    bad = y.clone()
    bad[4] = 7
    for path, mode in RUNS:
        inp = x.clone().requires_grad_(True).clone()
        version = inp._version
        with pytest.raises(ValueError, match=r"labels\[4\] = 7 is not a class index"):
            fx_loss(inp, bad, path=path, mode=mode)
        assert torch.equal(inp.detach(), x) and inp._version == version  # in-place: untouched


def test_import_error_without_torch():
    code = ("import sys; sys.modules['torch'] = None\n"
            "try:\n    import fastxent.torch\n"
            "except ImportError as e:\n    print('ImportError:', e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert "ImportError: fastxent.torch needs PyTorch" in out
