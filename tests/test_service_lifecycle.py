"""Versions switch without a restart, under load: publish version 2 while clients send continuously, and every
answer is a 200 that names version 1 until it names version 2; a broken version 3 never replaces it."""

from __future__ import annotations

import contextlib
import hashlib
import io
import itertools
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.helpers import get_metrics, metric_value
from tests.load import percentile
from tests.server import Server, start_server

POLL_S = 0.5


@pytest.fixture(scope="module")
def polled(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path]]:
    folder = tmp_path_factory.mktemp("lifecycle")
    models = folder / "models"
    shutil.copytree(repository / "digits", models / "digits")
    env = {"OPTIC_REPOSITORY_POLL_S": str(POLL_S), "OPTIC_VERSION_POLICY": "latest:1"}
    handle = start_server(models, folder / "serve.log", env=env)
    yield handle, models
    handle.stop()


def _publish(models: Path, version: str, *, broken: bool = False) -> None:
    """As the exporter does: written to a hidden folder, then renamed into place in one step."""
    staging = models / "digits" / f".{version}.staging"
    shutil.copytree(models / "digits" / "1", staging)
    meta = json.loads((staging / "model.json").read_text())
    if broken:
        (staging / "model.onnx").write_bytes(b"not a graph" * 64)
        meta["sha256"] = hashlib.sha256((staging / "model.onnx").read_bytes()).hexdigest()
    meta["version"] = version
    (staging / "model.json").write_text(json.dumps(meta))
    os.rename(staging, models / "digits" / version)


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (30, 200, 30)).save(buffer, "PNG")
    return buffer.getvalue()


def test_a_new_version_takes_over_under_load_and_a_broken_one_never_does(polled: tuple[Server, Path]) -> None:
    server, models = polled
    image = _png()
    answers: list[tuple[float, int, str, float]] = []  # (sent at, status, version, latency)
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(timeout=30) as http:
            while not stop.is_set():
                sent = time.perf_counter()
                response = http.post(f"{server.url}/classify", files=[("images", ("a.png", image))],
                                     data={"model": "digits"})  # fmt: skip
                version = response.json()["model"]["version"] if response.status_code == 200 else ""
                answers.append((sent, response.status_code, version, time.perf_counter() - sent))

    before = get_metrics(server.url)
    threads = [threading.Thread(target=client) for _ in range(16)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(3.0)
        published = time.perf_counter()
        _publish(models, "2")
        deadline = time.monotonic() + 30
        while not any(a[2] == "2" for a in answers) and time.monotonic() < deadline:
            time.sleep(0.1)
        switched = min((a[0] for a in answers if a[2] == "2"), default=None)
        assert switched is not None, "version 2 never took traffic"
        time.sleep(2.0)
        _publish(models, "3", broken=True)
        time.sleep(6 * POLL_S)
    finally:
        stop.set()
        for thread in threads:
            thread.join()

    assert {a[1] for a in answers} == {200}, "every request answered 200 while versions switched"
    versions = [a[2] for a in sorted(answers)]
    changes = sum(1 for first, second in itertools.pairwise(versions) if first != second)
    assert versions[0] == "1" and versions[-1] == "2", "the broken version 3 never took traffic"
    # Clients in flight at the switch may answer out of order by a request or two: one switch, give or take.
    late_ones = sum(1 for a in answers if a[2] == "1" and a[0] > switched + 1.0)
    assert late_ones == 0 and changes <= 16, (changes, late_ones)
    steady = percentile([a[3] for a in answers if a[0] < published], 99)
    during = percentile([a[3] for a in answers if published <= a[0] <= switched + 1.0], 99)
    assert during <= 2 * steady + 0.02, f"p99 during the switch {during * 1000:.1f} ms, steady {steady * 1000:.1f} ms"
    print(f"\n{len(answers)} answers, all 200; version changes in send order {changes}; p99 steady "  # noqa: T201
          f"{steady * 1000:.1f} ms, during the switch {during * 1000:.1f} ms; v2 served "
          f"{switched - published:.2f} s after it was published")  # fmt: skip

    body = httpx.get(f"{server.url}/models", timeout=10).json()
    assert [(m["name"], m["version"]) for m in body["models"]] == [("digits", "2")], "latest:1 retired version 1"
    assert "ONNX Runtime cannot run it" in body["failed"]["digits/3"]
    index = httpx.post(f"{server.url}/v2/repository/index", timeout=10).json()
    assert {(e["version"], e["state"]) for e in index if e["name"] == "digits"} == {("2", "READY"),
                                                                                   ("3", "UNAVAILABLE")}
    after = get_metrics(server.url)
    live = {v: metric_value(after, "optic_model_info", model="digits", version=v) for v in ("1", "2")}
    assert live == {"1": 0, "2": 1}, f"optic_model_info names the live version: {live}"
    for outcome in ("loaded", "retired", "failed"):
        moved = metric_value(after, "optic_model_switches_total", model="digits", outcome=outcome) - metric_value(
            before, "optic_model_switches_total", model="digits", outcome=outcome
        )
        assert moved == 1, (outcome, moved)

    # Removing the broken version's folder forgets it; the served one is untouched.
    shutil.rmtree(models / "digits" / "3")
    deadline = time.monotonic() + 10
    while "digits/3" in httpx.get(f"{server.url}/models", timeout=10).json()["failed"] and time.monotonic() < deadline:
        time.sleep(0.2)
    body = httpx.get(f"{server.url}/models", timeout=10).json()
    assert body["failed"] == {} and [m["version"] for m in body["models"]] == ["2"]

    # Rolling back under latest:1: move the new version out, and the one before comes back.
    shutil.move(models / "digits" / "2", models.parent / "digits-2-withdrawn")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        response = httpx.post(f"{server.url}/classify", files=[("images", ("a.png", image))], data={"model": "digits"},
                              timeout=30)  # fmt: skip
        assert response.status_code == 200
        if response.json()["model"]["version"] == "1":
            break
        time.sleep(0.1)
    assert [m["version"] for m in httpx.get(f"{server.url}/models", timeout=10).json()["models"]] == ["1"]
    assert server.process.poll() is None


KEY = "lifecycle-key-0123456789"


@pytest.fixture(scope="module")
def controlled(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path]]:
    """Two workers, polling and load/unload calls both on, API keys set."""
    folder = tmp_path_factory.mktemp("control")
    models = folder / "models"
    shutil.copytree(repository / "digits", models / "digits")
    env = {"OPTIC_WORKERS": "2", "OPTIC_MODEL_CONTROL": "true", "OPTIC_REPOSITORY_POLL_S": "1",
           "OPTIC_API_KEYS": f"ops:{KEY}"}  # fmt: skip
    handle = start_server(models, folder / "serve.log", env=env)
    yield handle, models
    handle.stop()


