"""Object detection: padded per-image outputs (NMS already done in the graph) to boxes in image pixels.

Graph outputs, per image: `boxes` [K, 4] (x1, y1, x2, y2 in model-input pixels), `scores` [K], `labels` [K]
(0-based indices into model.json's labels), `num_detections` [] (how many of the K rows are valid).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, Field, field_validator

from dataformats.detection import load_detection_dataset
from service.errors import InvalidParameter
from service.imaging import Geometry
from service.metadata import ModelMetadata
from service.tasks import register_task
from service.tasks.base import EvalDataset, EvalItem, Outputs, ServeTask
from service.tasks.coco import run_cocoeval
from service.tasks.datasets import read_ground_truth


class DetectionParams(BaseModel):
    score_threshold: float = Field(0.25, ge=0.0, le=1.0)
    max_detections: int = Field(100, ge=1, le=10_000)
    classes: list[str] | None = None  # label names or class ids, as strings
    # Per class id, from model.json's params.class_thresholds; used while the request names no score_threshold.
    class_thresholds: dict[int, float] | None = None

    @field_validator("classes", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, (str, int)):
            value = [v.strip() for v in str(value).split(",") if v.strip()]
        if isinstance(value, list):
            return [str(v) for v in value]
        return value


def class_filter(classes: list[str] | None, labels: list[str]) -> set[int] | None:
    if not classes:
        return None
    index = {label: i for i, label in enumerate(labels)}
    wanted = set()
    for name in classes:
        if name in index:
            wanted.add(index[name])
        elif name.isdigit() and int(name) < len(labels):
            wanted.add(int(name))
        else:
            raise InvalidParameter(f"classes: unknown class {name!r}; the model's labels are {labels}")
    return wanted


def to_image_boxes(boxes: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Model-input pixels back to the original image's pixels, clipped to the image."""
    mapped = np.empty_like(boxes, dtype=np.float64)
    mapped[:, [0, 2]] = (boxes[:, [0, 2]] - geometry.pad_x) / geometry.scale_x
    mapped[:, [1, 3]] = (boxes[:, [1, 3]] - geometry.pad_y) / geometry.scale_y
    mapped[:, [0, 2]] = mapped[:, [0, 2]].clip(0, geometry.width)
    mapped[:, [1, 3]] = mapped[:, [1, 3]].clip(0, geometry.height)
    return mapped


def image_pixel_boxes(tensors: dict[str, np.ndarray], geometries: list[Geometry] | None) -> dict[str, np.ndarray]:
    """The padded `boxes` of a batch, each image's valid rows in its own pixels (the v2 encoded-image view);
    padding rows stay zero."""
    if geometries is None:
        return tensors
    boxes = np.zeros_like(tensors["boxes"])
    for i, geometry in enumerate(geometries):
        count = int(tensors["num_detections"][i])
        boxes[i, :count] = to_image_boxes(tensors["boxes"][i, :count], geometry)
    return {**tensors, "boxes": boxes}


def select_detections(outputs: Outputs, params: DetectionParams, labels: list[str]) -> np.ndarray:
    """Indices of the valid rows that pass the threshold and class filter, best first, at most max."""
    count = int(outputs["num_detections"])
    scores, classes = outputs["scores"][:count], outputs["labels"][:count]
    if params.class_thresholds:
        per_class = np.full(len(labels), params.score_threshold, dtype=np.float64)
        for class_id, threshold in params.class_thresholds.items():
            per_class[class_id] = threshold
        keep = scores >= per_class[np.clip(classes, 0, len(labels) - 1)]
    else:
        keep = scores >= params.score_threshold
    wanted = class_filter(params.classes, labels)
    if wanted is not None:
        keep &= np.isin(classes, list(wanted))
    indices = np.flatnonzero(keep)
    indices = indices[np.argsort(-scores[indices], kind="stable")]
    return indices[: params.max_detections]


