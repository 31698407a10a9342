"""Detection over HTTP against the real `bentoml serve` and the committed demo detector."""

from __future__ import annotations

import contextlib
import io
import json
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.helpers import files_field, get_metrics, metric_value, zip_tree
from tests.server import Server


def model_of_task(server: Server, task: str) -> dict:
    models = [m for m in httpx.get(f"{server.url}/models", timeout=10).json()["models"] if m["task"] == task]
    if not models:
        pytest.fail(f"no {task} model in the committed repository")
    return sorted(models, key=lambda m: m["name"])[0]


@pytest.fixture(scope="module")
def detector(server: Server) -> dict:
    return model_of_task(server, "detection")


@pytest.fixture(scope="session")
def det_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from training.data.demo_detection import write_shapes

    out = tmp_path_factory.mktemp("det") / "shapes"
    write_shapes(out, seed=7, images={"train": 1, "val": 1, "test": 24})
    return out


def demo_images(det_data: Path) -> list[Path]:
    return sorted((det_data / "test" / "images").glob("*.jpg"))


def _detect(server: Server, paths: list[Path], **form: str) -> dict:
    response = httpx.post(f"{server.url}/detect", files=files_field(paths), data=form, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def test_detect_boxes_are_in_image_pixels(server: Server, detector: dict, det_data: Path) -> None:
    path = demo_images(det_data)[0]
    width, height = Image.open(path).size
    body = _detect(server, [path], model=detector["name"])
    assert body["model"] == {"name": detector["name"], "version": detector["version"]}
    result = body["results"][0]
    assert (result["width"], result["height"]) == (width, height)
    assert result["detections"], "the demo detector found nothing on a demo image"
    for det in result["detections"]:
        x1, y1, x2, y2 = det["box"]
        assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
        assert det["label"] == detector["labels"][det["class_id"]]
        assert det["score"] >= 0.25


def test_batch_equals_alone(server: Server, detector: dict, det_data: Path) -> None:
    paths = demo_images(det_data)[:5]
    together = _detect(server, paths, score_threshold="0.1")["results"]
    for path, batched in zip(paths, together, strict=True):
        alone = _detect(server, [path], score_threshold="0.1")["results"][0]
        assert [d["class_id"] for d in alone["detections"]] == [d["class_id"] for d in batched["detections"]]
        for a, b in zip(alone["detections"], batched["detections"], strict=True):
            assert np.allclose(a["box"], b["box"], atol=0.5) and abs(a["score"] - b["score"]) < 1e-3


def test_parameters_filter(server: Server, detector: dict, det_data: Path) -> None:
    path = demo_images(det_data)[1]
    everything = _detect(server, [path], score_threshold="0.05")["results"][0]["detections"]
    assert len(_detect(server, [path], score_threshold="0.05", max_detections="1")["results"][0]["detections"]) == 1
    strict = _detect(server, [path], score_threshold="0.9")["results"][0]["detections"]
    assert all(d["score"] >= 0.9 for d in strict) and len(strict) <= len(everything)
    label = everything[0]["label"]
    only = _detect(server, [path], score_threshold="0.05", classes=label)["results"][0]["detections"]
    assert only and {d["label"] for d in only} == {label}
    response = httpx.post(f"{server.url}/detect", files=files_field([path]), data={"classes": "no-such-class"})
    assert response.status_code == 422 and "no-such-class" in response.json()["error"]


def test_render_returns_a_png_of_the_image(server: Server, detector: dict, det_data: Path) -> None:
    path = demo_images(det_data)[0]
    response = httpx.post(f"{server.url}/detect/render", files=files_field([path]), timeout=60)
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    rendered = Image.open(io.BytesIO(response.content))
    assert rendered.size == Image.open(path).size
    assert not np.array_equal(np.asarray(rendered.convert("RGB")), np.asarray(Image.open(path).convert("RGB")))


def test_concurrent_detection_forms_batches(server: Server, detector: dict, det_data: Path) -> None:
    paths = demo_images(det_data)[:16] * 2

    def call(path: Path) -> int:
        return httpx.post(f"{server.url}/detect", files=files_field([path]), timeout=120).status_code

    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(call, paths)) == {200}
    text = get_metrics(server.url)
    total = metric_value(text, "optic_batch_size_count", model=detector["name"])
    single = metric_value(text, "optic_batch_size_bucket", model=detector["name"], le="1.0")
    assert total - single > 0, "no detection batch larger than one formed"


