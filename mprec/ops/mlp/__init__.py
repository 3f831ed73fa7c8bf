"""Linear layers with a fused activation, for DLRM's MLPs (:class:`mprec.nn.MLP`).

:func:`linear` is ``activation(x @ weight.T + bias)``. On a CPU build of torch with oneDNN, for 2-D float32
or bfloat16 inputs, each of a layer's three products runs on the GEMM library measured fastest for it on
this machine (:func:`gemm_library`):

- ``"onednn"``: oneDNN's matmul (``torch.ops.mkldnn._linear_pointwise``, the kernel inductor emits for the
  same pattern), with the activation applied to the GEMM's output tile while it is still in cache;
- ``"blas"``: torch's ``addmm``/``mm`` (MKL in torch's x86 wheels), then the activation in place.

The forward is one product; with autograd (training), the input gradient is ``grad @ weight`` and the weight
gradient ``grad.T @ x``, reading the transposes as strided views. :func:`linear_stack` runs several layers as one
autograd node (:class:`mprec.nn.MLP`'s layers): the gradients between its layers are its own, so before the
products each inner ReLU layer takes ReLU's backward and its bias gradient in one pass, in place
(``mprec::relu_backward_bias_``, this family's op); the caller's gradient at the output takes aten's
``threshold_backward`` and ``sum``. Under CPU autocast the products run in the autocast dtype, as ``F.linear``'s
would.

Why measure: neither library wins everywhere. MKL runs its AVX2 kernels on AMD CPUs, so on AVX-512 EPYCs
oneDNN (which dispatches on the ISA alone) is up to twice as fast; on AVX2-only CPUs both run AVX2 and
MKL's is as fast or faster, and oneDNN copies a transposed operand before the weight-gradient product.
Thin products (a side under 64) differ again. So each product (forward, input gradient, weight gradient)
of each shape is timed once per process on both libraries, on its real operands, and the faster one is
kept (keyed by the product, the layer's widths, the batch's power of two, dtype and thread count); the weight
gradient is also timed in its transposed form, ``(x.T @ grad).T``, which wins where x is thin. The
products are float32 throughout (no bf16/tf32 shortcut); only the summation order differs.
The choices travel with training checkpoints (:func:`gemm_choices`, :func:`restore_gemm_choices`), so a
resumed run computes as the run it continues did, bit for bit; ``MPREC_GEMM=onednn|blas`` (or
:func:`use_gemm_library`) fixes the library instead. bfloat16 goes to oneDNN only where the CPU computes it (AVX-512
or AMX). Everything else (other devices and dtypes, N-d inputs) is ``F.linear`` followed by the activation, in
place.

Under ``torch.compile`` the layers are traced as in eager, and each product becomes the op ``mprec::mlp_product``,
which the compiled graph calls as it is: a compiled model's products run on the libraries measured for them, and
inductor fuses the rest around them.
"""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Callable, Iterator, Optional, Sequence

import torch
from torch import Tensor
from torch.nn import functional as F

from ...precision import bf16_native
from ...timing import fastest
from ..arguments import refusing_none, register_fake
from ..spelling import dtype_name, sizes

__all__ = ["linear", "linear_stack", "relu_backward_bias_", "ACTIVATIONS", "GEMM_LIBRARIES", "WEIGHT_GRAD_WAYS",
           "gemm_library", "gemm_choices", "product_ways", "restore_gemm_choices", "run_product", "use_gemm_library"]

ACTIVATIONS = ("none", "relu")
GEMM_LIBRARIES = ("onednn", "blas")
PRODUCTS = ("forward", "input_grad", "weight_grad")
_FUSED = {"none": ("none", []), "relu": ("relu", [None])}
# Rounds when a product's library is measured (mprec.timing.fastest: after one untimed call of each, which pays
# for oneDNN's kernel generation and first-touch of the output, the libraries timed side by side per round). The
# two are often within 10% of each other, and a shared machine's speed moves more than that between calls.
_MEASURE_ROUNDS = 7


def _fused_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


_HAS_FUSED = _fused_available()
# oneDNN computes bfloat16 products only on CPUs with native bfloat16 (AVX-512 or AMX); elsewhere it refuses
# to build the primitive, and bfloat16 goes through F.linear like every other case.
_ONEDNN_DTYPES = (torch.float32, torch.bfloat16) if _HAS_FUSED and bf16_native() else (torch.float32,)


