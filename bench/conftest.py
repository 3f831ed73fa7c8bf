"""pytest-benchmark settings for bench/: medians are what the summary reports."""

import torch


def pytest_report_header(config):
    import mprec
    return [f"mprec benchmarks: cpu_isa={mprec.cpu_isa()} threads={torch.get_num_threads()}"]
