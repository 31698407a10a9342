"""Closed-loop HTTP clients that stay cheap: the client shares the machine's cores with the server.

Each client thread keeps one `http.client.HTTPConnection` alive and sends prebuilt multipart bodies (one
image per request, built once), so a request costs the client one send and one small read. Every response
is checked: anything but a 200 with results is an error, counted by status (a 503 'overloaded' shows up).
Throughput counts the requests completed inside the measured window, after a warm-up.
"""

from __future__ import annotations

import http.client
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench.images import BenchImage
from bench.server import HOST

BOUNDARY = "optic-bench-7b3f0c2a9d"
CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"
MAX_ERROR_SAMPLES = 5


@dataclass
class LoadResult:
    concurrency: int
    seconds: float
    completed: int
    latencies_ms: list[float]
    errors: dict[str, int]
    error_samples: list[str] = field(default_factory=list)
    client_cpu_s: float = 0.0
    probes: tuple[Any, Any] = (None, None)  # what `probe` returned at the window's start and end

    @property
    def throughput(self) -> float:
        return self.completed / self.seconds if self.seconds > 0 else 0.0


def multipart_body(image: BenchImage, model: str) -> bytes:
    """One request: the `model` form field and one file in the `images` field."""
    dash = f"--{BOUNDARY}\r\n".encode()
    return b"".join([
        dash, b'Content-Disposition: form-data; name="model"\r\n\r\n', model.encode(), b"\r\n",
        dash, f'Content-Disposition: form-data; name="images"; filename="{image.name}"\r\n'.encode(),
        b"Content-Type: image/jpeg\r\n\r\n", image.data, b"\r\n",
        f"--{BOUNDARY}--\r\n".encode(),
    ])


@dataclass
class _Client:
    index: int
    latencies_ms: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    samples: list[str] = field(default_factory=list)

    def fail(self, reason: str, detail: str) -> None:
        self.errors[reason] += 1
        if len(self.samples) < MAX_ERROR_SAMPLES:
            self.samples.append(f"{reason}: {detail[:300]}")


def _client_loop(client: _Client, port: int, path: str, bodies: list[bytes], window: tuple[float, float],
                 start: threading.Barrier, timeout_s: float) -> None:
    headers = {"Content-Type": CONTENT_TYPE}
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout_s)
    cursor = client.index * 7  # clients start on different images
    measure_from, measure_to = window
    start.wait()
    try:
        while True:
            body = bodies[cursor % len(bodies)]
            cursor += 1
            t0 = time.perf_counter()
            if t0 >= measure_to:
                return
            try:
                conn.request("POST", path, body=body, headers=headers)
                response = conn.getresponse()
                data = response.read()
                status = response.status
            except (OSError, http.client.HTTPException) as exc:
                conn.close()  # http.client reconnects on the next request
                if measure_from <= time.perf_counter() <= measure_to:
                    client.fail(type(exc).__name__, str(exc))
                time.sleep(0.01)
                continue
            t1 = time.perf_counter()
            if not measure_from <= t1 <= measure_to:
                continue  # warm-up, or finished after the window closed: completions count where they end
            if status != 200:
                client.fail(str(status), data.decode(errors="replace"))
            elif b'"results"' not in data:
                client.fail("bad_body", data.decode(errors="replace"))
            else:
                client.latencies_ms.append((t1 - t0) * 1000)
    finally:
        conn.close()


def run_load(port: int, path: str, bodies: list[bytes], concurrency: int, *, warmup_s: float, seconds: float,
             probe: Callable[[], Any] | None = None, timeout_s: float = 120.0) -> LoadResult:
    """`concurrency` clients, each sending its next request as soon as the last one is answered.
    `probe` (e.g. CPU counters, a metrics scrape) is called at the measured window's start and end."""
    clients = [_Client(i) for i in range(concurrency)]
    start = threading.Barrier(concurrency + 1)
    begin = time.perf_counter() + 0.05  # a moment for every thread to reach the barrier
    window = (begin + warmup_s, begin + warmup_s + seconds)
    threads = [threading.Thread(target=_client_loop, args=(c, port, path, bodies, window, start, timeout_s),
                                name=f"bench-client-{c.index}", daemon=True) for c in clients]
    for thread in threads:
        thread.start()
    start.wait()
    time.sleep(max(0.0, window[0] - time.perf_counter()))
    first = probe() if probe else None
    cpu_start = sum(os.times()[:2])  # the client's own CPU, the probes' left out
    time.sleep(max(0.0, window[1] - time.perf_counter()))
    cpu_used = sum(os.times()[:2]) - cpu_start
    last = probe() if probe else None
    for thread in threads:
        thread.join()
    errors: Counter[str] = Counter()
    for client in clients:
        errors.update(client.errors)
    return LoadResult(
        concurrency=concurrency,
        seconds=seconds,
        completed=sum(len(c.latencies_ms) for c in clients),
        latencies_ms=[ms for c in clients for ms in c.latencies_ms],
        errors=dict(errors),
        error_samples=[s for c in clients for s in c.samples][:MAX_ERROR_SAMPLES],
        client_cpu_s=cpu_used,
        probes=(first, last),
    )
