"""How many threads a replica runs, from the CPUs it may use.

On CPU the default is one intra-op thread per sub-batch and one sub-batch per CPU. This model's
ops are small (hidden 768, sequences of 10-200 tokens): with two intra-op threads a forward spends
much of its time in OpenMP barriers between ops, and when another process takes a core (the HTTP
proxy, the ingress) a barrier waits a whole time slice for it. Independent single-threaded
sub-batches have no barriers and degrade gracefully (docs/PERFORMANCE.md has the figures).
On a GPU one stream does the work: one worker.
"""

from __future__ import annotations

import math
import os


def affinity_cpus() -> int:
    """CPUs in this process's affinity mask (the cores the OS lets it run on)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def replica_cpus(budget: float | None = None) -> int:
    """CPUs one replica's threads may use.

    `budget` is the replica's CPU reservation when `build_app` sized it for the whole machine
    (`num_cpus: auto`): its threads then take every core it covers, the fraction the ingress
    reserves but rarely uses included (rounded up), never more than the affinity mask. Without
    a budget, Ray's OMP_NUM_THREADS (the floor of the replica's `num_cpus`) decides, as on a
    cluster where each replica is sized explicitly.
    """
    if budget is not None:
        return max(1, min(math.ceil(budget), affinity_cpus()))
    threads = os.environ.get("OMP_NUM_THREADS", "")
    if threads.isdigit() and int(threads) > 0:
        return int(threads)
    return affinity_cpus()


def thread_plan(
    threads: int | None, workers: int | None, on_cpu: bool, cpus: int
) -> tuple[int, int]:
    """(intra-op threads, sub-batches run at once) for a replica with `cpus` CPUs."""
    if not on_cpu:
        return threads or 1, 1
    if threads is None and workers is None:
        return 1, cpus
    if workers is None:
        assert threads is not None
        return threads, max(1, cpus // threads)
    if threads is None:
        return max(1, cpus // workers), workers
    return threads, workers
