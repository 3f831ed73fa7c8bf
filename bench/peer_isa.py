"""The peers' ISA when mprec's is forced down: ``MPREC_CPU_ISA=avx2`` on an AVX-512 machine runs mprec's AVX2
kernels, and the libraries they are compared with must run their AVX2 code too, as they would on an AVX2 machine,
or the benchmark compares AVX2 with AVX-512. torch's own kernels (ATen), FBGEMM (torch's embedding_bag and
fbgemm-gpu-cpu), oneDNN and MKL each read a cap from the environment once, when first loaded or used, so
:func:`apply` runs before torch is imported: in ``bench/run.py`` (for every family it starts) and at the top of
``conftest.py`` and the script benchmarks. A cap set by hand is kept. Only AVX2 has caps: FBGEMM has none below
it, so a scalar run cannot put the peers on its footing.

This module imports nothing but the standard library, for that reason."""

from __future__ import annotations

import getpass
import os
import tempfile
from typing import MutableMapping

CAPS = {
    "avx2": {
        "ATEN_CPU_CAPABILITY": "avx2",
        "FBGEMM_ENABLE_INSTRUCTIONS": "AVX2",
        "ONEDNN_MAX_CPU_ISA": "AVX2",
        "MKL_ENABLE_INSTRUCTIONS": "AVX2",
    },
}


def apply(environ: MutableMapping[str, str] = os.environ) -> dict:
    """Sets the caps of ``MPREC_CPU_ISA`` in ``environ`` (those not already set); returns the caps in force.

    A capped process also gets an inductor cache of its own (``TORCHINDUCTOR_CACHE_DIR``, unless set): inductor keys
    its cached graphs without ATen's cap, so a graph generated under an AVX2 cap (loops that step 8 floats) would be
    reused by an uncapped process, whose kernels are built for AVX-512 (16-float vectors): each loop's last store
    then writes past its buffer."""
    level = environ.get("MPREC_CPU_ISA", "").strip().lower()
    caps = CAPS.get(level, {})
    for name, value in caps.items():
        environ.setdefault(name, value)
    if caps:
        environ.setdefault("TORCHINDUCTOR_CACHE_DIR", inductor_cache_dir(level))
    return {name: environ[name] for name in caps}


def inductor_cache_dir(level: str) -> str:
    """The inductor cache of processes capped at ``level``: beside inductor's default one
    (``<tmp>/torchinductor_<user>``), named after the cap."""
    return os.path.join(tempfile.gettempdir(), f"torchinductor_{getpass.getuser()}_{level}")


def in_force(environ: MutableMapping[str, str] = os.environ) -> dict:
    """The caps set in ``environ``, by whatever means (recorded beside a benchmark's results)."""
    return {name: environ[name] for caps in CAPS.values() for name in caps if name in environ}


def describe(machine_info: dict) -> str:
    """The summaries' words for the caps a run had, from the fields ``conftest.py`` records ('' for none)."""
    caps = machine_info.get("isa_caps") or {}
    if not caps:
        return ""
    levels = "/".join(sorted({value.upper() for value in caps.values()}))
    return (f"; peers capped at {levels} ({', '.join(sorted(caps))}; torch's own kernels: "
            f"{machine_info.get('torch_cpu_capability', '?')})")
