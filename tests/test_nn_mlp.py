"""mprec.ops.mlp.linear and linear_stack (each product on oneDNN or BLAS, measured or fixed, + activation for
inference and training; F.linear + activation elsewhere) and mprec.nn.MLP against plain torch; mprec.memory.empty
(tables on 2 MiB pages)."""

import threading

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from mprec import memory
from mprec.nn import MLP
from mprec.ops import mlp
from mprec.ops.mlp import linear, use_gemm_library


@pytest.fixture(params=["measured", "onednn", "blas"])
def gemm(request):
    """Every product on each library, and on the one measured fastest per product."""
    with use_gemm_library(None if request.param == "measured" else request.param):
        yield request.param


@pytest.mark.parametrize("activation", ["none", "relu"])
@pytest.mark.parametrize("shape", [(64, 13, 512), (1, 1, 1), (33, 367, 17)])
def test_linear_inference_matches_torch(gemm, activation, shape):
    B, K, N = shape
    x, w, b = torch.randn(B, K), torch.randn(N, K), torch.randn(N)
    with torch.no_grad():
        got = linear(x, w, b, activation)
        got_nobias = linear(x, w, None, activation)
    want = F.linear(x.double(), w.double(), b.double())
    want_nobias = F.linear(x.double(), w.double())
    if activation == "relu":
        want, want_nobias = want.relu(), want_nobias.relu()
        assert (got >= 0).all() and (got == 0).any() == (want == 0).any()
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got_nobias.double(), want_nobias, rtol=1e-4, atol=1e-4)


def test_linear_under_autocast_computes_in_bf16():
    x, w, b = torch.randn(50, 64), torch.randn(32, 64), torch.randn(32)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        got = linear(x, w, b, "relu")
        want = torch.relu(F.linear(x, w, b))
    assert got.dtype == torch.bfloat16 == want.dtype
    torch.testing.assert_close(got.double(), want.double(), rtol=2e-2, atol=5e-2)


def test_linear_gradients_match_torch():
    x = torch.randn(20, 7, dtype=torch.float64, requires_grad=True)
    layer = nn.Linear(7, 5).double()
    y = linear(x, layer.weight, layer.bias, "relu")
    want = torch.relu(F.linear(x, layer.weight, layer.bias))
    torch.testing.assert_close(y, want, rtol=0, atol=0)
    g = torch.randn_like(y)
    got_grads = torch.autograd.grad(y, (x, layer.weight, layer.bias), g)
    want_grads = torch.autograd.grad(want, (x, layer.weight, layer.bias), g)
    for a, b in zip(got_grads, want_grads):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def _reference_grads(x, w, b, activation, g):
    xd, wd = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    bd = None if b is None else b.detach().double().requires_grad_()
    y = F.linear(xd, wd, bd)
    y = y.relu() if activation == "relu" else y
    return y, torch.autograd.grad(y, [t for t in (xd, wd, bd) if t is not None], g.double())


@pytest.mark.parametrize("activation", ["none", "relu"])
@pytest.mark.parametrize("bias", [True, False])
# Wide layers (weight gradient by oneDNN), thin ones (by mm), odd widths, one example, one output.
@pytest.mark.parametrize("shape", [(256, 368, 512), (96, 512, 256), (64, 13, 512), (64, 64, 16), (33, 129, 17),
                                   (1, 7, 5), (40, 256, 1), (17, 1, 1)])
def test_linear_training_path_matches_float64(gemm, activation, bias, shape):
    """fp32 training runs forward, input gradient and weight gradient on the GEMM libraries; all three against
    float64."""
    torch.manual_seed(sum(shape))
    B, K, N = shape
    x = torch.randn(B, K, requires_grad=True)
    w = (torch.randn(N, K) / K ** 0.5).requires_grad_()
    b = torch.randn(N, requires_grad=True) if bias else None
    y = linear(x, w, b, activation)
    assert type(y.grad_fn).__name__ == "_StackBackward"  # mprec's products, not F.linear's
    g = torch.randn(B, N)
    got = torch.autograd.grad(y, [t for t in (x, w, b) if t is not None], g)
    want_y, want = _reference_grads(x, w, b, activation, g)
    torch.testing.assert_close(y.double(), want_y, rtol=1e-5, atol=1e-5)
    for a, e in zip(got, want):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a.double(), e, rtol=1e-4, atol=1e-4 * (1 + e.abs().max().item()))


