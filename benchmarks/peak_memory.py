"""Peak resident memory of the running process, for the benchmarks that report it."""

from __future__ import annotations

import resource


def peak_mb() -> float:
    """This process's peak resident memory in MB: VmHWM of its own address space (``ru_maxrss`` would carry the
    peak of the process it was forked from across exec: a worker started by a large parent reports the parent's)."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
