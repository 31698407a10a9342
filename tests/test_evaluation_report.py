"""The evaluation report: HTML, PNG charts and per-image files from synthetic job results, one per task."""

from __future__ import annotations

import csv
import html
import json
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from service.evaluation.report import write_report

EVIL = "<script>alert(1)</script>"
RECALL = [k / 100 for k in range(101)]


def _model(name: str, version: str, task: str) -> dict[str, Any]:
    return {"name": name, "version": version, "task": task}


def _evaluation(model: dict[str, Any], metrics: dict[str, Any], num_images: int) -> dict[str, Any]:
    return {
        "model": model,
        "dataset": {"num_images": num_images, "split": "test", "format": "folder"},
        "metrics": metrics,
        "seconds": 1.5,
        "images_per_second": num_images / 1.5,
    }


def classification(n: int, labels: list[str], *, name: str = "digits", version: str = "3", seed: int = 0) -> tuple:
    """A classification evaluation of `n` images over `labels`, and its per-image list."""
    rng = np.random.default_rng(seed)
    k = len(labels)
    truth = rng.integers(0, k, n)
    predicted = np.where(rng.random(n) < 0.8, truth, rng.integers(0, k, n))
    confusion = np.zeros((k, k), dtype=int)
    np.add.at(confusion, (truth, predicted), 1)
    top1 = float(np.mean(truth == predicted))
    per_class = [
        {
            "label": label,
            "class_id": i,
            "precision": 0.8,
            "recall": 0.75,
            "f1": 0.77,
            "support": int(confusion[i].sum()),
        }
        for i, label in enumerate(labels)
    ]
    metrics = {
        "summary": {"top1": top1, "top5": 0.99, "macro_f1": 0.77},
        "top1": top1,
        "top5": 0.99,
        "per_class": per_class,
        "macro_avg": {"precision": 0.8, "recall": 0.75, "f1": 0.77},
        "weighted_avg": {"precision": 0.8, "recall": 0.75, "f1": 0.77},
        "confusion_matrix": confusion.tolist(),
        "num_images": n,
    }
    images = [
        {
            "file": f"{labels[t]}/{i:05d}.png",
            "label": labels[t],
            "predicted": labels[p],
            "score": float(rng.random()),
            "correct": bool(t == p),
        }
        for i, (t, p) in enumerate(zip(truth, predicted, strict=True))
    ]
    return _evaluation(_model(name, version, "classification"), metrics, n), images


def _detection_metrics(labels: list[str], quality: float) -> dict[str, Any]:
    per_class: list[dict[str, Any]] = []
    for i, label in enumerate(labels):
        ap50 = max(0.0, min(1.0, quality + 0.05 * (i % 3)))
        precision = [max(0.0, ap50 * (1 - r**4)) for r in RECALL]
        per_class.append(
            {
                "label": label,
                "class_id": i,
                "AP": ap50 * 0.6,
                "AP50": ap50,
                "pr_curve": {"recall": RECALL, "precision": precision},
                "f1_threshold": {"score": 0.4 + 0.01 * i, "precision": 0.8, "recall": 0.7, "f1": 0.747},
            }
        )
    per_class.append(
        {
            "label": "absent",
            "class_id": len(labels),
            "AP": -1.0,
            "AP50": -1.0,
            "pr_curve": {"recall": RECALL, "precision": [0.0] * 101},
            "f1_threshold": None,
        }
    )
    names = ["AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large"]
    names += ["AR1", "AR10", "AR100", "AR_small", "AR_medium", "AR_large"]
    summary = {name: round(quality * 0.6, 4) for name in names}
    return {
        "summary": summary,
        "per_class": per_class,
        "num_detections": 40,
        "thresholds": {c["label"]: c["f1_threshold"]["score"] for c in per_class if c["f1_threshold"]},
    }


