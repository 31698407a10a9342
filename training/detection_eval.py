"""COCO box and mask metrics with pycocotools (the scorer `optic eval` uses), per-class AP, PR curves, plots.

Predictions are scored in original-image pixels, mapped back from the letterbox exactly as the service maps
them (`service.tasks.detection.to_image_boxes`), against the split's full COCO ground truth (crowd regions
included), so the numbers training reports are the numbers `optic eval` reproduces on the exported model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from service.imaging import Geometry
from service.tasks.coco import run_cocoeval
from service.tasks.detection import to_image_boxes
from training import plots

# COCOeval summary name -> metric key; `map` (AP@[.5:.95]) is the detection task's primary metric.
METRIC_KEYS = {
    "AP": "map",
    "AP50": "map50",
    "AP75": "map75",
    "AP_small": "map_small",
    "AP_medium": "map_medium",
    "AP_large": "map_large",
    "AR100": "mar100",
}


def coco_detections(
    image_id: Any,
    boxes: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    geometry: Geometry,
    label_to_category: dict[int, int],
) -> list[dict[str, Any]]:
    """One image's detections (model-input pixels, 0-based labels) as COCO results in image pixels."""
    mapped = to_image_boxes(np.asarray(boxes, dtype=np.float64).reshape(-1, 4), geometry)
    return [
        {
            "image_id": image_id,
            "category_id": label_to_category[int(label)],
            "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)],
            "score": float(score),
        }
        for (x1, y1, x2, y2), score, label in zip(mapped, scores, labels, strict=True)
        if int(label) in label_to_category
    ]


def score_coco(
    ground_truth: dict[str, Any],
    detections: list[dict[str, Any]],
    names: dict[int, str],
    label_to_category: dict[int, int],
    iou_type: str = "bbox",
) -> tuple[dict[str, float], dict[str, Any]]:
    """(metrics, details): the service's COCOeval (`run_cocoeval`, what `optic eval` runs) as training metric
    keys, plus per-class AP/AP50 and PR curves at IoU 0.5 for the classes the split has ground truth for.

    `iou_type` is COCOeval's: "bbox" for boxes, "segm" for masks (detections then carry RLE `segmentation`).
    """
    if not detections:
        return {key: 0.0 for key in METRIC_KEYS.values()}, {"per_class": [], "pr_curves": {}, "num_detections": 0}
    labels = [names.get(label, "") for label in range(max(label_to_category, default=-1) + 1)]
    report = run_cocoeval(ground_truth, detections, iou_type, labels, label_to_category, curves=True)
    summary = report["summary"]
    # -1 means "no ground truth in that area range": absent, not zero.
    metrics = {key: summary[name] for name, key in METRIC_KEYS.items() if summary[name] >= 0}
    present = [row for row in report["per_class"] if row["AP50"] >= 0]  # -1: no ground truth of that class
    per_class = [{"label": row["label"], "AP": row["AP"], "AP50": row["AP50"]} for row in present]
    curves = {row["label"]: (row["pr_curve"]["recall"], row["pr_curve"]["precision"]) for row in present}
    return metrics, {"per_class": per_class, "pr_curves": curves, "num_detections": report["num_detections"]}


def plot_class_ap(path: Path, per_class: list[dict[str, Any]], title: str) -> Path | None:
    names = [row["label"] for row in per_class]
    series = {"AP50": [row["AP50"] for row in per_class], "AP@[.5:.95]": [row["AP"] for row in per_class]}
    return plots.plot_class_bars(path, names, series, ylabel="average precision", title=title)
