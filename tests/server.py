"""Start the real `bentoml serve` on a free loopback port, for tests and the benchmark alike."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    grpc_port: int = 0  # the v2 gRPC port (OPTIC_GRPC_PORT)

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def start_server(repository: Path, log_path: Path, env: dict[str, str] | None = None, timeout_s: float = 300) -> Server:
    port = free_port()
    grpc_port = free_port()
    bentoml = str(Path(sys.executable).parent / "bentoml")
    # A BENTOML_HOME of its own: `bentoml serve` empties $BENTOML_HOME/prometheus_multiproc_dir when it starts, so
    # servers sharing the default one (test sessions running side by side) would wipe each other's /metrics.
    full_env = {
        **os.environ,
        "OPTIC_MODEL_REPOSITORY": str(repository),
        "BENTOML_DO_NOT_TRACK": "true",
        "BENTOML_HOME": str(log_path.parent / f"bentoml-home-{port}"),
        # Never the default 8001: servers side by side would share it (SO_REUSEPORT) and answer for each other.
        "OPTIC_GRPC_PORT": str(grpc_port),
        # Evaluation jobs' state: the server's own, never the checkout's ./optic-data.
        "OPTIC_DATA_DIR": str(log_path.parent / f"optic-data-{port}"),
        **(env or {}),
    }
    handle = log_path.open("wb")
    process = subprocess.Popen(
        [bentoml, "serve", "service.service:Optic", "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT,
        env=full_env,
        stdout=handle,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    server = Server(f"http://127.0.0.1:{port}", process, log_path, int(full_env["OPTIC_GRPC_PORT"]))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"bentoml serve exited with {process.returncode}:\n{server.log()[-4000:]}")
        try:
            if httpx.get(f"{server.url}/readyz", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    server.stop()
    raise RuntimeError(f"bentoml serve not ready after {timeout_s}s:\n{server.log()[-4000:]}")