def _detection_images(n: int, labels: list[str]) -> list[dict[str, Any]]:
    images = []
    for i in range(n):
        detections = [
            {"box": [10.0 * j, 5.0, 10.0 * j + 30.5, 40.25], "label": labels[j % len(labels)], "score": 0.9 - 0.1 * j,
             "match": 100 * i + j if j < 2 else None, "iou": 0.8 if j < 2 else None}
            for j in range(i % 4)
        ]  # fmt: skip
        tp = min(2, len(detections))
        images.append(
            {"file": f"images/{i:04d}.jpg", "ground_truth": 2, "tp": tp, "fp": len(detections) - tp, "fn": 2 - tp,
             "detections": detections}
        )  # fmt: skip
    return images


def detection(labels: list[str], n: int = 12, *, version: str = "2", quality: float = 0.7) -> tuple:
    metrics = _detection_metrics(labels, quality)
    return _evaluation(_model("shapes", version, "detection"), metrics, n), _detection_images(n, labels)


def instance(labels: list[str], n: int = 8) -> tuple:
    segm, bbox = _detection_metrics(labels, 0.6), _detection_metrics(labels, 0.7)
    metrics = {
        "summary": {"mask_AP": segm["summary"]["AP"], "mask_AP50": segm["summary"]["AP50"],
                    "box_AP": bbox["summary"]["AP"]},
        "segm": segm,
        "bbox": bbox,
        "thresholds": segm["thresholds"],
    }  # fmt: skip
    return _evaluation(_model("cells", "1", "instance-segmentation"), metrics, n), _detection_images(n, labels)


def segmentation(labels: list[str], n: int = 10) -> tuple:
    k = len(labels)
    rng = np.random.default_rng(1)
    confusion = rng.integers(0, 50, (k, k)) + np.diag(rng.integers(1000, 100000, k))
    per_class = [
        {"label": label, "class_id": i, "IoU": 0.5 + 0.4 * i / k, "dice": 0.6, "pixels": int(confusion[i].sum())}
        for i, label in enumerate(labels)
    ]
    per_class[-1]["IoU"] = per_class[-1]["dice"] = None
    metrics = {
        "summary": {"mIoU": 0.62, "pixel_accuracy": 0.91, "mean_dice": 0.7},
        "mIoU": 0.62,
        "pixel_accuracy": 0.91,
        "mean_dice": 0.7,
        "per_class": per_class,
        "confusion_matrix": confusion.tolist(),
    }
    images = [
        {"file": f"images/{i:03d}.png", "pixel_accuracy": 0.9, "mIoU": None if i == 0 else 0.3 + 0.05 * i,
         "IoU": {label: (None if j == k - 1 else 0.1 * ((i + j) % 10)) for j, label in enumerate(labels)}}
        for i in range(n)
    ]  # fmt: skip
    return _evaluation(_model("roads", "4", "segmentation"), metrics, n), images


def _check_files(folder: Path, written: dict[str, str]) -> None:
    expected = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert set(written.values()) == expected
    assert {"report.html", "images.json", "images.csv"} <= set(written)
    for name in written:
        if name.endswith(".png"):
            with Image.open(folder / name) as image:
                assert 200 <= image.width <= 4000 and 200 <= image.height <= 4000, (name, image.size)
                pixels = np.asarray(image.convert("L"), dtype=np.float64)
            assert pixels.std() > 10, f"{name} is blank"


def _html(folder: Path) -> str:
    page = (folder / "report.html").read_text(encoding="utf-8")
    links = re.findall(r"""(?:src|href)\s*=\s*["']?([^"'\s>]*)""", page, flags=re.IGNORECASE)
    assert links and all(link.startswith(("data:image/png;base64,", "#")) for link in links), links
    assert not re.search(r"https?://", page)
    assert "<script" not in page.lower()
    return page