def test_linear_training_path_takes_strided_inputs_and_gradients(gemm):
    """A transposed input, a broadcast (stride-0) upstream gradient, and a frozen input (no input gradient)."""
    torch.manual_seed(1)
    base = torch.randn(48, 30)
    x = base.t()  # [30, 48], not contiguous
    w = torch.randn(64, 48, requires_grad=True)
    b = torch.randn(64, requires_grad=True)
    y = linear(x, w, b, "relu")
    y.sum().backward()  # the upstream gradient is an expanded 1
    want_y, (gx, gw, gb) = _reference_grads(x, w, b, "relu", torch.ones(30, 64))
    torch.testing.assert_close(y.double(), want_y, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(w.grad.double(), gw, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(b.grad.double(), gb, rtol=1e-4, atol=1e-4)


def test_linear_training_relu_gradient_is_zero_where_the_output_is_zero(gemm):
    x = torch.tensor([[1.0, -1.0], [0.5, 0.0]], requires_grad=True)
    w = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 0.0]], requires_grad=True)
    y = linear(x, w, None, "relu")  # pre-activations [[0, 2, -1], [0.5, 0.5, -0.5]]
    torch.testing.assert_close(y, torch.tensor([[0.0, 2.0, 0.0], [0.5, 0.5, 0.0]]))
    y.backward(torch.full_like(y, 3.0))
    # only (0, 1), (1, 0), (1, 1) pass gradient: dx = 3 * sum of the rows of w that are active
    torch.testing.assert_close(x.grad, torch.tensor([[3.0, -3.0], [6.0, 0.0]]))
    torch.testing.assert_close(w.grad, torch.tensor([[1.5, 0.0], [4.5, -3.0], [0.0, 0.0]]))


def test_linear_training_under_autocast_matches_autocast_f_linear(gemm):
    """Under bf16 autocast the products run in bf16 and the fp32 parameters get fp32 gradients, as with
    autocast's F.linear."""
    torch.manual_seed(2)
    x = torch.randn(128, 96)
    layer = nn.Linear(96, 80)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = linear(x, layer.weight, layer.bias, "relu")
        want = torch.relu(F.linear(x, layer.weight, layer.bias))
    assert got.dtype == want.dtype == torch.bfloat16
    g = torch.randn(128, 80)
    got_grads = torch.autograd.grad(got, (layer.weight, layer.bias), g)
    want_grads = torch.autograd.grad(want, (layer.weight, layer.bias), g)
    torch.testing.assert_close(got.double(), want.double(), rtol=2e-2, atol=3e-2)
    for a, e in zip(got_grads, want_grads):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a.double(), e.double(), rtol=3e-2, atol=3e-2 * e.abs().max().item())


def test_products_are_measured_once_per_shape_and_remembered(monkeypatch):
    """With no library fixed, each product of a new shape is timed on both libraries once, and later calls of
    the same shape (and of any row count with the same power of two) reuse the choice."""
    calls = []
    monkeypatch.setattr(mlp, "_choices", {})
    measure = mlp._measure

    def counting(*args):
        calls.append(args[1].shape)
        return measure(*args)

    monkeypatch.setattr(mlp, "_measure", counting)
    with use_gemm_library(None):
        x = torch.randn(70, 24, requires_grad=True)
        w = torch.randn(40, 24, requires_grad=True)
        b = torch.randn(40, requires_grad=True)
        for rows in (70, 100, 70):  # 70 and 100 share the power of two 64..127
            linear(x[:rows] if rows <= 70 else torch.randn(rows, 24), w, b, "relu").sum().backward()
    assert len(calls) == 3  # forward, input gradient, weight gradient of the first call
    choices = mlp.gemm_choices()
    assert {row[0] for row in choices} == set(mlp.PRODUCTS)
    assert {row[-1] for row in choices if row[0] != "weight_grad"} <= set(mlp.GEMM_LIBRARIES)
    assert {row[-1] for row in choices} <= set(mlp.WEIGHT_GRAD_WAYS)