def class_thresholds(metadata: ModelMetadata) -> dict[int, float] | None:
    """model.json's per-class thresholds (`optic export --thresholds-from`), by class id; None without."""
    by_label = metadata.params.get("class_thresholds") or {}
    index = {label: i for i, label in enumerate(metadata.labels)}
    return {index[label]: float(v) for label, v in by_label.items() if label in index} or None


class BoxTask(ServeTask):
    """What detection and instance segmentation share: a class filter checked up front, and the v2 view's
    boxes in each image's own pixels (instance masks stay the graph's: MxM inside each box)."""

    def check_params(self, params: Any, metadata: ModelMetadata) -> None:
        class_filter(params.classes, metadata.labels)

    def tensor_outputs(
        self, outputs: dict[str, np.ndarray], geometries: list[Geometry] | None, metadata: ModelMetadata
    ) -> dict[str, np.ndarray]:
        return image_pixel_boxes(outputs, geometries)

    def score_boxes(
        self, records: list[dict[str, Any]], info: dict[str, Any], metadata: ModelMetadata, kinds: tuple[str, ...]
    ) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
        """COCOeval of each kind ("bbox", "segm") with curves and per-class F1 thresholds; the per-image
        results at the first kind's thresholds, with its matches."""
        coco = coco_from_records(records, info)
        label_to_category = dict(info["label_to_category"])
        reports = {
            kind: run_cocoeval(coco, coco_results(records, label_to_category, kind), kind, metadata.labels,
                               label_to_category, curves=True, matching=True)
            for kind in kinds
        }  # fmt: skip
        matches = {kind: report.pop("matches") for kind, report in reports.items()}[kinds[0]]
        defaults = self.default_params(metadata)
        assert isinstance(defaults, DetectionParams)
        fallback = defaults.score_threshold  # classes the thresholds do not name
        thresholds = reports[kinds[0]]["thresholds"]
        return reports, box_images(records, matches, thresholds, fallback, label_to_category)


