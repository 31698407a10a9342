"""Graceful shutdown: SIGTERM to `bentoml serve` (what Kubernetes sends PID 1) with requests in flight."""

from __future__ import annotations

import io
import signal
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.server import start_server

MODEL = "shapes-instances"


def _jpeg(seed: int) -> bytes:
    buffer = io.BytesIO()
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()


def _slow_requests(url: str, count: int, images: int) -> tuple[list[threading.Thread], list[object]]:
    """`count` requests of `images` images each, started now; their statuses (or errors) land in the list."""
    results: list[object] = []
    files = [("images", (f"{i}.jpg", _jpeg(i), "image/jpeg")) for i in range(images)]

    def call() -> None:
        try:
            results.append(httpx.post(f"{url}/segment", files=files, data={"model": MODEL}, timeout=120).status_code)
        except httpx.HTTPError as exc:
            results.append(repr(exc))

    threads = [threading.Thread(target=call) for _ in range(count)]
    for thread in threads:
        thread.start()
    return threads, results


def _wait_in_flight(url: str, count: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = httpx.get(f"{url}/metrics", timeout=10).text
        line = next((ln for ln in text.splitlines() if ln.startswith("bentoml_service_request_in_progress{")
                     and 'endpoint="/segment"' in ln), None)  # fmt: skip
        if line is not None and float(line.rsplit(" ", 1)[1]) >= count:
            return
        time.sleep(0.05)
    raise AssertionError("the requests never got in flight")


def test_sigterm_drains_requests_in_flight(repository: Path, tmp_path: Path) -> None:
    server = start_server(repository, tmp_path / "serve.log", env={"OPTIC_SHUTDOWN_GRACE_S": "60"})
    try:
        keep_alive = httpx.Client(timeout=30)
        assert keep_alive.get(f"{server.url}/readyz").status_code == 200
        threads, results = _slow_requests(server.url, 4, 16)
        _wait_in_flight(server.url, 4)
        signalled = time.monotonic()
        server.process.send_signal(signal.SIGTERM)

        time.sleep(0.2)
        ready = httpx.get(f"{server.url}/readyz", timeout=5)
        assert ready.status_code == 503 and ready.json()["reason"] == "shutting_down", ready.text
        assert time.monotonic() - signalled < 1.0
        # A new request on a connection opened before: refused, and told to go elsewhere.
        late = keep_alive.post(f"{server.url}/classify", files=[("images", ("a.jpg", _jpeg(9), "image/jpeg"))])
        assert late.status_code == 503 and late.json()["reason"] == "shutting_down"
        assert late.headers["connection"] == "close"
        assert httpx.get(f"{server.url}/livez", timeout=5).status_code == 200  # alive: do not restart it

        for thread in threads:
            thread.join(timeout=120)
        assert results == [200, 200, 200, 200], results
        assert server.process.wait(timeout=30) == 0
        assert time.monotonic() - signalled < 60
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{server.url}/livez", timeout=2)
        assert "drained: every accepted request answered" in server.log()
    finally:
        server.stop()


def test_grace_period_bounds_the_wait(repository: Path, tmp_path: Path) -> None:
    server = start_server(repository, tmp_path / "serve.log", env={"OPTIC_SHUTDOWN_GRACE_S": "1"})
    try:
        threads, _ = _slow_requests(server.url, 6, 32)
        _wait_in_flight(server.url, 6)
        signalled = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        server.process.wait(timeout=30)
        assert time.monotonic() - signalled < 10, "the grace period did not bound the shutdown"
        assert "grace period over" in server.log()
        for thread in threads:
            thread.join(timeout=30)
    finally:
        server.stop()
