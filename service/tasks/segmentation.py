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

from service.errors import InvalidDataset
from service.imaging import Geometry
from service.metadata import ModelMetadata
from service.tasks import register_task
from service.tasks.base import EvalDataset, EvalItem, Outputs, ServeTask
from service.tasks.masks import MaskFormat, encode_mask, input_to_image

IGNORE_INDEX = 255
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}


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
        return load_mask_dataset(root, metadata)

    def eval_params(self, metadata: ModelMetadata) -> SegmentationParams:
        return SegmentationParams(mask_format="rle", include_background=True)

    def compute_metrics(
        self, dataset: EvalDataset, outputs: list[Outputs], results: list[dict[str, Any]], metadata: ModelMetadata
    ) -> dict[str, Any]:
        num_classes = len(metadata.labels)
        confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
        for item, _out, result in zip(dataset.items, outputs, results, strict=True):
            truth = read_mask(item.target, item.path, num_classes)
            predicted = _prediction_map(result, truth.shape)
            confusion += confusion_matrix(truth, predicted, num_classes)
        return segmentation_metrics(confusion, metadata.labels)


def _prediction_map(result: dict[str, Any], shape: tuple[int, ...]) -> np.ndarray:
    """The full-size class map rebuilt from the result's RLE masks: metrics score exactly what was served."""
    from pycocotools import mask as mask_utils

    predicted = np.zeros(shape, dtype=np.int64)
    for entry in result["classes"]:
        decoded = mask_utils.decode({"size": entry["mask"]["size"], "counts": entry["mask"]["counts"].encode()})
        predicted[decoded.astype(bool)] = entry["class_id"]
    return predicted


def read_mask(path: Path, image_path: Path, num_classes: int) -> np.ndarray:
    try:
        with Image.open(path) as mask_image, Image.open(image_path) as image:
            if mask_image.size != image.size:
                raise InvalidDataset(
                    f"mask {path.name} is {mask_image.size[0]}x{mask_image.size[1]} but its image "
                    f"{image_path.name} is {image.size[0]}x{image.size[1]}"
                )
            if mask_image.mode not in ("L", "P", "I", "I;16", "1"):
                raise InvalidDataset(f"mask {path.name} must be single-channel class indices, not {mask_image.mode}")
            mask = np.asarray(mask_image).astype(np.int64)
    except OSError as exc:
        raise InvalidDataset(f"mask {path.name} cannot be read: {exc}") from None
    bad = (mask >= num_classes) & (mask != IGNORE_INDEX)
    if bad.any():
        raise InvalidDataset(f"mask {path.name} holds class ids >= {num_classes} (255 = ignore)")
    return mask


def load_mask_dataset(root: Path, metadata: ModelMetadata) -> EvalDataset:
    """`images/` + `masks/` (same stems), optionally under test/ or val/, or a COCO file to rasterize."""
    from service.tasks.classification import find_split_root

    split = find_split_root(root)
    images_dir, masks_dir = split / "images", split / "masks"
    if not images_dir.is_dir() or not masks_dir.is_dir():
        if any(split.rglob("*.json")):
            from service.tasks.coco_masks import rasterize_coco

            return rasterize_coco(root, metadata)
        raise InvalidDataset("a segmentation data set needs images/ and masks/ folders, or a COCO file")
    masks = {p.stem: p for p in masks_dir.iterdir() if p.suffix.lower() == ".png"}
    items = []
    for image in sorted(images_dir.iterdir()):
        if image.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if image.stem not in masks:
            raise InvalidDataset(f"image {image.name} has no mask masks/{image.stem}.png")
        items.append(EvalItem(path=image, target=masks[image.stem]))
    if not items:
        raise InvalidDataset("the images/ folder holds no images")
    return EvalDataset(items=items, info={"split": split.name})


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
