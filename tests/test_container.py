"""The Dockerfile, built and run with podman: the image serves /classify, is healthy, runs as non-root
on a read-only root filesystem, carries no torch, and serves a mounted model repository instead of the
baked-in one. `make container-test` prepares the host (deploy/container/prepare.sh) and runs these.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests import container as podman
from tests.deploy_support import classify_and_check, first_classifier, served_classifier, wait_until_ready
from tests.server import ROOT, free_port

pytestmark = [pytest.mark.container, pytest.mark.timeout(1800)]

IMAGE = "localhost/optic:test"
READY_TIMEOUT_S = 180


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> str:
    reason = podman.missing_prerequisite()
    if reason:
        pytest.skip(f"{reason}: run `make container-test` (deploy/container/prepare.sh sets the host up)")
    workdir = tmp_path_factory.mktemp("build")
    started = time.monotonic()
    podman.build_image(IMAGE, workdir, workdir / "build.log")
    print(f"podman build: {time.monotonic() - started:.0f} s")  # noqa: T201 (shown with -s / on failure)
    return IMAGE


def _start(image: str, name: str, volumes: list[str] | None = None) -> podman.Container:
    handle = podman.run_container(image, name, free_port(), volumes=volumes)
    try:
        wait_until_ready(handle.url, READY_TIMEOUT_S, alive=handle.running, describe=handle.logs)
    except BaseException:
        handle.remove()
        raise
    return handle


@pytest.fixture(scope="module")
def baked(image: str) -> Iterator[podman.Container]:
    handle = _start(image, f"optic-test-{os.getpid()}")
    try:
        yield handle
    finally:
        handle.remove()


def test_classify_with_the_baked_in_models(baked: podman.Container) -> None:
    expected = first_classifier()
    model = served_classifier(baked.url)
    assert (model["name"], model["version"]) == (expected["name"], expected["version"])
    classify_and_check(baked.url, model)


def test_healthcheck_reports_healthy(baked: podman.Container) -> None:
    result = podman.podman("healthcheck", "run", baked.name, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    healthcheck = json.loads(podman.podman("image", "inspect", IMAGE).stdout)[0]["Healthcheck"]
    assert healthcheck["Test"][-1].endswith("healthcheck.py"), healthcheck
    assert "/readyz" in (ROOT / "deploy" / "container" / "healthcheck.py").read_text()


def test_runs_as_non_root_without_torch(baked: podman.Container) -> None:
    assert baked.exec("id", "-u").stdout.strip() == "10001"
    assert baked.exec("touch", "/opt/optic/x").returncode != 0, "the root filesystem should be read-only"
    assert baked.exec("python3", "-c", "import torch").returncode != 0, "torch must not be in the image"
    providers = baked.exec("python3", "-c", "import onnxruntime as o; print(o.get_available_providers())")
    assert "CPUExecutionProvider" in providers.stdout, providers.stderr


def test_mounted_repository_replaces_the_baked_one(image: str, tmp_path: Path) -> None:
    source = first_classifier()
    version = f"{source['version']}-mounted"
    target = tmp_path / "models" / source["name"] / version
    shutil.copytree(ROOT / "models" / source["name"] / source["version"], target)
    (target / "model.json").write_text(json.dumps({**source, "version": version}, indent=2))
    os.chmod(tmp_path / "models", 0o755)  # read by the image's non-root user

    handle = _start(image, f"optic-test-mounted-{os.getpid()}", volumes=[f"{tmp_path / 'models'}:/models:ro"])
    try:
        served = httpx.get(f"{handle.url}/models", timeout=10).json()["models"]
        assert [(m["name"], m["version"]) for m in served] == [(source["name"], version)]
        classify_and_check(handle.url, served[0])
    finally:
        handle.remove()


def test_cuda_provider_without_a_gpu_fails_loudly(image: str) -> None:
    handle = podman.run_container(image, f"optic-test-cuda-{os.getpid()}", free_port(), env={"OPTIC_PROVIDER": "cuda"})
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        # `optic serve` checks the provider before starting BentoML and exits with the reason.
        while "OPTIC_PROVIDER=cuda" not in handle.logs():
            assert time.monotonic() < deadline, f"no provider error in the log:\n{handle.logs()}"
            time.sleep(1)
        try:
            ready = httpx.get(f"{handle.url}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            ready = False
        assert not ready, "a CUDA-only optic must not report ready without a GPU"
    finally:
        handle.remove()
