"""Build and run optic's image with podman, for tests/test_container.py (`make container-test`).

No registry and no engine daemon: the base image is made by deploy/container/prepare.sh (debootstrap),
every build and container uses the host network (containers listen on 127.0.0.1), and podman reads
deploy/container/containers.conf. The host's pip settings (index, extra indexes, find-links, CA bundle)
reach the build as a generated pip.conf and CA bundle passed as build secrets, plus read-only volumes
for the local folders they name; nothing about this host is written into the Dockerfile.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

from tests.server import ROOT

CONTAINERS_CONF = ROOT / "deploy" / "container" / "containers.conf"
BASE_IMAGE = os.environ.get("OPTIC_TEST_BASE_IMAGE", "localhost/optic-base:test")
# The CPU build: onnxruntime-gpu is a 255 MB wheel and there is no GPU here.
TEST_ORT_PACKAGE = os.environ.get("OPTIC_TEST_ORT_PACKAGE", "onnxruntime")
PIP_KEYS = ("index-url", "extra-index-url", "find-links", "trusted-host", "default-timeout")
# pip's own precedence: environment over the [install] section over [global].
_SECTION_RANK = {"global": 0, "install": 1, ":env:": 2}


def podman_env() -> dict[str, str]:
    return {**os.environ, "CONTAINERS_CONF": os.environ.get("CONTAINERS_CONF", str(CONTAINERS_CONF))}


def podman(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["podman", *args], env=podman_env(), capture_output=True, text=True, check=check, timeout=timeout
    )


def missing_prerequisite() -> str | None:
    """Why this host cannot run the container tests, or None when it can."""
    if shutil.which("podman") is None:
        return "podman is not installed"
    if podman("image", "exists", BASE_IMAGE, check=False).returncode != 0:
        return f"the base image {BASE_IMAGE} does not exist"
    return None


def host_pip_settings() -> dict[str, str]:
    """The settings `pip config list` reports for this host (files and PIP_* variables), winners only."""
    listing = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, check=True
    ).stdout
    ranked: dict[str, tuple[int, str]] = {}
    for line in listing.splitlines():
        match = re.match(r"^(:env:|[\w-]+)\.([\w-]+)=(.*)$", line)
        if not match or match.group(1) not in _SECTION_RANK:
            continue
        section, key, raw = match.groups()
        rank, value = _SECTION_RANK[section], str(ast.literal_eval(raw))
        if key not in ranked or rank >= ranked[key][0]:
            ranked[key] = (rank, value)
    return {key: value for key, (_, value) in ranked.items()}


def _local_path(location: str) -> Path | None:
    if location.startswith("file:"):
        return Path(unquote(urlparse(location).path))
    return Path(location) if location.startswith("/") else None


@dataclass
class PipBuildOptions:
    args: list[str] = field(default_factory=list)
    pip_conf: str = ""


def pip_build_options(workdir: Path, settings: dict[str, str] | None = None) -> PipBuildOptions:
    """`podman build` options carrying the host's pip settings into the Dockerfile's build stage.

    The CA bundle and a pip.conf go in as secrets (mounted only while `pip install` runs, never stored
    in a layer); local indexes and find-links folders as read-only volumes at the same paths. A
    PEP 503 index at .../simple links its files relative to its parent, so that parent is mounted.
    """
    settings = host_pip_settings() if settings is None else settings
    args: list[str] = []
    lines = ["[global]"]
    mounts: set[Path] = set()
    cert = settings.get("cert")
    if cert and Path(cert).is_file():
        args += ["--secret", f"id=pip-cert,src={cert}"]
        lines.append("cert = /run/secrets/pip-cert")
    for key in PIP_KEYS:
        kept = []
        for location in settings.get(key, "").split():
            path = _local_path(location) if key != "trusted-host" else None
            if path is not None:
                if not path.exists():
                    continue  # pip would only warn about it; nothing to mount
                mounts.add(path.parent if path.name == "simple" and key != "find-links" else path)
            kept.append(location)
        if kept:
            lines.append(f"{key} = {' '.join(kept)}")
    conf = workdir / "pip.conf"
    conf.write_text("\n".join(lines) + "\n")
    args += ["--secret", f"id=pip.conf,src={conf}"]
    for mount in sorted(mounts):
        args += ["--volume", f"{mount}:{mount}:ro"]
    return PipBuildOptions(args=args, pip_conf=conf.read_text())


def build_image(tag: str, workdir: Path, log_path: Path, timeout_s: float = 1800) -> None:
    """Build the Dockerfile at the repository root as `tag` on the local base image (CPU ONNX Runtime)."""
    pip = pip_build_options(workdir)
    previous = podman("image", "inspect", "--format", "{{.Id}}", tag, check=False).stdout.strip()
    command = [
        "podman", "build",
        "--format", "docker",  # OCI images drop HEALTHCHECK
        "--network", "host",
        "--pull=never",
        "--build-arg", f"BASE_IMAGE={BASE_IMAGE}",
        "--build-arg", f"ORT_PACKAGE={TEST_ORT_PACKAGE}",
        *pip.args,
        "--tag", tag,
        "--file", str(ROOT / "Dockerfile"),
        str(ROOT),
    ]  # fmt: skip
    with log_path.open("w") as log:
        log.write(f"$ {' '.join(command)}\npip.conf:\n{pip.pip_conf}\n")
        log.flush()
        result = subprocess.run(command, env=podman_env(), stdout=log, stderr=subprocess.STDOUT, timeout=timeout_s)
    if result.returncode != 0:
        raise AssertionError(f"podman build failed ({result.returncode}):\n{log_path.read_text()[-6000:]}")
    if previous and previous != podman("image", "inspect", "--format", "{{.Id}}", tag).stdout.strip():
        podman("rmi", previous, check=False)  # the image this build replaced: keep the store from growing


@dataclass
class Container:
    name: str
    url: str

    def running(self) -> bool:
        result = podman("inspect", "--format", "{{.State.Running}}", self.name, check=False)
        return result.stdout.strip() == "true"

    def logs(self) -> str:
        result = podman("logs", self.name, check=False)
        return (result.stdout + result.stderr)[-6000:]

    def exec(self, *command: str) -> subprocess.CompletedProcess[str]:
        return podman("exec", self.name, *command, check=False)

    def remove(self) -> None:
        podman("rm", "--force", "--time", "5", self.name, check=False)


def run_container(
    image: str, name: str, port: int, env: dict[str, str] | None = None, volumes: list[str] | None = None
) -> Container:
    """Start `image` detached on the host network, listening on 127.0.0.1:`port`, read-only like in k8s."""
    podman("rm", "--force", name, check=False)  # a leftover of an interrupted run
    # No systemd here for podman's healthcheck timers; the test runs the healthcheck itself.
    options = ["--detach", "--name", name, "--network", "host", "--read-only", "--health-interval", "disable"]
    for key, value in {"HOST": "127.0.0.1", "PORT": str(port), **(env or {})}.items():
        options += ["--env", f"{key}={value}"]
    for volume in volumes or []:
        options += ["--volume", volume]
    podman("run", *options, image)
    return Container(name=name, url=f"http://127.0.0.1:{port}")
