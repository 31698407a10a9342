"""Drive an HTTP server with wrk (a C load generator) and bench/wrk.lua: prebuilt bodies, statuses counted.

wrk costs little CPU (one thread, epoll, no per-request allocation in Python), which matters when the client
shares the machine's cores with the server it measures; its own CPU time is reported beside the figures.
`apt-get install -y wrk` (the CI script does).
"""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LUA = Path(__file__).resolve().parent / "wrk.lua"


class WrkMissing(RuntimeError):
    pass


def wrk_binary() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise WrkMissing("wrk is not installed: apt-get install -y wrk")
    return path


@dataclass
class WrkResult:
    connections: int
    seconds: float
    requests: int
    statuses: dict[str, int]
    socket_errors: dict[str, int]
    latency_us: dict[str, float]
    client_cpu_s: float
    raw: dict[str, Any] = field(repr=False, default_factory=dict)

    @property
    def ok(self) -> int:
        return self.statuses.get("200", 0)

    @property
    def ok_per_s(self) -> float:
        return self.ok / self.seconds if self.seconds > 0 else 0.0

    @property
    def errors(self) -> dict[str, int]:
        bad = {status: n for status, n in self.statuses.items() if status != "200"}
        bad |= {f"socket_{kind}": n for kind, n in self.socket_errors.items() if n and kind != "status"}
        return bad


class BodySet:
    """Request bodies on disk for wrk.lua to load: one file per body, removed with `close()`."""

    def __init__(self, bodies: list[bytes]) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="optic-wrk-"))
        for i, body in enumerate(bodies):
            (self.path / f"{i}.body").write_bytes(body)

    def close(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def __enter__(self) -> BodySet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_wrk(url: str, bodies: BodySet, content_type: str, *, connections: int, seconds: float,
            threads: int = 1, delay_ms: float = 0.0, timeout_s: float = 30.0, header: str = "") -> WrkResult:
    """One wrk run; latency percentiles are wrk's own (measured per request, in microseconds). `header`:
    one more request header, "Name: value" (the v2 binary extension's Inference-Header-Content-Length)."""
    threads = max(1, min(threads, connections))
    duration = max(1, round(seconds))  # wrk takes whole seconds
    command = [wrk_binary(), f"-t{threads}", f"-c{connections}", f"-d{duration}s", f"--timeout={timeout_s:.0f}s",
               "-s", str(LUA), url, "--", str(bodies.path), content_type, f"{delay_ms:g}", header]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    completed = subprocess.run(command, capture_output=True, text=True, timeout=duration + timeout_s + 30)
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    line = next((ln for ln in completed.stdout.splitlines() if ln.startswith("WRK_JSON ")), None)
    if completed.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({completed.returncode}): {completed.stdout[-2000:]}{completed.stderr[-2000:]}")
    data = json.loads(line.removeprefix("WRK_JSON "))
    return WrkResult(
        connections=connections,
        seconds=data["duration_us"] / 1e6 or elapsed,
        requests=data["requests"],
        statuses=data["statuses"],
        socket_errors=data["socket_errors"],
        latency_us=data["latency_us"],
        client_cpu_s=(after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
        raw=data,
    )
