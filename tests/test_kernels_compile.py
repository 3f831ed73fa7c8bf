"""The Triton kernels compile for Hopper (sm_90), and into the instructions they were written for.

Triton's interpreter (tests/test_ops_gpu.py) checks what the kernels compute, but it runs them as Python: it
accepts code the compiler rejects, and says nothing of the machine code. Compiling needs no GPU (Triton
ships ptxas), so this runs everywhere: every kernel, in the specialisations the launchers use, for a Hopper
target, with the 16-byte alignment Triton assumes at launch for aligned pointers and integers divisible by
16. The PTX is then checked for what each kernel's speed rests on: 16-byte row loads in the embedding bags,
float atomics in their backward, tensor-core products in the bfloat16 DHE, float64-reciprocal reductions in
the hash.

Triton decides at import whether it interprets, and this test session interprets (tests/conftest.py), so
the compilation runs in a child process with the interpreter off: this file run as a script.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

pytest.importorskip("triton")

EB_POINTERS = ("out_ptr", "max_indices_ptr", "weights_ptr", "indices_ptr", "offsets_ptr", "per_sample_weights_ptr",
               "table_offsets_ptr", "table_rows_ptr", "table_dims_ptr", "table_cols_ptr", "table_padding_ptr",
               "error_ptr")
DHE_POINTERS = ("out_ptr", "ids_ptr", "hash_a_ptr", "hash_b_ptr", "weight_ptr", "bias_ptr", "error_ptr")


def _eb_signature(weight: str, index: str) -> dict:
    sig = {name: "*i64" for name in EB_POINTERS}
    sig.update(out_ptr=f"*{weight}", weights_ptr=f"*{weight}", indices_ptr=f"*{index}", offsets_ptr=f"*{index}",
               per_sample_weights_ptr="*fp32", error_ptr="*i32", bags_per_table="i64", num_offsets="i64",
               num_indices="i64", out_stride="i64")
    return sig


def cases() -> dict:
    """case -> (module, kernel, signature, constexprs (dtype names as strings), 16-byte aligned arguments)."""
    out = {}
    for weight, itemsize in (("fp32", 4), ("fp16", 2), ("bf16", 2)):
        for mode in (0, 1, 2):
            for index in (("i64", "i32") if (weight, mode) == ("fp32", 0) else ("i64",)):
                consts = dict(MODE=mode, HAS_PER_SAMPLE_WEIGHTS=mode == 0, ACC_DTYPE="float32", DIM_MULTIPLE=8,
                              BLOCK_L=max(1, 4096 // (128 * itemsize)), BLOCK_D=128)
                out[f"eb_forward-{weight}-{mode}-{index}"] = (
                    "embedding_bag", "_embedding_bag_kernel", _eb_signature(weight, index), consts,
                    EB_POINTERS + ("out_stride",))
    out["eb_forward-odd-width"] = (
        "embedding_bag", "_embedding_bag_kernel", _eb_signature("fp32", "i64"),
        dict(MODE=0, HAS_PER_SAMPLE_WEIGHTS=False, ACC_DTYPE="float32", DIM_MULTIPLE=1, BLOCK_L=4, BLOCK_D=256), ())
    for weight in ("fp32", "bf16", "fp64"):
        acc = "fp64" if weight == "fp64" else "fp32"
        for mode in (0, 1, 2):
            sig = _eb_signature(weight, "i64")
            sig.update(grad_weights_ptr=f"*{acc}", grad_ptr=f"*{weight}", grad_stride="i64")
            consts = dict(MODE=mode, HAS_PER_SAMPLE_WEIGHTS=mode == 0,
                          ACC_DTYPE="float64" if acc == "fp64" else "float32", DIM_MULTIPLE=4, BLOCK_L=8, BLOCK_D=128)
            out[f"eb_backward-{weight}-{mode}"] = ("embedding_bag", "_embedding_bag_backward_kernel", sig, consts, ())
    for gaussian in (False, True):
        for weight in ("fp32", "bf16"):
            sig = dict(out_ptr=f"*{weight}", ids_ptr="*i64", hash_a_ptr="*i64", hash_b_ptr="*i64",
                       weight_ptr=f"*{weight}", bias_ptr=f"*{weight}", error_ptr="*i32", n="i64", k="i32",
                       out_features="i32", p="i64", m="i64", uniform_scale="fp32", stride_wh="i32", stride_wk="i32")
            consts = dict(GAUSSIAN=gaussian, HAS_BIAS=True, ACTIVATION=2,
                          DOT_DTYPE="bfloat16" if weight == "bf16" else "float32", EMULATE_BF16=False,
                          INPUT_PRECISION="ieee", BLOCK_N=64, BLOCK_H=128, BLOCK_K=32 if gaussian else 64)
            out[f"dhe_linear-{weight}-{'gaussian' if gaussian else 'uniform'}"] = (
                "dhe", "_dhe_encode_linear_kernel", sig, consts, DHE_POINTERS)
        sig = dict(out_ptr="*fp32", ids_ptr="*i32", hash_a_ptr="*i64", hash_b_ptr="*i64", error_ptr="*i32", n="i32",
                   k="i32", p="i64", m="i64", uniform_scale="fp32")
        out[f"dhe_encode-{'gaussian' if gaussian else 'uniform'}"] = (
            "dhe", "_dhe_encode_kernel", sig, dict(GAUSSIAN=gaussian, RAW=False, BLOCK_N=32, BLOCK_K=64),
            ("out_ptr", "ids_ptr", "hash_a_ptr", "hash_b_ptr"))
    return out


def _compile_all() -> dict:
    """Run in the child process: every case's compile result and the PTX features the tests look at."""
    import importlib

    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    hopper = GPUTarget("cuda", 90, 32)
    results = {}
    for case, (module, kernel, signature, consts, aligned) in cases().items():
        fn = getattr(importlib.import_module(f"mprec.kernels.{module}"), kernel)
        consts = {k: getattr(tl, v) if isinstance(v, str) and v in ("float32", "float64", "bfloat16") else v
                  for k, v in consts.items()}
        names = fn.arg_names
        sig = {name: signature.get(name, "constexpr") for name in names}
        attrs = {(names.index(name),): [["tt.divisibility", 16]] for name in aligned}
        try:
            ptx = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=attrs), target=hopper,
                                 options={"num_warps": 4}).asm["ptx"]
        except Exception as e:  # reported by the test that owns the case
            results[case] = {"error": f"{type(e).__name__}: {e}"}
            continue
        results[case] = {
            "loads": sorted(set(re.findall(r"ld\.global(?:\.[a-z0-9]+)*", ptx))),
            "float_atomic_add": sorted(set(re.findall(r"(?:atom|red)\.global[.a-z]*\.add\.f(?:32|64)", ptx))),
            "tensor_cores": bool(re.search(r"\b(?:mma|wgmma)\.", ptx)),
            "float64_reciprocal_reduction": "cvt.rzi.s64.f64" in ptx,
        }
    return results