def _library_from_env() -> Optional[str]:
    value = os.environ.get("MPREC_GEMM", "").strip().lower()
    if value in ("", "auto"):
        return None
    if value not in GEMM_LIBRARIES:
        raise ValueError(f"MPREC_GEMM must be one of {('auto',) + GEMM_LIBRARIES}, got {value!r}")
    return value


# MPREC_GEMM's library for the process; a use_gemm_library block sets its own in _block.library for its thread,
# so that a block in one thread (a test, a benchmark) does not decide the products other threads run meanwhile.
_env_library: Optional[str] = _library_from_env()
_block = threading.local()
_choices: dict[tuple, str] = {}
_choices_lock = threading.Lock()


# The three products on each library. ``b`` operands may be strided views (transposes): oneDNN and mm read them.
def _onednn(a: Tensor, b: Tensor, activation: str = "none", bias: Optional[Tensor] = None) -> Tensor:
    """``activation(a @ b.T + bias)`` by oneDNN."""
    name, scalars = _FUSED[activation]
    return torch.ops.mkldnn._linear_pointwise(a, b, bias, name, scalars, "")


def _blas(a: Tensor, b: Tensor, activation: str = "none", bias: Optional[Tensor] = None) -> Tensor:
    """``activation(a @ b.T + bias)`` by torch's addmm / mm."""
    y = a.mm(b.t()) if bias is None else torch.addmm(bias, a, b.t())
    return y.relu_() if activation == "relu" else y


_LIBRARIES: dict[str, Callable[..., Tensor]] = {"onednn": _onednn, "blas": _blas}
# The weight gradient ``grad.T @ x`` is also ``(x.T @ grad).T``. When x is thin (DLRM's first layer reads 13 dense
# features) the libraries run the second form several times faster: its output is the thin side's rows, and
# each is a long dot product over the batch. So that product measures both forms on both libraries.
_TRANSPOSED = "-transposed"
WEIGHT_GRAD_WAYS = GEMM_LIBRARIES + tuple(library + _TRANSPOSED for library in GEMM_LIBRARIES)


def product_ways(product: str) -> tuple[str, ...]:
    """The ways :func:`gemm_library` chooses among for ``product``: libraries, and for the weight gradient
    each library's transposed form too."""
    return WEIGHT_GRAD_WAYS if product == "weight_grad" else GEMM_LIBRARIES


def run_product(way: str, a: Tensor, b: Tensor, activation: str = "none", bias: Optional[Tensor] = None) -> Tensor:
    """``activation(a @ b.T + bias)`` the way named (one of :func:`product_ways`)."""
    if way.endswith(_TRANSPOSED):  # weight gradients only: no activation, no bias
        return _LIBRARIES[way.removesuffix(_TRANSPOSED)](b, a).t().contiguous()
    return _LIBRARIES[way](a, b, activation, bias)


def gemm_library(product: str, a: Tensor, b: Tensor, activation: str = "none", bias: Optional[Tensor] = None) -> str:
    """The library that runs ``activation(a @ b.T + bias)`` for ``product`` (one of :data:`PRODUCTS`): the
    one fixed by ``MPREC_GEMM`` / :func:`use_gemm_library`, else the one measured fastest for this product,
    layer widths, power of two of the batch, dtype and thread count (measured on these operands the first
    time, then remembered for the process). A measured weight gradient may also name the transposed form
    (``"blas-transposed"``, one of :data:`WEIGHT_GRAD_WAYS`)."""
    fixed = getattr(_block, "library", _env_library)
    if fixed is not None:
        return fixed
    # The batch is a's rows in the forward and input gradient, its columns in the weight gradient.
    m, k = a.shape
    batch, m, k = (k, m, None) if product == "weight_grad" else (m, None, k)
    key = (product, batch.bit_length(), m, k, b.shape[0], activation, bias is not None, a.dtype,
           torch.get_num_threads())
    library = _choices.get(key)
    if library is None:
        library = _measure(product, a, b, activation, bias)
        with _choices_lock:
            library = _choices.setdefault(key, library)
    return library


def _measure(product: str, a: Tensor, b: Tensor, activation: str, bias: Optional[Tensor]) -> str:
    with torch.no_grad(), torch.autograd.profiler.record_function("mprec::measure_gemm_libraries"):
        candidates = {way: (lambda way=way: run_product(way, a, b, activation, bias)) for way in product_ways(product)}
        return fastest(candidates, _MEASURE_ROUNDS)