def _csv(folder: Path) -> tuple[list[str], list[dict[str, str]]]:
    with (folder / "images.csv").open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def test_classification(tmp_path: Path) -> None:
    labels = ["cat", "dog", EVIL, "bird"]
    evaluation, images = classification(200, labels)
    images[0].update(file=f"{EVIL}.png", correct=False, predicted="dog", score=0.999)
    written = write_report({"evaluations": [evaluation], "comparison": None}, [images], tmp_path)

    _check_files(tmp_path, written)
    assert "plots/0-confusion.png" in written
    page = _html(tmp_path)
    assert "digits:3" in page and f"{evaluation['metrics']['top1']:.3f}" in page
    assert html.escape(EVIL) in page and f"{html.escape(EVIL)}.png" in page  # the mistake listed, escaped
    header, rows = _csv(tmp_path)
    assert header == ["model", "file", "label", "predicted", "score", "correct"]
    assert len(rows) == 200 and rows[0]["model"] == "digits:3" and rows[0]["correct"] == "false"
    assert [r["file"] for r in rows] == [e["file"] for e in images]
    data = json.loads((tmp_path / "images.json").read_text())
    assert data == [{"model": "digits:3", "images": images}]


def test_classification_many_classes(tmp_path: Path) -> None:
    labels = [f"a rather long class name number {i}" for i in range(80)]
    evaluation, images = classification(2000, labels)
    written = write_report({"evaluations": [evaluation], "comparison": None}, [images], tmp_path)
    _check_files(tmp_path, written)
    with Image.open(tmp_path / "plots/0-confusion.png") as image:
        assert image.width >= 1000  # 80 classes get a bigger canvas, not smaller cells only


@pytest.mark.parametrize("num_classes", [3, 80])
def test_detection(tmp_path: Path, num_classes: int) -> None:
    labels = [f"class{i}" for i in range(num_classes - 1)] + [EVIL]
    evaluation, images = detection(labels)
    written = write_report({"evaluations": [evaluation], "comparison": None}, [images], tmp_path)

    _check_files(tmp_path, written)
    assert {"plots/0-ap.png", "plots/0-pr.png"} <= set(written)
    page = _html(tmp_path)
    assert "shapes:2" in page and f"{evaluation['metrics']['summary']['AP']:.3f}" in page
    assert "Score thresholds" in page and html.escape(EVIL) in page and EVIL not in page
    header, rows = _csv(tmp_path)
    assert header == ["model", "file", "ground_truth", "tp", "fp", "fn", "label", "score",
                      "x1", "y1", "x2", "y2", "match", "iou"]  # fmt: skip
    expected = sum(max(1, len(e["detections"])) for e in images)
    assert len(rows) == expected
    empty = next(r for r in rows if r["file"] == "images/0000.jpg")
    assert empty["label"] == "" and empty["score"] == "" and empty["fn"] == "2"
    unmatched = next(r for r in rows if r["file"] == "images/0003.jpg" and r["match"] == "")
    assert unmatched["iou"] == "" and float(unmatched["x2"]) == 50.5


def test_instance_segmentation(tmp_path: Path) -> None:
    evaluation, images = instance(["nucleus", "cell"])
    written = write_report({"evaluations": [evaluation], "comparison": None}, [images], tmp_path)
    _check_files(tmp_path, written)
    assert {"plots/0-segm-ap.png", "plots/0-segm-pr.png", "plots/0-bbox-ap.png", "plots/0-bbox-pr.png"} <= set(written)
    page = _html(tmp_path)
    assert "cells:1" in page and "mask AP" in page and "Score thresholds (masks)" in page
    header, rows = _csv(tmp_path)
    assert header[:3] == ["model", "file", "ground_truth"]
    assert len(rows) == sum(max(1, len(e["detections"])) for e in images)


def test_segmentation(tmp_path: Path) -> None:
    labels = ["background", "road", EVIL]
    evaluation, images = segmentation(labels)
    written = write_report({"evaluations": [evaluation], "comparison": None}, [images], tmp_path)
    _check_files(tmp_path, written)
    assert {"plots/0-confusion.png", "plots/0-iou.png"} <= set(written)
    page = _html(tmp_path)
    assert "roads:4" in page and "0.620" in page and "lowest mIoU" in page
    header, rows = _csv(tmp_path)
    assert header == ["model", "file", "pixel_accuracy", "mIoU"] + [f"IoU_{label}" for label in labels]
    assert len(rows) == 10 and rows[0]["mIoU"] == "" and rows[1]["IoU_road"] == "0.2"


