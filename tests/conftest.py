from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.server import ROOT, Server, start_server

# Limits small enough that tests can cross them cheaply.
TEST_LIMITS = {
    "OPTIC_MAX_BODY_BYTES": str(4 * 1024 * 1024),
    "OPTIC_MAX_ARCHIVE_BYTES": str(6 * 1024 * 1024),
    "OPTIC_MAX_IMAGES_PER_REQUEST": "32",
    "OPTIC_MAX_BATCH_WAIT_MS": "5",
    # The shared server's batching tests send 16 slow segmentations at once: on a loaded 2-core machine the
    # default budget (2 s) may refuse some. Overload has its own server and budget (test_service_overload.py).
    "OPTIC_LATENCY_BUDGET_MS": "10000",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "server" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.integration)


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Any attempt to reach the network fails the test: the schemas must come from the package."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"network access during validation: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    yield


@pytest.fixture(scope="session")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the committed demo model repository (tests may add models to it)."""
    target = tmp_path_factory.mktemp("repo") / "models"
    source = Path(os.environ.get("OPTIC_TEST_REPOSITORY", ROOT / "models"))
    shutil.copytree(source, target, ignore=shutil.ignore_patterns(".*"))
    return target


@pytest.fixture(scope="session")
def server(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    handle = start_server(repository, tmp_path_factory.mktemp("server") / "serve.log", env=TEST_LIMITS)
    yield handle
    handle.stop()


def _demo(tmp_path_factory: pytest.TempPathFactory, folder: str, name: str, task: str, seed: int) -> Path:
    """A demo data set of `task` (optic data demo), written once per session."""
    from training.data.demo import write_demo

    out = tmp_path_factory.mktemp(folder) / name
    write_demo(task, out, seed=seed)
    return out


@pytest.fixture(scope="session")
def cls_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _demo(tmp_path_factory, "data", "cls", "classification", seed=0)


@pytest.fixture(scope="session")
def det_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from training.data.demo_detection import write_shapes

    out = tmp_path_factory.mktemp("det") / "shapes"
    write_shapes(out, seed=7, images={"train": 1, "val": 1, "test": 24})
    return out


@pytest.fixture(scope="session")
def seg_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _demo(tmp_path_factory, "seg", "semantic", "segmentation", seed=3)


@pytest.fixture(scope="session")
def inst_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _demo(tmp_path_factory, "inst", "instances", "instance-segmentation", seed=3)