def _product(product: str, a: Tensor, b: Tensor, activation: str = "none", bias: Optional[Tensor] = None) -> Tensor:
    if torch.compiler.is_compiling():
        # The op, which the compiled graph calls as it is: the library is chosen (measured) when it runs, as in
        # eager. Traced as F.linear the product would be inductor's GEMM; as oneDNN's linear op, inductor refuses
        # it (it lowers that op only on weights frozen into constants).
        return torch.ops.mprec.mlp_product(a, b, bias, product, activation)
    return run_product(gemm_library(product, a, b, activation, bias), a, b, activation, bias)


def _check_product(op: str, a: Tensor, b: Tensor, bias: Optional[Tensor], product: str, activation: str) -> None:
    """mprec::mlp_product's checks: its CPU kernel's and its fake kernel's."""
    if product not in PRODUCTS:
        raise ValueError(f"{op}: product must be one of {PRODUCTS}, got {product!r}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"{op}: activation must be one of {ACTIVATIONS}, got {activation!r}")
    if product == "weight_grad" and (activation != "none" or bias is not None):
        raise ValueError(f"{op}: a weight gradient takes no activation or bias, got activation {activation!r} "
                         f"and {'a' if bias is not None else 'no'} bias")
    for name, t in (("a", a), ("b", b), ("bias", bias)):
        if t is not None and t.device.type != "cpu":
            raise ValueError(f"{op}: runs on the CPU, got {name} on {t.device}")
    if a.dtype not in _ONEDNN_DTYPES or b.dtype != a.dtype:
        allowed = " or ".join(dtype_name(d) for d in _ONEDNN_DTYPES)
        raise ValueError(f"{op}: a and b must both be {allowed}, got {dtype_name(a.dtype)} and {dtype_name(b.dtype)}")
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"{op}: a must be [M, K] and b [N, K], got shapes {sizes(a)} and {sizes(b)}")
    if bias is not None and (bias.dtype != a.dtype or bias.dim() != 1 or bias.shape[0] != b.shape[0]):
        raise ValueError(f"{op}: bias must be {dtype_name(a.dtype)} [{b.shape[0]}], got {dtype_name(bias.dtype)} "
                         f"{sizes(bias)}")


def _mlp_product_cpu(a: Tensor, b: Tensor, bias: Optional[Tensor], product: str, activation: str) -> Tensor:
    _check_product("mprec::mlp_product", a, b, bias, product, activation)
    return run_product(gemm_library(product, a, b, activation, bias), a, b, activation, bias)


@register_fake("mprec::mlp_product")
def _mlp_product_fake(a, b, bias, product, activation):
    _check_product("mprec::mlp_product", a, b, bias, product, activation)
    return a.new_empty((a.shape[0], b.shape[0]))


_LIBRARY = torch.library.Library("mprec", "IMPL")
# On CUDA too, where the check refuses the tensors in the fake kernel's words rather than the dispatcher's.
for _key in ("CPU", "CUDA"):
    _LIBRARY.impl("mlp_product", refusing_none("mprec::mlp_product", _mlp_product_cpu), _key)


def gemm_choices() -> list[list]:
    """The libraries measured so far, as JSON-able rows: ``[product, bit length of the batch, a's other side,
    a's and b's shared side (None where it is the batch), b's other side, activation, bias, dtype, threads,
    library]``."""
    with _choices_lock:
        return [[*key[:7], str(key[7]).removeprefix("torch."), *key[8:], library] for key, library in _choices.items()]


def restore_gemm_choices(rows: list) -> None:
    """Makes the choices of :func:`gemm_choices` (another process's, e.g. from a checkpoint) this process's, so
    the same products run on the same libraries. Rows of unknown libraries or dtypes are ignored."""
    restored = {}
    for *key, library in rows:
        dtype = getattr(torch, str(key[7]), None)
        if isinstance(dtype, torch.dtype) and key[0] in PRODUCTS and library in product_ways(key[0]):
            restored[(*key[:7], dtype, *key[8:])] = library
    with _choices_lock:
        _choices.update(restored)


