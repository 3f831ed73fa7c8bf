"""A group of worker processes for the multi-process tests: ``world_size`` ranks in one gloo process group on
loopback, started once and kept for a test module, each running the functions the test sends it.

``Workers.run(fn, *args)`` calls ``fn(*args)`` on every rank (``fn`` must be importable: a module-level function)
and returns the ranks' results in rank order. A rank that raises fails the call with its traceback; a call that
does not finish within its timeout (a rank stuck in a collective) kills the group and fails, so a test never
hangs.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import queue
import socket
import traceback
from datetime import timedelta

_CONTEXT = mp.get_context("spawn")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(rank: int, world_size: int, port: int, tasks, results, threads: int) -> None:
    import torch
    import torch.distributed as dist
    from torch.utils._pytree import tree_map

    torch.set_num_threads(threads)
    os.environ.setdefault("TRITON_INTERPRET", "1")
    # Imported before the group is made: see mprec.distributed.shutdown.
    import mprec  # noqa: F401  (the ops)
    from mprec.distributed import shutdown
    try:
        import torchrec  # noqa: F401
    except ImportError:
        pass
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size,
                            timeout=timedelta(seconds=60))

    while True:
        task = tasks.get()
        if task is None:
            break
        fn, args = task
        try:
            value = tree_map(lambda x: x.detach().clone() if isinstance(x, torch.Tensor) else x, fn(*args))
            # Pickled here, where a failure can still be reported (the queue pickles in a thread of its own).
            results.put((rank, True, pickle.dumps(value)))
        except BaseException:  # noqa: BLE001 - reported to the test, which fails
            results.put((rank, False, traceback.format_exc()))
    shutdown()


class WorkerError(RuntimeError):
    pass


class Workers:
    def __init__(self, world_size: int = 2, threads: int = 1, timeout: float = 120.0) -> None:
        self.world_size, self.threads, self.timeout = world_size, threads, timeout
        self._processes = None
        self._start()

    def _start(self) -> None:
        world_size, threads = self.world_size, self.threads
        port = free_port()
        self._results = _CONTEXT.Queue()
        self._tasks = [_CONTEXT.Queue() for _ in range(world_size)]
        self._processes = [_CONTEXT.Process(target=_serve, args=(r, world_size, port, self._tasks[r], self._results,
                                                                 threads), daemon=True)
                           for r in range(world_size)]
        for p in self._processes:
            p.start()

    def run(self, fn, *args, timeout: float | None = None) -> list:
        if self._processes is None:  # stopped by an earlier failure: a fresh group
            self._start()
        for q in self._tasks:
            q.put((fn, args))
        out, errors = [None] * self.world_size, []
        for _ in range(self.world_size):
            try:
                rank, ok, value = self._results.get(timeout=timeout or self.timeout)
            except queue.Empty:
                self.close(kill=True)
                raise WorkerError(f"{fn.__name__} did not finish on every rank within {timeout or self.timeout} s")
            if ok:
                out[rank] = pickle.loads(value)
            else:
                errors.append(f"rank {rank}:\n{value}")
        if errors:
            # A rank that failed may have left the others inside a collective: start over next time.
            self.close(kill=True)
            raise WorkerError(f"{fn.__name__} failed\n" + "\n".join(errors))
        return out

    def close(self, kill: bool = False) -> None:
        if self._processes is None:
            return
        if not kill:
            for q in self._tasks:
                q.put(None)
        for p in self._processes:
            p.join(timeout=0 if kill else 30)
            if p.is_alive():
                p.kill()
                p.join()
        self._processes = None
