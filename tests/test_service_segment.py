"""Semantic and instance segmentation over HTTP against the real server and the committed demo models."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from tests.helpers import files_field, zip_tree
from tests.server import Server
from tests.test_service_detect import model_of_task


@pytest.fixture(scope="module")
def semantic(server: Server) -> dict:
    return model_of_task(server, "segmentation")


@pytest.fixture(scope="module")
def instance(server: Server) -> dict:
    return model_of_task(server, "instance-segmentation")


@pytest.fixture(scope="session")
def seg_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from training.data.demo import write_demo

    out = tmp_path_factory.mktemp("seg") / "semantic"
    write_demo("segmentation", out, seed=3)
    return out


@pytest.fixture(scope="session")
def inst_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from training.data.demo import write_demo

    out = tmp_path_factory.mktemp("inst") / "instances"
    write_demo("instance-segmentation", out, seed=3)
    return out


def _segment(server: Server, paths: list[Path], **form: str) -> dict:
    response = httpx.post(f"{server.url}/segment", files=files_field(paths), data=form, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()


def _decode(rle: dict) -> np.ndarray:
    return mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()})


def test_semantic_masks_in_three_formats(server: Server, semantic: dict, seg_data: Path) -> None:
    path = sorted((seg_data / "test" / "images").iterdir())[0]
    width, height = Image.open(path).size
    rle = _segment(server, [path], model=semantic["name"])["results"][0]
    assert (rle["width"], rle["height"]) == (width, height)
    assert rle["classes"], "no class found on a demo image"
    for entry in rle["classes"]:
        mask = _decode(entry["mask"])
        assert mask.shape == (height, width) and int(mask.sum()) == entry["area"] > 0
        assert entry["label"] == semantic["labels"][entry["class_id"]] != "background"
    png = _segment(server, [path], model=semantic["name"], mask_format="png")["results"][0]
    for a, b in zip(rle["classes"], png["classes"], strict=True):
        decoded = np.asarray(Image.open(io.BytesIO(base64.b64decode(b["mask"]))).convert("L")) > 0
        assert np.array_equal(decoded, _decode(a["mask"]).astype(bool))
    polygon = _segment(server, [path], model=semantic["name"], mask_format="polygon")["results"][0]
    for a, b in zip(rle["classes"], polygon["classes"], strict=True):
        assert b["mask"] and all(len(p) >= 6 for p in b["mask"])
        rasterized = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(b["mask"], height, width)))
        overlap = np.logical_and(rasterized, _decode(a["mask"])).sum() / max(
            1, np.logical_or(rasterized, _decode(a["mask"])).sum()
        )
        assert overlap > 0.8


def test_semantic_evaluate_matches_a_confusion_matrix(server: Server, semantic: dict, seg_data: Path) -> None:
    split = seg_data / "test"
    response = httpx.post(
        f"{server.url}/evaluate",
        data={"model": semantic["name"]},
        timeout=300,
        files={"dataset": ("t.zip", zip_tree(split, "test/"), "application/zip")},
    )
    assert response.status_code == 200, response.text
    metrics = response.json()["metrics"]
    n = len(semantic["labels"])
    confusion = np.zeros((n, n), dtype=np.int64)
    for image in sorted((split / "images").iterdir()):
        truth = np.asarray(Image.open(split / "masks" / f"{image.stem}.png")).astype(np.int64)
        predicted = np.zeros_like(truth)
        for entry in _segment(server, [image], model=semantic["name"])["results"][0]["classes"]:
            predicted[_decode(entry["mask"]).astype(bool)] = entry["class_id"]
        keep = truth != 255
        confusion += np.bincount(truth[keep] * n + predicted[keep], minlength=n * n).reshape(n, n)
    assert metrics["confusion_matrix"] == confusion.tolist()
    tp = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - tp
    iou = tp[union > 0] / union[union > 0]
    assert metrics["mIoU"] == pytest.approx(iou.mean(), abs=1e-12)
    assert metrics["pixel_accuracy"] == pytest.approx(tp.sum() / confusion.sum(), abs=1e-12)
    assert metrics["mIoU"] >= 0.4  # the committed semantic model is a snapshot at val mIoU 0.53


def test_mask_size_mismatch_is_refused(server: Server, semantic: dict) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        image, mask = io.BytesIO(), io.BytesIO()
        Image.new("RGB", (64, 48)).save(image, "PNG")
        Image.new("L", (32, 32)).save(mask, "PNG")
        zf.writestr("images/a.png", image.getvalue())
        zf.writestr("masks/a.png", mask.getvalue())
    response = httpx.post(
        f"{server.url}/evaluate",
        data={"model": semantic["name"]},
        timeout=60,
        files={"dataset": ("m.zip", buffer.getvalue(), "application/zip")},
    )
    assert response.status_code == 422 and "32x32" in response.json()["error"] and "64x48" in response.json()["error"]


def test_polygon_out_of_bounds_is_refused(server: Server, instance: dict) -> None:
    coco = {
        "images": [{"id": 1, "file_name": "a.png", "width": 64, "height": 48}],
        "categories": [{"id": 1, "name": instance["labels"][0]}],
        "annotations": [
            {
                "id": 1,
                "image_id": 1,
                "category_id": 1,
                "bbox": [0, 0, 10, 10],
                "segmentation": [[0, 0, 500, 0, 500, 10]],
            }
        ],
    }
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        image = io.BytesIO()
        Image.new("RGB", (64, 48)).save(image, "PNG")
        zf.writestr("images/a.png", image.getvalue())
        zf.writestr("annotations.json", json.dumps(coco))
    response = httpx.post(
        f"{server.url}/evaluate",
        data={"model": instance["name"]},
        timeout=60,
        files={"dataset": ("p.zip", buffer.getvalue(), "application/zip")},
    )
    assert response.status_code == 422 and "outside" in response.json()["error"]


def test_instance_masks(server: Server, instance: dict, inst_data: Path) -> None:
    path = sorted((inst_data / "test" / "images").iterdir())[0]
    width, height = Image.open(path).size
    result = _segment(server, [path], model=instance["name"])["results"][0]
    assert result["instances"], "no instance found on a demo image"
    for inst in result["instances"]:
        mask = _decode(inst["mask"])
        assert mask.shape == (height, width) and int(mask.sum()) == inst["area"]
        x1, y1, x2, y2 = inst["box"]
        ys, xs = np.nonzero(mask)
        assert xs.min() >= x1 - 2 and xs.max() <= x2 + 2 and ys.min() >= y1 - 2 and ys.max() <= y2 + 2
    rendered = httpx.post(
        f"{server.url}/segment/render", files=files_field([path]), data={"model": instance["name"]}, timeout=60
    )
    assert rendered.status_code == 200 and Image.open(io.BytesIO(rendered.content)).size == (width, height)


def test_instance_evaluate_matches_pycocotools(server: Server, instance: dict, inst_data: Path) -> None:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    split = inst_data / "test"
    response = httpx.post(
        f"{server.url}/evaluate",
        data={"model": instance["name"]},
        timeout=300,
        files={"dataset": ("t.zip", zip_tree(split, "test/"), "application/zip")},
    )
    assert response.status_code == 200, response.text
    metrics = response.json()["metrics"]
    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO(str(split / "annotations.json"))
    names = {c["name"]: c["id"] for c in truth.dataset["categories"]}
    segm = []
    max_dets = str(instance["params"].get("max_detections", 100))
    for image in truth.dataset["images"]:
        found = _segment(
            server,
            [split / "images" / image["file_name"]],
            model=instance["name"],
            score_threshold="0",
            max_detections=max_dets,
        )
        for inst in found["results"][0]["instances"]:
            segm.append(
                {
                    "image_id": image["id"],
                    "category_id": names[inst["label"]],
                    "score": inst["score"],
                    "segmentation": inst["mask"],
                }
            )
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = COCOeval(truth, truth.loadRes(segm), "segm")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    assert list(metrics["segm"]["summary"].values()) == pytest.approx(list(evaluator.stats), abs=1e-12)
    assert metrics["summary"]["mask_AP50"] >= 0.5
