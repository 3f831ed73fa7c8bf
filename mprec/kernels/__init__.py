"""Triton kernels of the mprec ops.

One module per op family (``embedding_bag``, ``dhe``), each holding its ``@triton.jit`` kernels
(``_<op>_kernel``) and plain launchers that take tensors and return tensors. The launchers do no argument
checking: each family's GPU glue (``mprec/ops/<family>/gpu.py``) checks, launches and turns the kernels' error
flag into the CPU kernels' messages; :mod:`mprec.ops.gpu` registers the result as the ops' CUDA kernels.

Without a GPU, the launchers run on CPU tensors under ``TRITON_INTERPRET=1`` (set before the first launch),
which is how the tests check the kernels in CI. To add a kernel: write it and its launcher here, wrap it in its
family's GPU glue (``mprec/ops/<family>/gpu.py``, whose ``TRITON_KERNELS`` :mod:`mprec.ops.gpu` registers), and
add its cases to ``tests/test_ops_gpu.py``.
"""