@pytest.fixture(scope="module")
def compiled():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-4000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def _ok(compiled, case):
    result = compiled[case]
    assert "error" not in result, f"{case} does not compile for sm_90: {result.get('error')}"
    return result


@pytest.mark.parametrize("case", [c for c in cases() if c.startswith("eb_forward-") and "odd" not in c])
def test_embedding_bag_forward_loads_rows_16_bytes_at_a_time(compiled, case):
    # 128 columns of an aligned row: one 16-byte load per thread (4 floats, or 8 halves as v4.b32).
    assert "ld.global.v4.b32" in _ok(compiled, case)["loads"], compiled[case]["loads"]


def test_embedding_bag_forward_compiles_for_odd_widths(compiled):
    # A width of 129 (DIM_MULTIPLE 1) loads element by element, but must compile; that it has no 16-byte
    # loads also shows the check above can tell the two apart.
    assert "ld.global.v4.b32" not in _ok(compiled, "eb_forward-odd-width")["loads"]


@pytest.mark.parametrize("case", [c for c in cases() if c.startswith("eb_backward-")])
def test_embedding_bag_backward_adds_with_float_atomics(compiled, case):
    width = "f64" if "fp64" in case else "f32"
    assert any(a.endswith(width) for a in _ok(compiled, case)["float_atomic_add"]), compiled[case]


@pytest.mark.parametrize("case", [c for c in cases() if c.startswith("dhe_")])
def test_dhe_kernels_compile(compiled, case):
    result = _ok(compiled, case)
    # The per-hash reductions go through float64 reciprocals (a float64 -> int64 truncation), not 64-bit
    # integer division, which GPUs run as a software routine.
    assert result["float64_reciprocal_reduction"]
    if case.startswith("dhe_linear-bf16"):
        assert result["tensor_cores"], "the bfloat16 product does not use the tensor cores"


if __name__ == "__main__":
    print(json.dumps(_compile_all()))
