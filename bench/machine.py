"""What the benchmark ran on, and how busy the machine was with other work while it measured.

A benchmark on a shared machine is only as good as its quietest window: `CpuProbe` samples the whole
machine's busy CPU time (/proc/stat) next to our own, so every level reports how much CPU *other*
processes took meanwhile, and the run can warn that its numbers are contaminated.
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from typing import Any

TICK = os.sysconf("SC_CLK_TCK")
BUSY_WARNING = 0.10  # cores of other work during a window worth a warning


def machine_busy_s() -> float:
    """CPU seconds spent not idle by every core since boot (user, nice, system, irq, softirq, steal)."""
    with open("/proc/stat") as handle:
        fields = [int(v) for v in handle.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # guest time is already inside user
    return (total - idle) / TICK


def own_cpu_s() -> float:
    times = os.times()
    return times.user + times.system


@dataclass
class CpuWindow:
    seconds: float
    machine_s: float  # busy CPU seconds of the whole machine
    ours_s: float  # of the benchmark process plus, for HTTP levels, the server's process tree

    @property
    def other_cores(self) -> float:
        """Average cores used by processes that are neither the benchmark nor the server."""
        return max(0.0, self.machine_s - self.ours_s) / self.seconds if self.seconds > 0 else 0.0


def idle_check(seconds: float = 1.0) -> float:
    """Cores busy with other work over a short sample, before anything is measured."""
    started, machine, ours = time.perf_counter(), machine_busy_s(), own_cpu_s()
    time.sleep(seconds)
    window = CpuWindow(time.perf_counter() - started, machine_busy_s() - machine, own_cpu_s() - ours)
    return window.other_cores


def wait_quiet(max_s: float) -> float:
    """Wait up to `max_s` for other processes to leave the cores alone; returns the last sample."""
    deadline = time.monotonic() + max_s
    while True:
        other = idle_check(1.0)
        if other <= BUSY_WARNING or time.monotonic() >= deadline:
            return other


def raise_priority(pid: int, steps: int) -> tuple[int, int] | None:
    """Put `pid`'s session `steps` nice levels ahead of other work (root only). With autogroup scheduling
    a process's nice value only counts inside its session, so the session's autogroup is raised too.
    Returns what `restore_priority` needs, or None when it could not."""
    try:
        before = os.getpriority(os.PRIO_PROCESS, pid)
        os.setpriority(os.PRIO_PROCESS, pid, before - steps)
        group_before = _autogroup(pid)
        if group_before is not None:
            _autogroup(pid, max(-20, group_before - steps))
    except OSError:
        return None
    return before, 0 if group_before is None else group_before


def restore_priority(pid: int, saved: tuple[int, int]) -> None:
    try:
        os.setpriority(os.PRIO_PROCESS, pid, saved[0])
        if _autogroup(pid) is not None:
            _autogroup(pid, saved[1])
    except OSError:
        pass


def _autogroup(pid: int, nice: int | None = None) -> int | None:
    """Read (or set) the nice value of `pid`'s autogroup; None where the kernel has no autogroups."""
    path = f"/proc/{pid}/autogroup"
    if not os.path.exists(path):
        return None
    if nice is not None:
        with open(path, "w") as handle:
            handle.write(str(nice))
    with open(path) as handle:
        return int(handle.read().split("nice")[-1])


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(package: str) -> str:
    try:
        return importlib_metadata.version(package)
    except importlib_metadata.PackageNotFoundError:
        return "not installed"


def machine_info() -> dict[str, Any]:
    import onnxruntime as ort

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 1
    return {
        "cpu_model": _cpu_model(),
        "cores_usable": usable,
        "cores_total": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "onnxruntime_providers": ort.get_available_providers(),
        "bentoml": _version("bentoml"),
        "numpy": _version("numpy"),
        "pillow": _version("pillow"),
        "loadavg_at_start": list(os.getloadavg()),
    }