@contextlib.contextmanager
def use_gemm_library(library: Optional[str]) -> Iterator[None]:
    """Runs every product on ``library`` (``"onednn"`` or ``"blas"``; None: measured per product) inside the
    block, as ``MPREC_GEMM`` does for a process. The choice is the calling thread's: other threads keep theirs.
    A backward run outside the block (or in another thread) chooses as it would without the block."""
    if library is not None and library not in GEMM_LIBRARIES:
        raise ValueError(f"mprec.ops.use_gemm_library: library must be one of {GEMM_LIBRARIES} or None, "
                         f"got {library!r}")
    missing = object()
    previous = getattr(_block, "library", missing)
    _block.library = library
    try:
        yield
    finally:
        if previous is missing:
            del _block.library
        else:
            _block.library = previous


# relu_backward_bias_'s dtypes.
_FUSED_BACKWARD_DTYPES = (torch.float32, torch.float64, torch.bfloat16)


class _Stack(torch.autograd.Function):
    """Layers ``activation_i(x @ weight_i.T + bias_i)`` in order, each of their products on its library (2-D, one
    dtype), as one autograd node: the activations and gradients between the layers are the node's own, so the
    backward may overwrite them (:func:`relu_backward_bias_`) and pays autograd's per-node cost once per stack."""

    @staticmethod
    def forward(ctx, x: Tensor, activations: tuple, *params: Optional[Tensor]) -> Tensor:
        n = len(activations)
        weights, biases = params[:n], params[n:]
        # ReLU's backward needs only its output (y > 0), so the input and each layer's output are all it keeps. The
        # last output is the caller's: kept only behind a ReLU, so that the caller may change it in place
        # otherwise, as after F.linear.
        outputs = [x]
        for weight, bias, activation in zip(weights, biases, activations):
            outputs.append(_product("forward", outputs[-1], weight, activation, bias))
        ctx.save_for_backward(*outputs[:-1], outputs[-1] if activations[-1] == "relu" else None, *weights)
        ctx.activations = activations
        ctx.has_bias = tuple(bias is not None for bias in biases)
        return outputs[-1]

    @staticmethod
    def backward(ctx, grad: Tensor):
        activations = ctx.activations
        n = len(activations)
        saved = ctx.saved_tensors
        outputs, weights = saved[:n + 1], saved[n + 1:]
        needs = ctx.needs_input_grad  # x, activations, weights..., biases...
        grad_weights: list[Optional[Tensor]] = [None] * n
        grad_biases: list[Optional[Tensor]] = [None] * n
        # Whether anything before layer i needs a gradient, i.e. whether layer i computes its input gradient.
        below = [needs[0]]
        for i in range(n - 1):
            below.append(below[-1] or needs[2 + i] or needs[2 + n + i])
        own = False  # whether grad is this node's (an input gradient it computed) rather than the caller's
        for i in reversed(range(n)):
            relu = activations[i] == "relu"
            bias_grad = ctx.has_bias[i] and needs[2 + n + i]
            if relu and own and grad.dtype in _FUSED_BACKWARD_DTYPES and not torch.is_grad_enabled():
                # One pass, in place, for ReLU's backward and the bias gradient.
                grad_biases[i] = relu_backward_bias_(grad, outputs[i + 1])
            else:
                if not grad.is_contiguous():
                    grad = grad.contiguous()
                if relu:
                    grad = torch.ops.aten.threshold_backward(grad, outputs[i + 1], 0)
                if bias_grad:
                    grad_biases[i] = grad.sum(0)
            if needs[2 + i]:
                grad_weights[i] = _product("weight_grad", grad.t(), outputs[i].t())
            if not below[i]:
                break
            grad = _product("input_grad", grad, weights[i].t())
            own = True
        return (grad if needs[0] else None, None, *grad_weights,
                *(g if has else None for g, has in zip(grad_biases, ctx.has_bias)))


def relu_backward_bias_(grad: Tensor, output: Tensor) -> Tensor:
    """The backward of ``relu(x @ weight.T + bias)`` before its products, in one pass: ``grad [B, N]`` becomes
    ``grad * (output > 0)`` in place (ReLU's backward, from the layer's output), and the result is its column sums
    ``[N]`` (the bias gradient), summed over fixed row blocks in order (the same bits at any thread count).
    float32, float64 or bfloat16 (summed in float32), CPU. Where aten's ``threshold_backward`` and ``sum`` read
    and write [B, N] three times and fill a new buffer, this reads it once and writes it back while its lines are
    in cache."""
    return torch.ops.mprec.relu_backward_bias_(grad, output)