@register_task
class DetectionTask(BoxTask):
    name = "detection"
    params_model = DetectionParams

    def default_params(self, metadata: ModelMetadata) -> DetectionParams:
        return DetectionParams(
            score_threshold=max(0.25, float(metadata.params.get("score_threshold", 0.0))),
            max_detections=int(metadata.params.get("max_detections", 100)),
            class_thresholds=class_thresholds(metadata),
        )

    def postprocess(self, outputs: Outputs, geometry: Geometry, metadata: ModelMetadata, params: Any) -> dict[str, Any]:
        indices = select_detections(outputs, params, metadata.labels)
        boxes = to_image_boxes(outputs["boxes"][indices], geometry)
        detections = []
        for box, i in zip(boxes, indices, strict=True):
            class_id = int(outputs["labels"][i])
            detections.append({
                "box": [round(float(v), 2) for v in box],
                "label": metadata.labels[class_id],
                "class_id": class_id,
                "score": float(outputs["scores"][i]),
            })  # fmt: skip
        return {"width": geometry.width, "height": geometry.height, "detections": detections}

    def load_eval_dataset(self, root: Path, metadata: ModelMetadata) -> EvalDataset:
        """COCO JSON, else YOLO txt (as in training, COCO wins where both are present: it can say iscrowd)."""
        return read_ground_truth(load_detection_dataset, root, metadata)

    def eval_params(self, metadata: ModelMetadata) -> DetectionParams:
        # Everything the graph kept: COCO AP integrates over all scores.
        return DetectionParams(score_threshold=0.0, max_detections=int(metadata.params.get("max_detections", 100)))

    def eval_info(self, dataset: EvalDataset) -> dict[str, Any]:
        return box_eval_info(dataset)

    def eval_record(
        self, item: EvalItem, outputs: Outputs, result: dict[str, Any], dataset: EvalDataset, metadata: ModelMetadata
    ) -> dict[str, Any]:
        return box_record(item, dataset, result["detections"])

    def score(
        self, records: list[dict[str, Any]], info: dict[str, Any], metadata: ModelMetadata
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        reports, images = self.score_boxes(records, info, metadata, ("bbox",))
        return reports["bbox"], images


def box_eval_info(dataset: EvalDataset) -> dict[str, Any]:
    """The COCO categories and label mapping scoring needs; each image's ground truth goes in its record."""
    coco = dataset.info["coco"]
    by_image: dict[Any, list[dict[str, Any]]] = {}
    for ann in coco["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    dataset.info["_images"] = {image["id"]: image for image in coco["images"]}
    dataset.info["_annotations"] = by_image
    return {"categories": coco["categories"], "label_to_category": sorted(dataset.info["label_to_category"].items())}


def box_record(item: EvalItem, dataset: EvalDataset, found: list[dict[str, Any]]) -> dict[str, Any]:
    keep = ("box", "label", "score", "class_id", "mask")
    return {
        "image": dataset.info["_images"][item.target],
        "annotations": dataset.info["_annotations"].get(item.target, []),
        "detections": [{k: d[k] for k in keep if k in d} for d in found],
    }


def coco_from_records(records: list[dict[str, Any]], info: dict[str, Any]) -> dict[str, Any]:
    """The ground truth as one COCO file, in data set order: one run and merged shards score the same."""
    return {
        "images": [r["image"] for r in records],
        "annotations": [ann for r in records for ann in r["annotations"]],
        "categories": info["categories"],
    }


def coco_results(records: list[dict[str, Any]], label_to_category: dict[int, int], kind: str) -> list[dict[str, Any]]:
    """COCO result entries (`bbox` boxes as x, y, w, h; `segm` RLE masks), in record order."""
    found = []
    for record in records:
        image_id = record["image"]["id"]
        for det in record["detections"]:
            if det["class_id"] not in label_to_category:
                continue
            entry = {"image_id": image_id, "category_id": label_to_category[det["class_id"]], "score": det["score"]}
            if kind == "segm":
                entry["segmentation"] = det["mask"]
            else:
                x1, y1, x2, y2 = det["box"]
                entry["bbox"] = [x1, y1, x2 - x1, y2 - y1]
            found.append(entry)
    return found


def box_images(
    records: list[dict[str, Any]],
    matches: dict[str, Any],
    thresholds: dict[str, float],
    fallback: float,
    label_to_category: dict[int, int],
) -> list[dict[str, Any]]:
    """Per image, at the operating point the per-class F1 thresholds set: its detections with COCOeval's
    match (ground-truth id, IoU), and true positives, false positives and missed ground truth."""
    category_label = {c: label for label, c in label_to_category.items()}
    matched = matches["detections"]
    images = []
    index = 0  # the detection's position in coco_results' list
    for record in records:
        image_id = record["image"]["id"]
        counted = matches["ground_truth"].get(image_id, {})
        found_ids: set[int] = set()
        listed = []
        tp = fp = 0
        for det in record["detections"]:
            if det["class_id"] not in label_to_category:
                continue
            gt_id, iou, ignored = matched.get(index, (None, None, False))
            index += 1
            label = det.get("label")
            threshold = thresholds.get(label, fallback) if label is not None else fallback
            if det["score"] < threshold or ignored:
                continue
            listed.append({"box": det["box"], "label": label, "class_id": det["class_id"], "score": det["score"],
                           "match": gt_id, "iou": None if iou is None else round(iou, 4)})  # fmt: skip
            if gt_id is not None:
                tp += 1
                found_ids.add(gt_id)
            else:
                fp += 1
        truth = [g for category in counted for g in counted[category] if category in category_label]
        images.append({"file": record["file"], "ground_truth": len(truth), "tp": tp, "fp": fp,
                       "fn": sum(1 for g in truth if g not in found_ids), "detections": listed})  # fmt: skip
    return images
