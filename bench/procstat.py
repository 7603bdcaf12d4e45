"""Per-process resource figures read from ``/proc`` (Linux): resident memory and CPU time of the processes
of a benchmark stack, so each section can say which process a figure belongs to."""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Mapping
from dataclasses import dataclass

_TICKS = os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    """Resident set size of ``pid`` in KiB (``VmRSS``)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time ``pid`` has used so far."""
    with open(f"/proc/{pid}/stat") as stat:
        # The command name (field 2) may hold spaces: fields are counted after its closing parenthesis.
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


@dataclass
class CpuWindow:
    """CPU use of named processes over a window: ``with CpuWindow(pids) as w: …``; then ``w.percent``."""

    pids: Mapping[str, int]

    def __enter__(self) -> CpuWindow:
        self._start = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        self._started = time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        elapsed = time.monotonic() - self._started
        self.seconds = elapsed
        self.percent = {
            name: round(100 * (cpu_seconds(pid) - self._start[name]) / elapsed, 2) for name, pid in self.pids.items()
        }


def raise_open_files_limit(wanted: int) -> int:
    """Lift this process's open-file limit towards ``wanted`` (up to the hard limit); children inherit it.
    Returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return max(soft, target)