@pytest.mark.parametrize("way", mlp.WEIGHT_GRAD_WAYS)
@pytest.mark.parametrize("shape", [(2048, 13, 64), (5, 1, 3), (33, 17, 130)])
def test_every_weight_gradient_way_is_the_gradient(monkeypatch, way, shape):
    """Each form of the weight gradient (direct or transposed, on either library), chosen as a measurement or a
    checkpoint would choose it, gives torch's gradient in a contiguous tensor."""
    B, K, N = shape
    monkeypatch.setattr(mlp, "_choices", {})
    monkeypatch.setattr(mlp, "_measure", lambda product, *args: way if product == "weight_grad" else "blas")
    x = torch.randn(B, K, requires_grad=True)
    layer = nn.Linear(K, N)
    g = torch.randn(B, N)
    with use_gemm_library(None):
        got = torch.autograd.grad(linear(x, layer.weight, layer.bias, "relu"), (x, layer.weight, layer.bias), g)
    assert [row[-1] for row in mlp.gemm_choices() if row[0] == "weight_grad"] == [way]
    x64, layer64 = x.detach().double().requires_grad_(), nn.Linear(K, N).double()
    layer64.load_state_dict(layer.state_dict())
    want = torch.autograd.grad(torch.relu(layer64(x64)), (x64, layer64.weight, layer64.bias), g.double())
    assert got[1].is_contiguous() and got[1].shape == layer.weight.shape
    for a, e in zip(got, want):
        torch.testing.assert_close(a.double(), e, rtol=1e-4, atol=1e-4 * max(1.0, e.abs().max().item()))


def test_restored_choices_are_used_without_measuring(monkeypatch):
    """A checkpoint's choices (JSON rows) restored in another process decide the same products there."""
    import json

    monkeypatch.setattr(mlp, "_choices", {})
    with use_gemm_library(None):
        x, w = torch.randn(50, 24), torch.randn(40, 24)
        with torch.no_grad():
            linear(x, w, None, "relu")
        rows = json.loads(json.dumps(mlp.gemm_choices()))
        assert len(rows) == 1
        flipped = [[*rows[0][:-1], "blas" if rows[0][-1] == "onednn" else "onednn"]]
        monkeypatch.setattr(mlp, "_choices", {})
        mlp.restore_gemm_choices(flipped + [["forward", 6, None, 3, 4, "none", False, "float33", 2, "blas"]])
        monkeypatch.setattr(mlp, "_measure", lambda *args: pytest.fail("a restored product was measured again"))
        with torch.no_grad():
            linear(x, w, None, "relu")
        assert mlp.gemm_choices() == flipped


def test_a_gemm_library_block_is_its_threads_own(monkeypatch):
    """use_gemm_library decides the products of its own thread: a thread running meanwhile keeps the process's
    library (MPREC_GEMM's) or its own block's, and each block restores what was in force before it."""
    monkeypatch.setattr(mlp, "_env_library", "onednn")
    monkeypatch.setattr(mlp, "_choices", {})
    monkeypatch.setattr(mlp, "_measure", lambda *args: "measured")
    a, b = torch.randn(8, 4), torch.randn(3, 4)

    def library():
        return mlp.gemm_library("forward", a, b)

    inside, release, seen = threading.Event(), threading.Event(), {}

    def holder():
        with use_gemm_library("blas"):
            inside.set()
            release.wait(30)
            seen["holder, in its block"] = library()
            with use_gemm_library(None):
                seen["holder, nested block"] = library()
            seen["holder, after the nested block"] = library()
        seen["holder, after its block"] = library()

    def other():
        seen["other, no block"] = library()
        with use_gemm_library(None):
            seen["other, its own block"] = library()

    thread = threading.Thread(target=holder)
    thread.start()
    assert inside.wait(30)
    try:
        worker = threading.Thread(target=other)
        worker.start()
        worker.join(30)
        seen["main, no block"] = library()
    finally:
        release.set()
        thread.join(30)
    assert seen == {"other, no block": "onednn", "other, its own block": "measured", "main, no block": "onednn",
                    "holder, in its block": "blas", "holder, nested block": "measured",
                    "holder, after the nested block": "blas", "holder, after its block": "onednn"}


