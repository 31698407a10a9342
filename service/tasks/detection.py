"""Object detection: padded per-image outputs (NMS already done in the graph) to boxes in image pixels.

Graph outputs, per image: `boxes` [K, 4] (x1, y1, x2, y2 in model-input pixels), `scores` [K], `labels` [K]
(0-based indices into model.json's labels), `num_detections` [] (how many of the K rows are valid).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, Field, field_validator

from service.errors import InvalidDataset, InvalidParameter
from service.imaging import Geometry
from service.metadata import ModelMetadata
from service.tasks import register_task
from service.tasks.base import EvalDataset, Outputs, ServeTask
from service.tasks.coco import has_coco_json, load_coco_dataset, public_info, run_cocoeval
from service.tasks.yolo import NAME_FILES, YAML_FILES, find_yolo_root, load_yolo_dataset


class DetectionParams(BaseModel):
    score_threshold: float = Field(0.25, ge=0.0, le=1.0)
    max_detections: int = Field(100, ge=1, le=10_000)
    classes: list[str] | None = None  # label names or class ids, as strings

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
    keep = scores >= params.score_threshold
    wanted = class_filter(params.classes, labels)
    if wanted is not None:
        keep &= np.isin(classes, list(wanted))
    indices = np.flatnonzero(keep)
    indices = indices[np.argsort(-scores[indices], kind="stable")]
    return indices[: params.max_detections]


class BoxTask(ServeTask):
    """What detection and instance segmentation share: a class filter checked up front, and the v2 view's
    boxes in each image's own pixels (instance masks stay the graph's: MxM inside each box)."""

    def check_params(self, params: Any, metadata: ModelMetadata) -> None:
        class_filter(params.classes, metadata.labels)

    def tensor_outputs(
        self, outputs: dict[str, np.ndarray], geometries: list[Geometry] | None, metadata: ModelMetadata
    ) -> dict[str, np.ndarray]:
        return image_pixel_boxes(outputs, geometries)


@register_task
class DetectionTask(BoxTask):
    name = "detection"
    params_model = DetectionParams

    def default_params(self, metadata: ModelMetadata) -> DetectionParams:
        return DetectionParams(
            score_threshold=max(0.25, float(metadata.params.get("score_threshold", 0.0))),
            max_detections=int(metadata.params.get("max_detections", 100)),
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
        if has_coco_json(root):
            return load_coco_dataset(root, metadata)
        base = find_yolo_root(root)
        if base is None:
            raise InvalidDataset(
                "the archive holds neither a COCO annotation file (*.json) nor a YOLO data set "
                f"(images/ and labels/ with class names in {' or '.join(YAML_FILES + NAME_FILES)})"
            )
        return load_yolo_dataset(root, base, metadata)

    def eval_params(self, metadata: ModelMetadata) -> DetectionParams:
        # Everything the graph kept: COCO AP integrates over all scores.
        return DetectionParams(score_threshold=0.0, max_detections=int(metadata.params.get("max_detections", 100)))

    def compute_metrics(
        self, dataset: EvalDataset, outputs: list[Outputs], results: list[dict[str, Any]], metadata: ModelMetadata
    ) -> dict[str, Any]:
        detections = coco_detections(dataset, results)
        report = run_cocoeval(
            dataset.info["coco"], detections, "bbox", metadata.labels, dataset.info["label_to_category"]
        )
        public_info(dataset)
        return report


def coco_detections(dataset: EvalDataset, results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    label_to_category = dataset.info["label_to_category"]
    detections = []
    for item, result in zip(dataset.items, results, strict=True):
        for det in result["detections"]:
            if det["class_id"] not in label_to_category:
                continue
            x1, y1, x2, y2 = det["box"]
            detections.append({
                "image_id": item.target,
                "category_id": label_to_category[det["class_id"]],
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "score": det["score"],
            })  # fmt: skip
    return detections