def _versions_seen(server: Server, count: int = 30) -> list[str]:
    """`count` requests, each on a new connection (so both workers answer some): the version each names."""
    seen = []
    for _ in range(count):
        response = httpx.post(f"{server.url}/classify", files=[("images", ("a.png", _png()))],
                              data={"model": "digits"}, headers={"X-API-Key": KEY}, timeout=30)  # fmt: skip
        seen.append(response.json()["model"]["version"] if response.status_code == 200 else
                    response.json()["reason"])  # fmt: skip
    return seen


def _until(server: Server, expected: set[str], seconds: float = 10.0) -> float:
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        if set(_versions_seen(server)) == expected:
            return time.monotonic() - started
        time.sleep(0.2)
    raise AssertionError(f"workers did not converge on {expected}: {set(_versions_seen(server))}")


def _optic(server: Server, *args: str, key: str | None = KEY) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPTIC_")}
    extra = ["--api-key", key] if key else []
    return subprocess.run([str(Path(sys.executable).parent / "optic"), "models", *args, "--url", server.url, *extra],
                          capture_output=True, text=True, timeout=120, env=env)  # fmt: skip


def _rss_mib(server: Server) -> float:
    total = 0
    for pid in [server.process.pid, *_children(server.process.pid)]:
        with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as handle:
            total += next(int(line.split()[1]) for line in handle if line.startswith("VmRSS:"))
    return total / 1024


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError), open(f"/proc/{entry}/stat") as handle:
                if int(handle.read().rsplit(")", 1)[1].split()[1]) == pid:
                    found += [int(entry), *_children(int(entry))]
    return found


def test_every_worker_converges_on_polls_loads_and_unloads(controlled: tuple[Server, Path]) -> None:
    server, models = controlled
    listed = _optic(server, "list")
    assert listed.returncode == 0 and listed.stdout.split() == ["digits", "1", "READY", "digits_image", "1", "READY"]
    refused = _optic(server, "list", key=None)
    assert refused.returncode == 1 and "HTTP 401" in refused.stderr

    _publish(models, "2")  # polling: both workers serve it within the interval (the policy keeps all)
    took = _until(server, {"2"})
    print(f"\nboth workers on version 2 {took:.2f} s after it was published (polls every 1 s)")  # noqa: T201
    unloaded = _optic(server, "unload", "digits")
    assert unloaded.returncode == 0 and unloaded.stdout.strip() == "digits: UNAVAILABLE", unloaded
    _until(server, {"unknown_model"}, seconds=3.0)  # the other worker within half a second, polls or not
    time.sleep(1.5)
    assert set(_versions_seen(server)) == {"unknown_model"}, "a poll brought an unloaded model back"
    loaded = _optic(server, "load", "digits")
    assert loaded.returncode == 0 and loaded.stdout.strip() == "digits: READY 1 2", loaded
    _until(server, {"2"}, seconds=3.0)
    missing = _optic(server, "load", "nope")
    assert missing.returncode == 1 and "HTTP 404" in missing.stderr

    # 20 unload and load cycles: memory grows by at most one model's sessions.
    before = _rss_mib(server)
    for _ in range(20):
        assert httpx.post(f"{server.url}/v2/repository/models/digits/unload", headers={"X-API-Key": KEY},
                          timeout=60).status_code == 200  # fmt: skip
        assert httpx.post(f"{server.url}/v2/repository/models/digits/load", headers={"X-API-Key": KEY},
                          timeout=60).json()["versions"] == ["1", "2"]  # fmt: skip
    _until(server, {"2"}, seconds=3.0)
    grown = _rss_mib(server) - before
    size_mib = sum(f.stat().st_size for f in (models / "digits").glob("*/model.onnx")) / 2**20
    print(f"RSS {before:.1f} MiB, +{grown:.1f} MiB after 20 cycles (the model files: {size_mib:.1f} MiB)")  # noqa: T201
    assert grown < 2 * 2 * size_mib + 32, "each worker holds at most one extra copy of the sessions"
    assert server.process.poll() is None


def test_load_and_unload_calls_are_refused_when_control_is_off(polled: tuple[Server, Path]) -> None:
    server, _ = polled
    response = httpx.post(f"{server.url}/v2/repository/models/digits/unload", timeout=10)
    assert response.status_code == 403 and response.json()["reason"] == "model_control_off"
    assert "OPTIC_MODEL_CONTROL" in response.json()["error"]