def test_comparison(tmp_path: Path) -> None:
    labels = ["circle", "square", EVIL]
    old, old_images = detection(labels, version="1", quality=0.7)
    new, new_images = detection(labels, version="2", quality=0.6)
    new["metrics"]["per_class"][0]["AP"] = 0.9  # one class got better, the rest worse
    per_class = []
    for a, b in zip(old["metrics"]["per_class"], new["metrics"]["per_class"], strict=True):
        values = [a["AP"], b["AP"]]
        delta = [0.0, b["AP"] - a["AP"]] if a["AP"] >= 0 else [None, None]
        per_class.append({"label": a["label"], "metric": "AP", "values": values, "delta": delta})
    ap = [old["metrics"]["summary"]["AP"], new["metrics"]["summary"]["AP"]]
    comparison = {
        "models": ["shapes:1", "shapes:2"],
        "baseline": "shapes:1",
        "summary": [{"metric": "AP", "values": ap, "delta": [0.0, ap[1] - ap[0]]}],
        "per_class": per_class,
    }
    result = {"evaluations": [old, new], "comparison": comparison}
    written = write_report(result, [old_images, new_images], tmp_path)

    _check_files(tmp_path, written)
    assert "plots/compare-AP-1.png" in written and "plots/1-pr.png" in written
    page = _html(tmp_path)
    assert "shapes:1 (baseline)" in page
    assert f'<td class="down">{ap[1]:.3f} <span class="down">▼ {ap[1] - ap[0]:+.3f}</span>' in page
    better = per_class[0]["delta"][1]
    assert better > 0 and f'<span class="up">▲ {better:+.3f}</span>' in page
    worse = per_class[1]["delta"][1]
    assert worse < 0 and f'<span class="down">▼ {worse:+.3f}</span>' in page
    assert html.escape(EVIL) in page and EVIL not in page
    _, rows = _csv(tmp_path)
    per_model = sum(max(1, len(e["detections"])) for e in old_images)
    assert [r["model"] for r in rows] == ["shapes:1"] * per_model + ["shapes:2"] * per_model
    data = json.loads((tmp_path / "images.json").read_text())
    assert [d["model"] for d in data] == ["shapes:1", "shapes:2"]


def test_csv_cells_are_not_formulas(tmp_path: Path) -> None:
    evaluation, images = classification(3, ["=1+1", "b"])
    images[0]["file"] = "=HYPERLINK(1)"
    write_report({"evaluations": [evaluation], "comparison": None}, [images], tmp_path)
    _, rows = _csv(tmp_path)
    assert rows[0]["file"] == "'=HYPERLINK(1)"
    assert all(not r[c].startswith(("=", "+", "-", "@")) for r in rows for c in ("file", "label", "predicted"))


def test_mismatched_lists_refused(tmp_path: Path) -> None:
    evaluation, images = classification(3, ["a", "b"])
    with pytest.raises(ValueError, match="per-image"):
        write_report({"evaluations": [evaluation], "comparison": None}, [images, images], tmp_path)


def test_large_jobs_are_fast(tmp_path: Path) -> None:
    evaluation, images = classification(20_000, [f"class{i}" for i in range(100)])
    started = time.perf_counter()
    write_report({"evaluations": [evaluation], "comparison": None}, [images], tmp_path / "classification")
    assert time.perf_counter() - started < 10
    _, rows = _csv(tmp_path / "classification")
    assert len(rows) == 20_000

    evaluation, det_images = detection([f"class{i}" for i in range(80)], n=2000)
    started = time.perf_counter()
    write_report({"evaluations": [evaluation], "comparison": None}, [det_images], tmp_path / "detection")
    assert time.perf_counter() - started < 10
