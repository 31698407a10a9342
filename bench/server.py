"""Start the real `bentoml serve service.service:Optic` on a free loopback port; always stop it.

The server starts in a new process group; stopping it sends SIGTERM to that group (BentoML's arbiter then
stops its workers, which live in sessions of their own), then SIGKILL to whatever of the process tree is
left. `running_server` is a context manager: Ctrl-C or an error inside it still stops the server.
`scrape` reads the service's own Prometheus histograms, so a run can say where the time went.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
SCRAPED = ("optic_stage_seconds", "optic_batch_size", "bentoml_service_request_duration_seconds")
LABELS = ("model", "version", "stage", "endpoint", "http_response_code")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def get(port: int, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _proc_table() -> dict[int, tuple[int, int, float]]:
    """pid -> (parent pid, start time in clock ticks, user + system CPU seconds), from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    table: dict[int, tuple[int, int, float]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # After the ")": state ppid pgrp ...; utime, stime and starttime are fields 14, 15 and 22 of proc(5).
        table[int(entry)] = (int(fields[1]), int(fields[19]), (int(fields[11]) + int(fields[12])) / tick)
    return table


@dataclass
class Server:
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    grpc_port: int = 0

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def processes(self) -> dict[int, tuple[int, float]]:
        """The server and every descendant (BentoML's workers run in sessions of their own): pid ->
        (start time in clock ticks, user + system CPU seconds so far)."""
        table = _proc_table()
        tree = {self.process.pid}
        grew = True
        while grew:
            children = {pid for pid, (ppid, _, _) in table.items() if ppid in tree} - tree
            tree |= children
            grew = bool(children)
        return {pid: table[pid][1:] for pid in tree if pid in table}

    def cpu_seconds(self) -> float:
        return sum(cpu for _, cpu in self.processes().values())

    def stop(self) -> None:
        """SIGTERM the server's group (BentoML stops its workers), then SIGKILL whatever is left."""
        tree = self.processes() if self.process.poll() is None else {}
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        now = _proc_table()
        for pid, (started, _) in tree.items():
            if pid != self.process.pid and pid in now and now[pid][1] == started:  # same process, not a reuse
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)  # a worker the arbiter left behind


def optic_command(port: int) -> list[str]:
    bentoml = Path(sys.executable).parent / "bentoml"
    return [str(bentoml) if bentoml.exists() else "bentoml", "serve", "service.service:Optic",
            "--host", HOST, "--port", str(port)]


def peer_command(port: int) -> list[str]:
    """bench/peer.py under uvicorn with its [standard] extras (uvloop, httptools), one worker."""
    return [sys.executable, "-m", "uvicorn", "--factory", "bench.peer:create_app", "--host", HOST, "--port",
            str(port), "--loop", "uvloop", "--http", "httptools", "--no-access-log", "--workers", "1"]


def start_server(repository: Path, *, env: dict[str, str] | None = None, timeout_s: float = 180.0,
                 command: Callable[[int], list[str]] = optic_command, ready_path: str = "/readyz") -> Server:
    port = free_port()
    full_env = {**os.environ, "OPTIC_MODEL_REPOSITORY": str(repository.resolve()),
                "BENTOML_DO_NOT_TRACK": "true", "OPTIC_GRPC_PORT": str(free_port()), **(env or {})}
    handle = tempfile.NamedTemporaryFile(prefix="optic-bench-serve-", suffix=".log", delete=False)  # noqa: SIM115
    log_path = Path(handle.name)
    process = subprocess.Popen(
        command(port), cwd=ROOT, env=full_env, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    handle.close()
    server = Server(port, process, log_path, int(full_env["OPTIC_GRPC_PORT"]))
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"bentoml serve exited with {process.returncode}:\n{server.log_tail()}")
            try:
                if get(port, ready_path, timeout=2.0)[0] == 200:
                    return server
            except (OSError, http.client.HTTPException):
                pass
            time.sleep(0.25)
        raise RuntimeError(f"{command(port)[0]} not ready after {timeout_s:.0f}s:\n{server.log_tail()}")
    except BaseException:
        server.stop()
        raise


def scrape(port: int) -> dict[str, float]:
    """Sums and counts of the optic stage/batch histograms and BentoML's request duration, by labels."""
    from prometheus_client.parser import text_string_to_metric_families

    status, body = get(port, "/metrics")
    if status != 200:
        return {}
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(body.decode(errors="replace")):
        for sample in family.samples:
            if sample.name.endswith(("_sum", "_count")) and family.name in SCRAPED:
                labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()) if k in LABELS)
                values[f"{sample.name}{{{labels}}}"] = sample.value
    return values


@contextmanager
def running_server(repository: Path, *, env: dict[str, str] | None = None, peer: bool = False) -> Iterator[Server]:
    """optic (`bentoml serve`), or with `peer` the FastAPI peer, on a free port; always stopped."""
    server = start_server(repository, env=env, command=peer_command if peer else optic_command,
                          ready_path="/livez" if peer else "/readyz")
    try:
        yield server
    finally:
        server.stop()
