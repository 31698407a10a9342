"""Semantic segmentation: the graph's argmax class map -> per-class masks at the original size.

Graph output: `class_map` [N, H, W] (integer class ids, model-input pixels). Ground truth for evaluation:
PNG masks of class indices with the image's stem (255 = ignore), or COCO polygons/RLE rasterized.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pydantic import BaseModel, Field

from dataformats.masks import IGNORE_INDEX, load_mask_dataset
from service.imaging import Geometry
from service.metadata import ModelMetadata
from service.tasks import register_task
from service.tasks.base import EvalDataset, EvalItem, Outputs, ServeTask
from service.tasks.datasets import read_ground_truth, read_mask
from service.tasks.masks import MaskFormat, encode_mask, input_to_image


class SegmentationParams(BaseModel):
    mask_format: MaskFormat = "rle"
    # Accepted, and checked as for instance models, for a uniform /segment; semantic maps have no scores.
    score_threshold: float | None = Field(None, ge=0.0, le=1.0)
    include_background: bool = False


def class_map_at_image_size(outputs: Outputs, geometry: Geometry) -> np.ndarray:
    return input_to_image(outputs["class_map"].astype(np.uint8), geometry, Image.Resampling.NEAREST)


@register_task
class SegmentationTask(ServeTask):
    name = "segmentation"
    params_model = SegmentationParams
    inline_postprocess = False  # masks at the image's size, encoded

    def postprocess(self, outputs: Outputs, geometry: Geometry, metadata: ModelMetadata, params: Any) -> dict[str, Any]:
        class_map = class_map_at_image_size(outputs, geometry)
        background = metadata.params.get("background_class", 0)
        ids, counts = np.unique(class_map, return_counts=True)
        classes = []
        for class_id, area in zip(ids.tolist(), counts.tolist(), strict=True):
            if class_id >= len(metadata.labels) or (class_id == background and not params.include_background):
                continue
            classes.append({
                "label": metadata.labels[class_id],
                "class_id": class_id,
                "area": int(area),
                "mask": encode_mask(class_map == class_id, params.mask_format),
            })  # fmt: skip
        return {"width": geometry.width, "height": geometry.height, "classes": classes}

    def load_eval_dataset(self, root: Path, metadata: ModelMetadata) -> EvalDataset:
        return read_ground_truth(load_mask_dataset, root, metadata)

    def eval_params(self, metadata: ModelMetadata) -> SegmentationParams:
        return SegmentationParams(mask_format="rle", include_background=True)

    def eval_record(
        self, item: EvalItem, outputs: Outputs, result: dict[str, Any], dataset: EvalDataset, metadata: ModelMetadata
    ) -> dict[str, Any]:
        """The image's confusion matrix in pixels (non-zero cells): sums of them are the data set's."""
        num_classes = len(metadata.labels)
        truth = read_mask(item.target, item.path, num_classes)
        confusion = confusion_matrix(truth, _prediction_map(result, truth.shape), num_classes)
        rows, cols = np.nonzero(confusion)
        return {"confusion": [[int(r), int(c), int(confusion[r, c])] for r, c in zip(rows, cols, strict=True)]}

    def score(
        self, records: list[dict[str, Any]], info: dict[str, Any], metadata: ModelMetadata
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        labels = metadata.labels
        total = np.zeros((len(labels), len(labels)), dtype=np.int64)
        images = []
        for record in records:
            confusion = np.zeros_like(total)
            for r, c, count in record["confusion"]:
                confusion[r, c] = count
            total += confusion
            own = segmentation_metrics(confusion, labels)
            images.append({
                "file": record["file"],
                "pixel_accuracy": own["pixel_accuracy"],
                "mIoU": own["mIoU"] if any(c["IoU"] is not None for c in own["per_class"]) else None,
                "IoU": {c["label"]: c["IoU"] for c in own["per_class"]},
            })  # fmt: skip
        return segmentation_metrics(total, labels), images


def _prediction_map(result: dict[str, Any], shape: tuple[int, ...]) -> np.ndarray:
    """The full-size class map rebuilt from the result's RLE masks: metrics score exactly what was served."""
    from pycocotools import mask as mask_utils

    predicted = np.zeros(shape, dtype=np.int64)
    for entry in result["classes"]:
        decoded = mask_utils.decode({"size": entry["mask"]["size"], "counts": entry["mask"]["counts"].encode()})
        predicted[decoded.astype(bool)] = entry["class_id"]
    return predicted


def confusion_matrix(truth: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    valid = truth != IGNORE_INDEX
    index = truth[valid] * num_classes + predicted[valid]
    return np.bincount(index, minlength=num_classes**2).reshape(num_classes, num_classes)


def segmentation_metrics(confusion: np.ndarray, labels: list[str]) -> dict[str, Any]:
    """mIoU, per-class IoU, pixel accuracy and mean Dice from one confusion matrix over all pixels.

    Classes absent from both ground truth and predictions have no IoU and are left out of the means.
    """
    true_positive = np.diag(confusion).astype(np.float64)
    truth_total = confusion.sum(axis=1)
    predicted_total = confusion.sum(axis=0)
    union = truth_total + predicted_total - true_positive
    present = union > 0
    iou = np.divide(true_positive, union, out=np.full(len(labels), np.nan), where=present)
    dice = np.divide(2 * true_positive, truth_total + predicted_total, out=np.full(len(labels), np.nan), where=present)
    pixel_accuracy = float(true_positive.sum() / max(1, confusion.sum()))
    mean_iou = float(np.nanmean(iou)) if present.any() else 0.0
    mean_dice = float(np.nanmean(dice)) if present.any() else 0.0
    return {
        "summary": {"mIoU": mean_iou, "pixel_accuracy": pixel_accuracy, "mean_dice": mean_dice},
        "mIoU": mean_iou,
        "pixel_accuracy": pixel_accuracy,
        "mean_dice": mean_dice,
        "per_class": [
            {
                "label": labels[i],
                "class_id": i,
                "IoU": None if np.isnan(iou[i]) else float(iou[i]),
                "dice": None if np.isnan(dice[i]) else float(dice[i]),
                "pixels": int(truth_total[i]),
            }
            for i in range(len(labels))
        ],
        "confusion_matrix": confusion.tolist(),
    }
