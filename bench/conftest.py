"""pytest-benchmark settings for bench/: medians are what the summary reports."""

import peer_isa

peer_isa.apply()  # before torch: the peers read their ISA caps once, when loaded (see peer_isa.py)

import torch  # noqa: E402


def pytest_report_header(config):
    import mprec
    return [f"mprec benchmarks: cpu_isa={mprec.cpu_isa()} threads={torch.get_num_threads()} "
            f"torch's kernels: {torch.backends.cpu.get_cpu_capability()} caps: {peer_isa.in_force() or 'none'}"]


def pytest_benchmark_update_machine_info(config, machine_info):
    """What the summaries print beside the CPU: mprec's kernels' ISA, how they prefetch table rows (chosen by the
    CPU's vendor) and the peers' ISA (see peer_isa.py)."""
    import mprec
    machine_info.update(mprec_cpu_isa=mprec.cpu_isa(), mprec_row_prefetch=mprec._C.row_prefetch(),
                        torch_cpu_capability=torch.backends.cpu.get_cpu_capability(), isa_caps=peer_isa.in_force())