def _check_relu_backward_bias(op: str, grad: Tensor, output: Tensor) -> None:
    """csrc/cpu/mlp.cpp's checks, in its order."""
    if grad.dtype not in _FUSED_BACKWARD_DTYPES:
        raise ValueError(f"{op}: grad must be float32, float64 or bfloat16, got {dtype_name(grad.dtype)}")
    if output.dtype != grad.dtype:
        raise ValueError(f"{op}: output's dtype {dtype_name(output.dtype)} differs from grad's "
                         f"{dtype_name(grad.dtype)}")
    if grad.dim() != 2:
        raise ValueError(f"{op}: grad must be [B, N], got shape {sizes(grad)}")
    if output.shape != grad.shape:
        raise ValueError(f"{op}: output's shape {sizes(output)} differs from grad's {sizes(grad)}")


@register_fake("mprec::relu_backward_bias_")
def _relu_backward_bias_fake(grad, output):
    _check_relu_backward_bias("mprec::relu_backward_bias_", grad, output)
    return grad.new_empty((grad.shape[1],))


def linear(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, activation: str = "none") -> Tensor:
    """``activation(x @ weight.T + bias)`` (see the module's doc)."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"mprec.ops.linear: activation must be one of {ACTIVATIONS}, got {activation!r}")
    return _layers(x, [weight], [bias], [activation])


def linear_stack(x: Tensor, weights: Sequence[Tensor], biases: Sequence[Optional[Tensor]],
                 activations: Sequence[str]) -> Tensor:
    """The layers ``activations[i](x @ weights[i].T + biases[i])`` in order (a bias may be None): what
    :func:`linear` computes layer by layer, with the same products, but one autograd node for the stack. Its
    backward pays autograd's per-node cost once, and takes ReLU's backward and the bias gradient of every layer
    but the last in one pass over a gradient that only the node holds (:func:`relu_backward_bias_`); the
    caller's gradient is never written. :class:`mprec.nn.MLP` runs its layers through it."""
    if not len(weights) == len(biases) == len(activations):
        raise ValueError(f"mprec.ops.linear_stack: weights, biases and activations must be as many, got "
                         f"{len(weights)}, {len(biases)} and {len(activations)}")
    for activation in activations:
        if activation not in ACTIVATIONS:
            raise ValueError(f"mprec.ops.linear_stack: activation must be one of {ACTIVATIONS}, got {activation!r}")
    return _layers(x, list(weights), list(biases), list(activations)) if weights else x


def _cast(t: Optional[Tensor], dtype: torch.dtype) -> Optional[Tensor]:
    # An autograd op where it casts: gradients come back in the parameter's own dtype. Checked here first because
    # a no-op .to() still costs a dispatch, which small inference batches feel per layer.
    return t if t is None or t.dtype == dtype else t.to(dtype)


def _layers(x: Tensor, weights: list, biases: list, activations: list) -> Tensor:
    # Under torch.compile too: each product is then the op mprec::mlp_product (_product).
    if _HAS_FUSED and x.device.type == "cpu" and x.dim() == 2 and x.shape[0] > 0 and \
            all(w.device.type == "cpu" for w in weights):
        autocast = torch.is_autocast_enabled("cpu")
        dtype = torch.get_autocast_dtype("cpu") if autocast else x.dtype
        if dtype in _ONEDNN_DTYPES and all(w.dtype in (torch.float32, torch.bfloat16) for w in weights):
            x = _cast(x, dtype)
            weights = [_cast(w, dtype) for w in weights]
            biases = [_cast(b, dtype) for b in biases]
            needs_grad = torch.is_grad_enabled() and (
                x.requires_grad or any(w.requires_grad for w in weights)
                or any(b is not None and b.requires_grad for b in biases))
            # The products run in `dtype` as cast; autocast, where it is on, must not cast them again. Entering
            # the context only then spares the other calls its cost.
            with torch.autocast("cpu", enabled=False) if autocast else contextlib.nullcontext():
                if not needs_grad:
                    for weight, bias, activation in zip(weights, biases, activations):
                        x = _product("forward", x, weight, activation, bias)
                    return x
                return _Stack.apply(x.contiguous(), tuple(activations), *(w.contiguous() for w in weights), *biases)
    for weight, bias, activation in zip(weights, biases, activations):
        x = F.linear(x, weight, bias)
        if activation == "relu":
            x = torch.relu_(x)
    return x
