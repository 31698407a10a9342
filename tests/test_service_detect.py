"""Detection over HTTP against the real `bentoml serve` and the committed demo detector."""

from __future__ import annotations

import contextlib
import copy
import io
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.helpers import files_field, get_metrics, metric_value, zip_members, zip_tree
from tests.server import Server


def model_of_task(server: Server, task: str) -> dict:
    models = [m for m in httpx.get(f"{server.url}/models", timeout=10).json()["models"] if m["task"] == task]
    if not models:
        pytest.fail(f"no {task} model in the committed repository")
    return sorted(models, key=lambda m: m["name"])[0]


@pytest.fixture(scope="module")
def detector(server: Server) -> dict:
    return model_of_task(server, "detection")


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


def _evaluate(server: Server, detector: dict, name: str, archive: bytes) -> httpx.Response:
    return httpx.post(
        f"{server.url}/evaluate",
        data={"model": detector["name"]},
        timeout=300,
        files={"dataset": (name, archive, "application/zip")},
    )


def _report(server: Server, detector: dict, name: str, archive: bytes) -> dict:
    response = _evaluate(server, detector, name, archive)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture(scope="module")
def test_truth(det_data: Path) -> dict:
    return json.loads((det_data / "test" / "annotations.json").read_text())


@pytest.fixture(scope="module")
def test_detections(server: Server, detector: dict, det_data: Path, test_truth: dict) -> list[dict]:
    """What /detect answers for every test-split image (everything the graph kept), as COCO results."""
    names = {c["name"]: c["id"] for c in test_truth["categories"]}
    max_dets = str(detector["params"].get("max_detections", 100))
    detections = []
    for image in test_truth["images"]:
        path = det_data / "test" / "images" / image["file_name"]
        result = _detect(server, [path], score_threshold="0", max_detections=max_dets)
        for det in result["results"][0]["detections"]:
            x1, y1, x2, y2 = det["box"]
            detections.append({
                "image_id": image["id"], "category_id": names[det["label"]],
                "bbox": [x1, y1, x2 - x1, y2 - y1], "score": det["score"],
            })  # fmt: skip
    return detections


@pytest.fixture(scope="module")
def coco_report(server: Server, detector: dict, det_data: Path) -> dict:
    """POST /evaluate with the COCO archive of the demo test split (annotations.json and images)."""
    return _report(server, detector, "test.zip", zip_tree(det_data / "test", "test/"))


