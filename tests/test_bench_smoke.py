"""The benchmark stays runnable: deterministic images, well-formed bodies, and one very short full run."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from bench.http_load import BOUNDARY, multipart_body
from bench.images import HEIGHT, WIDTH, fingerprint, make_images
from bench.raw import find_version_dirs

ROOT = Path(__file__).resolve().parents[1]


def test_images_are_deterministic_640x480_jpegs() -> None:
    first, second = make_images(8), make_images(8)
    assert fingerprint(first) == fingerprint(second)
    assert len({image.data for image in first}) == 8
    for image in first:
        decoded = Image.open(io.BytesIO(image.data))
        assert (decoded.format, decoded.size) == ("JPEG", (WIDTH, HEIGHT))


def test_multipart_body_carries_model_and_image() -> None:
    image = make_images(1)[0]
    body = multipart_body(image, "digits:1")
    assert body.startswith(f"--{BOUNDARY}\r\n".encode()) and body.endswith(f"--{BOUNDARY}--\r\n".encode())
    assert b'name="model"\r\n\r\ndigits:1\r\n' in body
    assert f'name="images"; filename="{image.name}"'.encode() in body and image.data in body


@pytest.mark.integration
def test_short_full_run(tmp_path: Path) -> None:
    repository = ROOT / "models"
    if not repository.is_dir() or not find_version_dirs(repository):
        pytest.skip("no model in the repository")
    if shutil.which("wrk") is None:
        pytest.skip("wrk is not installed: apt-get install -y wrk (the CI script does)")
    from bench.run import main

    code = main(["--repository", str(repository), "--models", "digits,shapes", "--concurrency", "1,2",
                 "--seconds", "1", "--warmup", "1", "--raw-seconds", "0.2", "--raw-repeats", "1", "--images", "4",
                 "--busy-retries", "0", "--output-dir", str(tmp_path)])
    assert code == 0
    report = json.loads((tmp_path / "latest.json").read_text())
    assert report["machine"]["cores_usable"] >= 1 and report["models"]
    for model in report["models"]:
        assert [level["concurrency"] for level in model["levels"]] == [1, 2]
        for level in model["levels"]:
            assert level["raw"]["images_per_s"] > 0
            for arm in ("service", "peer"):
                assert level[arm]["images_per_s"] > 0 and not level[arm]["errors"], (arm, level[arm])
            assert level["service"]["client_cores"] < 0.5, "the load generator must stay cheap"
        assert set(model["targets"]) >= {"throughput"}


@pytest.mark.integration
def test_v2_bench_short_run(tmp_path: Path) -> None:
    """`python -m bench.v2`: raw, v2 HTTP (wrk) and v2 gRPC on the same uint8 batches, every answer a 200."""
    if shutil.which("wrk") is None:
        pytest.skip("wrk is not installed: apt-get install -y wrk (the CI script does)")
    from bench.v2 import main

    code = main(["--repository", str(ROOT / "models"), "--batch", "2", "--concurrency", "2", "--seconds", "1",
                 "--output-dir", str(tmp_path)])  # fmt: skip
    assert code == 0
    report = json.loads(next(tmp_path.glob("v2-*.json")).read_text())
    assert [(r["images_per_request"], r["concurrency"]) for r in report["rows"]] == [(2, 2), (1, 2)]
    for row in report["rows"]:
        for arm in ("v2_http", "v2_grpc"):
            assert row[arm]["images_per_s"] > 0 and not row[arm]["errors"], (arm, row[arm])
        assert row["raw"]["images_per_s"] > 0 and row["http_over_raw"] > 0
    assert report["target"]["goal"] == 0.9
