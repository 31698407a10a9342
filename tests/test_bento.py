"""bentofile.yaml: `bentoml build` packages the service and the model repository, and the bento serves
/classify from its own store (a temporary BENTOML_HOME), away from the source tree.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import tomllib
import yaml

from tests.deploy_support import classify_and_check, first_classifier, served_classifier, wait_until_ready
from tests.server import ROOT, free_port

BENTOML = str(Path(sys.executable).parent / "bentoml")


def _bentofile() -> dict:
    return dict(yaml.safe_load((ROOT / "bentofile.yaml").read_text()))


def test_bentofile_packages_are_the_serving_dependencies() -> None:
    # Two lists of the same thing drift apart; pyproject.toml is the one `pip install .` reads.
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert _bentofile()["python"]["packages"] == dependencies
    assert not any(d.split(">")[0].split("=")[0].strip() in {"torch", "torchvision"} for d in dependencies)


def test_bentofile_names_the_service_and_includes_the_models() -> None:
    bentofile = _bentofile()
    module, _, cls = bentofile["service"].partition(":")
    assert (ROOT / (module.replace(".", "/") + ".py")).is_file()
    assert f"class {cls}" in (ROOT / (module.replace(".", "/") + ".py")).read_text()
    include = bentofile["include"]
    assert {"models/**/model.onnx", "models/**/model.json"} <= set(include)
    assert not any(p.startswith("training") for p in include), "the bento serves; training code stays out"


@pytest.fixture(scope="module")
def bento(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, str]]:
    home = tmp_path_factory.mktemp("bentoml_home")
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true"}
    env.pop("OPTIC_MODEL_REPOSITORY", None)  # the bento must find its own models
    result = subprocess.run(
        [BENTOML, "build", "--output", "tag"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    tag = next(line.split("__tag__:", 1)[1] for line in result.stdout.splitlines() if "__tag__:" in line)
    return tag.strip(), env


@pytest.mark.integration
def test_bento_carries_every_model_version(bento: tuple[str, dict[str, str]]) -> None:
    tag, env = bento
    name, _, version = tag.partition(":")
    src = Path(env["BENTOML_HOME"]) / "bentos" / name / version / "src"
    expected = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "models").glob("*/[!.]*/model.*"))
    packed = sorted(p.relative_to(src).as_posix() for p in (src / "models").glob("*/*/model.*"))
    assert packed == expected
    assert not (src / "training").exists()


@pytest.fixture(scope="module")
def bento_server(bento: tuple[str, dict[str, str]], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tag, env = bento
    port = free_port()
    log_path = tmp_path_factory.mktemp("bento_serve") / "serve.log"
    with log_path.open("wb") as log:
        # cwd outside the source tree: only what the bento carries can be imported and loaded.
        process = subprocess.Popen(
            [BENTOML, "serve", tag, "--host", "127.0.0.1", "--port", str(port)],
            cwd=log_path.parent,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(url, 120, alive=lambda: process.poll() is None, describe=lambda: log_path.read_text()[-4000:])
        yield url
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


@pytest.mark.integration
def test_served_bento_classifies(bento_server: str) -> None:
    expected = first_classifier()
    model = served_classifier(bento_server)
    assert (model["name"], model["version"]) == (expected["name"], expected["version"])
    classify_and_check(bento_server, model)


@pytest.mark.integration
def test_served_bento_lists_the_repository(bento_server: str) -> None:
    listed = {(m["name"], m["version"]) for m in httpx.get(f"{bento_server}/models", timeout=10).json()["models"]}
    on_disk = {
        (meta["name"], meta["version"])
        for meta in (json.loads(p.read_text()) for p in (ROOT / "models").glob("*/[!.]*/model.json"))
    }
    assert listed == on_disk
