"""An open-loop HTTP load for tests: requests leave at a fixed rate whether or not earlier ones are answered.

A closed-loop client slows down with the server it measures; overload only shows when arrivals do not. Each
request is its own connection (asyncio streams, `Connection: close`), so a slow answer never holds the next
request back. Cheap enough at a few hundred requests per second on the test machine.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass


@dataclass
class Sample:
    sent_at: float  # seconds since the load started
    status: int  # 0: no answer (connection refused, reset, timed out)
    latency_s: float
    headers: dict[str, str]
    body: bytes


async def request(
    host: str, port: int, method: str, path: str, body: bytes = b"", content_type: str = "", timeout_s: float = 30.0
) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
    try:
        head = f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n"
        if content_type:
            head += f"Content-Type: {content_type}\r\n"
        head += f"Content-Length: {len(body)}\r\n\r\n"
        writer.write(head.encode() + body)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), timeout_s)
    finally:
        writer.close()
    header_block, _, payload = raw.partition(b"\r\n\r\n")
    lines = header_block.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1]) if lines and len(lines[0].split()) > 1 else 0
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status, headers, payload


async def open_loop(
    host: str,
    port: int,
    path: str,
    bodies: list[bytes],
    content_type: str,
    *,
    rate: float,
    seconds: float,
    timeout_s: float = 30.0,
) -> list[Sample]:
    """`rate` requests per second for `seconds`; returns every request's answer, in the order sent."""
    samples: list[Sample] = []
    start = time.perf_counter()

    async def one(i: int, sent_at: float) -> None:
        t0 = time.perf_counter()
        try:
            status, headers, body = await request(
                host, port, "POST", path, bodies[i % len(bodies)], content_type, timeout_s
            )
        except (OSError, asyncio.TimeoutError, ValueError, IndexError):
            status, headers, body = 0, {}, b""
        samples.append(Sample(sent_at, status, time.perf_counter() - t0, headers, body))

    tasks = []
    n = int(rate * seconds)
    for i in range(n):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, due - start)))
    await asyncio.gather(*tasks)
    return sorted(samples, key=lambda s: s.sent_at)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def probe_loop(
    host: str, port: int, paths: tuple[str, ...], seconds: float, pause_s: float = 0.2, after_s: float = 0.0
) -> list[tuple[str, int, float]]:
    """After `after_s`, GET each path in turn for `seconds`, blocking sockets, one connection each: (path, status,
    seconds).

    Meant for its own process (a spawned one), so that the load generator's event loop, busy with hundreds of
    requests a second, never delays a probe's timing: what is measured is the server, as a kubelet would see it.
    """
    import socket

    probes: list[tuple[str, int, float]] = []
    time.sleep(after_s)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for path in paths:
            started = time.perf_counter()
            try:
                with socket.create_connection((host, port), timeout=10) as sock:
                    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode())
                    raw = b""
                    while chunk := sock.recv(65536):
                        raw += chunk
                status = int(raw.split(b" ", 2)[1]) if raw.startswith(b"HTTP/") else 0
            except OSError:
                status = 0
            probes.append((path, status, time.perf_counter() - started))
        time.sleep(pause_s)
    return probes


def overload_phases(
    host: str, port: int, path: str, bodies: list[bytes], content_type: str, rate: float, seconds: float
) -> tuple[list[Sample], list[Sample], list[Sample]]:
    """Meant for its own process: 2 s at 2 requests/s (normal), `seconds` at `rate`, a second's pause, then 3 s
    at 2/s again (back to normal?). The three phases' samples."""

    async def phases() -> tuple[list[Sample], list[Sample], list[Sample]]:
        idle = await open_loop(host, port, path, bodies, content_type, rate=2, seconds=2)
        loaded = await open_loop(host, port, path, bodies, content_type, rate=rate, seconds=seconds)
        await asyncio.sleep(1.0)  # "back to normal within a second of the load stopping"
        after = await open_loop(host, port, path, bodies, content_type, rate=2, seconds=3)
        return idle, loaded, after

    return asyncio.run(phases())