def test_gemm_library_errors(monkeypatch):
    with pytest.raises(ValueError, match=r"mprec.ops.use_gemm_library: library must be one of \('onednn', 'blas'\) "
                                         r"or None, got 'mkl'"):
        with use_gemm_library("mkl"):
            pass
    monkeypatch.setenv("MPREC_GEMM", "cublas")
    with pytest.raises(ValueError, match=r"MPREC_GEMM must be one of \('auto', 'onednn', 'blas'\), got 'cublas'"):
        mlp._library_from_env()
    monkeypatch.setenv("MPREC_GEMM", " BLAS ")
    assert mlp._library_from_env() == "blas"


def test_linear_rejects_unknown_activation():
    with pytest.raises(ValueError, match=r"mprec.ops.linear: activation must be one of \('none', 'relu'\), got 'gelu'"):
        linear(torch.randn(2, 3), torch.randn(4, 3), None, "gelu")


def _stack_reference(x, weights, biases, activations, g):
    """The stack in float64 F.linear and ReLU, with the gradients of every input that requires one."""
    leaves = [t.detach().double().requires_grad_(t.requires_grad) if t is not None else None
              for t in (x, *weights, *biases)]
    n = len(weights)
    y = leaves[0]
    for w, b, activation in zip(leaves[1:1 + n], leaves[1 + n:], activations):
        y = F.linear(y, w, b)
        y = y.relu() if activation == "relu" else y
    wanted = [t for t in leaves if t is not None and t.requires_grad]
    return y, dict(zip([id(t) for t in (x, *weights, *biases) if t is not None and t.requires_grad],
                        torch.autograd.grad(y, wanted, g.double())))


@pytest.mark.parametrize("frozen", ["none", "input", "first layer and input", "middle layer"])
@pytest.mark.parametrize("activations", [("relu", "relu", "none"), ("relu", "none", "relu"), ("none", "none", "none")])
def test_linear_stack_is_one_node_with_every_gradient_of_its_layers(gemm, activations, frozen):
    """Any mix of activations, a layer without bias, and inputs or layers that need no gradient, against float64."""
    torch.manual_seed(len(frozen))
    widths = [37, 129, 1, 16]
    x = torch.randn(70, widths[0], requires_grad=frozen not in ("input", "first layer and input"))
    weights = [(torch.randn(n, k) / k ** 0.5).requires_grad_() for k, n in zip(widths[:-1], widths[1:])]
    biases = [torch.randn(widths[1], requires_grad=True), None, torch.randn(widths[3], requires_grad=True)]
    frozen_layer = {"first layer and input": 0, "middle layer": 1}.get(frozen)
    if frozen_layer is not None:
        weights[frozen_layer].requires_grad_(False)
        if biases[frozen_layer] is not None:
            biases[frozen_layer].requires_grad_(False)
    y = mlp.linear_stack(x, weights, biases, activations)
    assert type(y.grad_fn).__name__ == "_StackBackward"
    g = torch.randn(70, widths[-1])
    g_before = g.clone()
    inputs = [t for t in (x, *weights, *biases) if t is not None and t.requires_grad]
    got = torch.autograd.grad(y, inputs, g)
    assert torch.equal(g, g_before)  # the caller's gradient is read, never written
    want_y, want = _stack_reference(x, weights, biases, activations, g)
    torch.testing.assert_close(y.double(), want_y, rtol=1e-5, atol=1e-5)
    for t, a in zip(inputs, got):
        e = want[id(t)]
        assert a.dtype == torch.float32 and a.shape == t.shape
        torch.testing.assert_close(a.double(), e, rtol=1e-4, atol=1e-4 * (1 + e.abs().max().item()))


def test_linear_stack_output_without_activation_may_be_changed_in_place():
    """As after F.linear: the backward does not read a last output that no ReLU follows."""
    torch.manual_seed(4)
    x = torch.randn(30, 8)
    layers = [nn.Linear(8, 16), nn.Linear(16, 4)]
    y = mlp.linear_stack(x, [m.weight for m in layers], [m.bias for m in layers], ["relu", "none"])
    y.mul_(3.0)
    y.sum().backward()
    want = 3.0 * layers[1](torch.relu(layers[0](x)))
    grads = torch.autograd.grad(want.sum(), [m.weight for m in layers])
    for m, g in zip(layers, grads):
        torch.testing.assert_close(m.weight.grad, g, rtol=1e-4, atol=1e-4)


