"""The MP-Rec scheduler: paths (a representation model on a device), their measured profiles and latency
models, per-query path choice under an SLA, query streams, a discrete-event simulator and a real
threaded server, and the report that compares MP-Rec with every static policy."""

from .paths import LoadedModel, Path, RowPool, discover_paths, path_providers, register_path_provider
from .policy import MPRecPolicy, Policy, StaticPolicy
from .profile import BATCH_SIZES, LatencyModel, PathProfile, load_profiles, profile_paths, save_profile
from .report import format_table, knee_rate, plot_sweep, summarize
from .server import Server, replay
from .simulate import Simulator, simulate
from .stream import poisson_stream, read_trace, write_trace
from .types import Answer, Decision, DeviceTimeline, Outcome, PathInfo, Query, Request

__all__ = ["LoadedModel", "Path", "RowPool", "discover_paths", "path_providers", "register_path_provider",
           "Decision", "MPRecPolicy", "PathInfo", "Policy", "StaticPolicy", "BATCH_SIZES", "LatencyModel",
           "PathProfile", "load_profiles", "profile_paths", "save_profile", "format_table", "knee_rate",
           "plot_sweep", "summarize", "Answer", "Server", "replay", "Outcome", "Simulator", "simulate", "Query",
           "poisson_stream", "read_trace", "write_trace", "DeviceTimeline", "Request"]