def test_evaluate_matches_pycocotools(server: Server, detector: dict, det_data: Path) -> None:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    split = det_data / "test"
    response = httpx.post(
        f"{server.url}/evaluate",
        data={"model": detector["name"]},
        timeout=300,
        files={"dataset": ("test.zip", zip_tree(split, "test/"), "application/zip")},
    )
    assert response.status_code == 200, response.text
    metrics = response.json()["metrics"]

    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO(str(split / "annotations.json"))
    names = {c["name"]: c["id"] for c in truth.dataset["categories"]}
    detections = []
    max_dets = str(detector["params"].get("max_detections", 100))
    for image in truth.dataset["images"]:
        result = _detect(server, [split / "images" / image["file_name"]], score_threshold="0", max_detections=max_dets)
        for det in result["results"][0]["detections"]:
            x1, y1, x2, y2 = det["box"]
            detections.append(
                {
                    "image_id": image["id"],
                    "category_id": names[det["label"]],
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "score": det["score"],
                }
            )
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = COCOeval(truth, truth.loadRes(detections), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    assert list(metrics["summary"].values()) == pytest.approx(list(evaluator.stats), abs=1e-12)
    assert len(metrics["summary"]) == 12
    assert {row["label"] for row in metrics["per_class"]} <= set(detector["labels"])
    assert metrics["summary"]["AP50"] >= 0.5  # the committed model's test AP50 is in its model.json


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("coco", "words"),
    [
        ({"images": [], "annotations": []}, "'categories' must be a list"),
        (
            {
                "images": [{"id": 1, "file_name": "a.jpg", "width": 8, "height": 8}],
                "categories": [{"id": 1, "name": "x"}],
                "annotations": [{"id": 1, "image_id": 2, "category_id": 1, "bbox": [0, 0, 1, 1]}],
            },
            "unknown image_id",
        ),
        (
            {
                "images": [{"id": 1, "file_name": "a.jpg", "width": 8, "height": 8}],
                "categories": [{"id": 1, "name": "x"}],
                "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, -1, 1]}],
            },
            "bbox",
        ),
    ],
)
def test_malformed_coco_in_archive(server: Server, detector: dict, coco: dict, words: str) -> None:
    archive = _zip({"annotations.json": json.dumps(coco).encode(), "images/a.jpg": b""})
    response = httpx.post(
        f"{server.url}/evaluate",
        data={"model": detector["name"]},
        timeout=60,
        files={"dataset": ("bad.zip", archive, "application/zip")},
    )
    assert response.status_code == 422, response.text
    assert response.json()["reason"] == "invalid_dataset" and words in response.json()["error"]


def test_invalid_json_in_archive(server: Server, detector: dict) -> None:
    archive = _zip({"annotations.json": b"{not json"})
    response = httpx.post(
        f"{server.url}/evaluate",
        data={"model": detector["name"]},
        timeout=60,
        files={"dataset": ("bad.zip", archive, "application/zip")},
    )
    assert response.status_code == 422 and "not valid JSON" in response.json()["error"]


def test_a_model_of_another_task_is_refused(server: Server, detector: dict, det_data: Path) -> None:
    path = demo_images(det_data)[0]
    response = httpx.post(f"{server.url}/classify", files=files_field([path]), data={"model": detector["name"]})
    assert response.status_code == 422 and response.json()["reason"] == "wrong_task"
    assert "detection" in response.json()["error"]
    response = httpx.post(f"{server.url}/detect", files=files_field([path]), data={"model": "digits"})
    assert response.status_code == 422 and response.json()["reason"] == "wrong_task"
    assert metric_value(get_metrics(server.url), "optic_errors_total", reason="wrong_task") >= 2