def pycocotools_scores(truth: dict, detections: list[dict]) -> tuple[list[float], dict[str, tuple[float, float]]]:
    """COCOeval's twelve numbers, and per class (AP, AP50): its precision array at area "all" and 100
    detections, averaged over the valid entries (> -1), over all IoU thresholds or at IoU 0.5."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        ground_truth = COCO()
        ground_truth.dataset = copy.deepcopy(truth)
        ground_truth.createIndex()
        evaluator = COCOeval(ground_truth, ground_truth.loadRes(copy.deepcopy(detections)), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    params = evaluator.params
    assert params.iouThrs[0] == 0.5 and params.areaRngLbl[0] == "all" and params.maxDets[-1] == 100
    names = {c["id"]: c["name"] for c in truth["categories"]}
    per_class = {}
    for k, category_id in enumerate(params.catIds):
        every_iou = evaluator.eval["precision"][:, :, k, 0, -1]
        at_50 = every_iou[0]
        per_class[names[category_id]] = (
            float(np.mean(every_iou[every_iou > -1])) if (every_iou > -1).any() else -1.0,
            float(np.mean(at_50[at_50 > -1])) if (at_50 > -1).any() else -1.0,
        )
    return [float(v) for v in evaluator.stats], per_class


def _per_class(metrics: dict) -> dict[str, tuple[float, float]]:
    return {row["label"]: (row["AP"], row["AP50"]) for row in metrics["per_class"]}


def _assert_matches(metrics: dict, expected: tuple[list[float], dict[str, tuple[float, float]]]) -> None:
    stats, per_class = expected
    assert len(metrics["summary"]) == 12
    assert list(metrics["summary"].values()) == pytest.approx(stats, abs=1e-12)
    assert _per_class(metrics).keys() == per_class.keys()
    for label, (ap, ap50) in per_class.items():
        assert _per_class(metrics)[label] == pytest.approx((ap, ap50), abs=1e-12), label


def test_evaluate_matches_pycocotools(
    detector: dict, coco_report: dict, test_truth: dict, test_detections: list[dict]
) -> None:
    metrics = coco_report["metrics"]
    assert coco_report["dataset"]["format"] == "coco"
    _assert_matches(metrics, pycocotools_scores(test_truth, test_detections))
    assert set(_per_class(metrics)) == set(detector["labels"])
    assert metrics["summary"]["AP50"] >= 0.8  # issue 3: the demo detector reaches test AP50 0.8, on unseen data too


def test_yolo_archive_scores_like_the_coco_archive(
    server: Server, detector: dict, det_data: Path, coco_report: dict, test_truth: dict
) -> None:
    """The demo writes YOLO labels beside the COCO JSON; the YOLO archive of the same split scores the same.

    YOLO has only boxes, so its ground-truth areas are box areas, while the demo's COCO areas are the objects'
    pixel areas; COCO's small/medium/large ranges are decided by that area. So the YOLO report equals, all
    twelve numbers exactly, the COCO archive whose annotations leave `area` out (box areas, as pycocotools
    fills them in), and equals the original COCO archive on the six numbers that no area range touches.
    """
    split = det_data / "test"
    members = {"data.yaml": (det_data / "data.yaml").read_bytes()}  # names: 0..3, and test: test/images
    for folder in ("images", "labels"):
        members |= {f"test/{folder}/{p.name}": p.read_bytes() for p in sorted((split / folder).iterdir())}
    yolo = _report(server, detector, "yolo.zip", zip_members(members))
    assert yolo["dataset"]["format"] == "yolo" and yolo["dataset"]["images"] == "test/images"
    assert yolo["dataset"]["num_images"] == len(test_truth["images"])

    box_areas = copy.deepcopy(test_truth)
    for ann in box_areas["annotations"]:
        del ann["area"]
    members = {"annotations.json": json.dumps(box_areas).encode()}
    members |= {f"images/{p.name}": p.read_bytes() for p in sorted((split / "images").iterdir())}
    coco_boxes = _report(server, detector, "boxes.zip", zip_members(members))

    assert yolo["metrics"]["summary"] == coco_boxes["metrics"]["summary"]
    assert yolo["metrics"]["per_class"] == coco_boxes["metrics"]["per_class"] == coco_report["metrics"]["per_class"]
    for name in ("AP", "AP50", "AP75", "AR1", "AR10", "AR100"):
        assert yolo["metrics"]["summary"][name] == coco_report["metrics"]["summary"][name], name


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ("0 0.5 0.5 0.2", "expected `class cx cy w h` (5 columns) or a polygon, got 4 columns"),
        ("4 0.5 0.5 0.2 0.2", "class 4 is not among the 4 names"),
        ("1 0.5 1.25 0.2 0.2", "coordinate 1.25 is outside [0, 1] (normalized)"),
        ("1 0.5 abc 0.2 0.2", "coordinate 'abc' is not a number"),
    ],
)
def test_bad_yolo_label_is_refused(server: Server, detector: dict, det_data: Path, line: str, words: str) -> None:
    image = demo_images(det_data)[0]
    archive = zip_members({
        "set/classes.txt": "\n".join(detector["labels"]).encode(),
        f"set/images/{image.name}": image.read_bytes(),
        f"set/labels/{image.stem}.txt": f"0 0.5 0.5 0.2 0.2\n{line}\n".encode(),
    })  # fmt: skip
    response = _evaluate(server, detector, "bad.zip", archive)
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["reason"] == "invalid_dataset"
    assert body["error"] == f"malformed YOLO file set/labels/{image.stem}.txt:2: {words}"


def test_crowd_ground_truth_matches_pycocotools(
    server: Server, detector: dict, det_data: Path, test_truth: dict, test_detections: list[dict]
) -> None:
    """iscrowd=1 regions: detections inside them are neither matched nor false positives, as in COCOeval."""
    truth = copy.deepcopy(test_truth)
    truth["images"] = truth["images"][:6]
    kept = {image["id"] for image in truth["images"]}
    truth["annotations"] = [a for a in truth["annotations"] if a["image_id"] in kept]
    crowded = set()
    for ann in truth["annotations"]:
        if ann["image_id"] not in crowded and ann["image_id"] % 2:  # one crowd region in every other image
            ann["iscrowd"] = 1
            crowded.add(ann["image_id"])
    assert crowded
    members = {"annotations.json": json.dumps(truth).encode()}
    members |= {f"images/{im['file_name']}": (det_data / "test" / "images" / im["file_name"]).read_bytes()
                for im in truth["images"]}  # fmt: skip
    report = _report(server, detector, "crowd.zip", zip_members(members))
    detections = [d for d in test_detections if d["image_id"] in kept]
    expected = pycocotools_scores(truth, detections)
    _assert_matches(report["metrics"], expected)
    for ann in truth["annotations"]:
        ann["iscrowd"] = 0
    assert pycocotools_scores(truth, detections)[0] != expected[0], "the crowd regions changed nothing"


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
    archive = zip_members({"annotations.json": json.dumps(coco).encode(), "images/a.jpg": b""})
    response = httpx.post(
        f"{server.url}/evaluate",
        data={"model": detector["name"]},
        timeout=60,
        files={"dataset": ("bad.zip", archive, "application/zip")},
    )
    assert response.status_code == 422, response.text
    assert response.json()["reason"] == "invalid_dataset" and words in response.json()["error"]


def test_invalid_json_in_archive(server: Server, detector: dict) -> None:
    archive = zip_members({"annotations.json": b"{not json"})
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


def _png(size: tuple[int, int] = (16, 16)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (120, 80, 40)).save(buffer, "PNG")
    return buffer.getvalue()


BAD_DETECT = {
    "not_an_image": ([("notes.txt", b"plain text, not a picture")], {}, 422, "invalid_image", "notes.txt"),
    "too_many_images": ([(f"{i}.png", _png()) for i in range(33)], {}, 413, "too_many_images", "33 images"),
    "threshold_above_1": ([("a.png", _png())], {"score_threshold": "2"}, 422, "invalid_parameter", "score_threshold"),
}


@pytest.mark.parametrize("case", sorted(BAD_DETECT))
def test_bad_detect_input_is_refused(server: Server, detector: dict, det_data: Path, case: str) -> None:
    files, form, status, reason, words = BAD_DETECT[case]
    before = metric_value(get_metrics(server.url), "optic_errors_total", endpoint="/detect", reason=reason)
    response = httpx.post(
        f"{server.url}/detect",
        files=[("images", (name, data, "application/octet-stream")) for name, data in files],
        data=form,
        timeout=60,
    )
    assert response.status_code == status, response.text
    body = response.json()
    assert body["reason"] == reason and words in body["error"], body
    after = metric_value(get_metrics(server.url), "optic_errors_total", endpoint="/detect", reason=reason)
    assert after == before + 1
    assert _detect(server, demo_images(det_data)[:1])["results"][0]["detections"]  # still serving


def test_unparsable_threshold_is_refused(server: Server, detector: dict, det_data: Path) -> None:
    """A score_threshold that is not a number is refused before any work, naming the field and the value, as
    every other parameter error is; the errors metric counts it."""
    before = metric_value(get_metrics(server.url), "optic_errors_total", endpoint="/detect", reason="invalid_parameter")
    response = httpx.post(
        f"{server.url}/detect", files=[("images", ("a.png", _png(), "image/png"))], data={"score_threshold": "abc"}
    )
    assert response.status_code == 422, response.text
    body = response.json()
    assert body == {"error": "score_threshold: must be a number, got 'abc'", "reason": "invalid_parameter"}
    assert response.headers["content-type"] == "application/json"
    after = metric_value(get_metrics(server.url), "optic_errors_total", endpoint="/detect", reason="invalid_parameter")
    assert after == before + 1
    assert _detect(server, demo_images(det_data)[:1])["results"][0]["detections"]  # still serving