def test_linear_stack_elsewhere_is_f_linear_layer_by_layer():
    """float64 (and no layers at all) take F.linear and ReLU: the same values, exactly."""
    torch.manual_seed(3)
    x = torch.randn(9, 5, dtype=torch.float64, requires_grad=True)
    layers = [nn.Linear(5, 7).double(), nn.Linear(7, 3).double()]
    y = mlp.linear_stack(x, [m.weight for m in layers], [m.bias for m in layers], ["relu", "none"])
    want = layers[1](torch.relu(layers[0](x)))
    torch.testing.assert_close(y, want, rtol=0, atol=0)
    assert mlp.linear_stack(x, [], [], []) is x


def test_linear_stack_errors():
    x, w = torch.randn(2, 3), torch.randn(4, 3)
    with pytest.raises(ValueError, match=r"mprec.ops.linear_stack: weights, biases and activations must be as many, "
                                         r"got 1, 2 and 1"):
        mlp.linear_stack(x, [w], [None, None], ["relu"])
    with pytest.raises(ValueError, match=r"mprec.ops.linear_stack: activation must be one of \('none', 'relu'\), "
                                         r"got 'tanh'"):
        mlp.linear_stack(x, [w], [None], ["tanh"])


def test_mlp_is_a_sequential_with_the_same_function():
    torch.manual_seed(0)
    mlp = MLP([13, 64, 32, 1], last_activation=False)
    plain = nn.Sequential(nn.Linear(13, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 1))
    plain.load_state_dict(mlp.state_dict())  # the same keys and shapes
    assert [type(m) for m in mlp] == [type(m) for m in plain]
    x = torch.randn(100, 13)
    with torch.no_grad():
        torch.testing.assert_close(mlp(x), plain(x), rtol=1e-5, atol=1e-5)
    out = mlp(x)  # with grad: the autograd path
    out.sum().backward()
    ref = plain(x)
    ref.sum().backward()
    for p, q in zip(mlp.parameters(), plain.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-5)
    assert isinstance(MLP([4, 4], last_activation=True)[-1], nn.ReLU)
    with pytest.raises(ValueError, match="MLP: needs at least an input and an output width"):
        MLP([4])


def test_memory_empty_large_tensors_are_aligned_views():
    t = memory.empty((1 << 20, 4), dtype=torch.float32)  # 16 MiB
    assert t.shape == (1 << 20, 4) and t.dtype == torch.float32 and t.is_contiguous()
    if memory.huge_pages_available():
        assert t.data_ptr() % memory.HUGE_PAGE_BYTES == 0
    t.fill_(3.0)  # the whole view is writable memory
    assert float(t.sum()) == 3.0 * t.numel()
    small = memory.empty((10, 3), dtype=torch.bfloat16)
    assert small.shape == (10, 3) and small.dtype == torch.bfloat16 and small.storage_offset() == 0


def test_collection_tables_use_huge_page_memory():
    from mprec.nn import EmbeddingBagCollection

    c = EmbeddingBagCollection([1 << 18, 10], 16)  # 16 MiB and a tiny table
    if memory.huge_pages_available():
        assert c.table_parameters()[0].data_ptr() % memory.HUGE_PAGE_BYTES == 0
    state = {k: v.clone() for k, v in c.state_dict().items()}
    d = EmbeddingBagCollection([1 << 18, 10], 16)
    d.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(c.table_parameters(), d.table_parameters()))


RETAIN_SCRIPT = """
import resource, torch
from mprec import memory

def faults():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):  # a step's worth of 8 and 12 MiB activations, allocated and freed
        a, b = torch.empty(2 << 20).fill_(1.0), torch.empty(3 << 20).fill_(2.0)
        del a, b
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

first = faults()
applied = memory.retain_freed_memory()
faults()  # the heap grows once
print(first, applied, faults(), memory.retain_freed_memory())
"""


def test_retain_freed_memory_stops_refaulting_each_step():
    """After retain_freed_memory, freed step-sized blocks are reused without faulting their pages in again."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", RETAIN_SCRIPT], capture_output=True, text=True, check=True)
    first, applied, after, again = out.stdout.split()
    if applied == "False":
        pytest.skip("not glibc: malloc has no mallopt")
    assert again == "True"
    assert int(first) > 100  # glibc returned the blocks and faulted them in again, step after step
    assert int(after) < int(first) / 10
