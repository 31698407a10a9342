"""Instance segmentation: detection's padded outputs plus a small mask per instance, pasted here.

Graph outputs per image: `boxes`, `scores`, `labels`, `num_detections` as for detection, and `masks`
[K, M, M] mask probabilities inside each box (Mask R-CNN's 28x28 head output). Pasting K full-size masks in
the graph would make its output K x H x W floats; pasting them here, at the original image size, is cheaper
and exact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pydantic import Field

from dataformats.instances import load_instance_dataset
from service.imaging import Geometry
from service.metadata import ModelMetadata
from service.tasks import register_task
from service.tasks.base import EvalDataset, EvalItem, Outputs
from service.tasks.datasets import read_ground_truth
from service.tasks.detection import (
    BoxTask,
    DetectionParams,
    box_eval_info,
    box_record,
    class_thresholds,
    select_detections,
    to_image_boxes,
)
from service.tasks.masks import MaskFormat, encode_mask

MASK_THRESHOLD = 0.5


class InstanceParams(DetectionParams):
    mask_format: MaskFormat = "rle"
    score_threshold: float = Field(0.5, ge=0.0, le=1.0)


def paste_mask(mask: np.ndarray, box: np.ndarray, width: int, height: int) -> np.ndarray:
    """torchvision's paste_masks_in_image for one instance: pad the MxM mask by one pixel, grow the box by
    the same ratio, resize bilinearly into it and threshold."""
    size = mask.shape[0]
    padded = np.pad(mask.astype(np.float32), 1)
    scale = (size + 2) / size
    center_x, center_y = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    half_w, half_h = (box[2] - box[0]) / 2 * scale, (box[3] - box[1]) / 2 * scale
    x0, y0 = int(center_x - half_w), int(center_y - half_h)
    x1, y1 = int(center_x + half_w), int(center_y + half_h)
    box_w, box_h = max(x1 - x0 + 1, 1), max(y1 - y0 + 1, 1)
    resized = np.asarray(Image.fromarray(padded, mode="F").resize((box_w, box_h), Image.Resampling.BILINEAR))
    canvas = np.zeros((height, width), dtype=bool)
    cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1 + 1, width), min(y1 + 1, height)
    if cx1 > cx0 and cy1 > cy0:
        canvas[cy0:cy1, cx0:cx1] = resized[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0] > MASK_THRESHOLD
    return canvas


@register_task
class InstanceSegmentationTask(BoxTask):
    name = "instance-segmentation"
    params_model = InstanceParams
    inline_postprocess = False  # masks at the image's size, encoded

    def default_params(self, metadata: ModelMetadata) -> InstanceParams:
        return InstanceParams(
            score_threshold=max(0.5, float(metadata.params.get("score_threshold", 0.0))),
            max_detections=int(metadata.params.get("max_detections", 100)),
            class_thresholds=class_thresholds(metadata),
        )

    def postprocess(self, outputs: Outputs, geometry: Geometry, metadata: ModelMetadata, params: Any) -> dict[str, Any]:
        indices = select_detections(outputs, params, metadata.labels)
        boxes = to_image_boxes(outputs["boxes"][indices], geometry)
        instances = []
        for box, i in zip(boxes, indices, strict=True):
            class_id = int(outputs["labels"][i])
            mask = paste_mask(outputs["masks"][i], box, geometry.width, geometry.height)
            instances.append({
                "box": [round(float(v), 2) for v in box],
                "label": metadata.labels[class_id],
                "class_id": class_id,
                "score": float(outputs["scores"][i]),
                "area": int(mask.sum()),
                "mask": encode_mask(mask, params.mask_format),
            })  # fmt: skip
        return {"width": geometry.width, "height": geometry.height, "instances": instances}

    def load_eval_dataset(self, root: Path, metadata: ModelMetadata) -> EvalDataset:
        """COCO polygons/RLE (in bounds, RLE sizes right), else YOLO-seg polygons."""
        return read_ground_truth(load_instance_dataset, root, metadata)

    def eval_params(self, metadata: ModelMetadata) -> InstanceParams:
        return InstanceParams(
            score_threshold=0.0, max_detections=int(metadata.params.get("max_detections", 100)), mask_format="rle"
        )

    def eval_info(self, dataset: EvalDataset) -> dict[str, Any]:
        return box_eval_info(dataset)

    def eval_record(
        self, item: EvalItem, outputs: Outputs, result: dict[str, Any], dataset: EvalDataset, metadata: ModelMetadata
    ) -> dict[str, Any]:
        return box_record(item, dataset, result["instances"])

    def score(
        self, records: list[dict[str, Any]], info: dict[str, Any], metadata: ModelMetadata
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        report, images = self.score_boxes(records, info, metadata, ("segm", "bbox"))
        return {
            "summary": {
                "mask_AP": report["segm"]["summary"]["AP"],
                "mask_AP50": report["segm"]["summary"]["AP50"],
                "box_AP": report["bbox"]["summary"]["AP"],
            },
            "thresholds": report["segm"]["thresholds"],
            **report,
        }, images
