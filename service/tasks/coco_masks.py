"""COCO polygons / RLE -> PNG class-index masks, so semantic evaluation reads one format."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from service.errors import InvalidDataset
from service.metadata import ModelMetadata
from service.tasks.base import EvalDataset, EvalItem
from service.tasks.coco import _resolve_image, find_coco_json, validate_coco

IGNORE_INDEX = 255
BOUNDS_TOLERANCE_PX = 1.0


def check_segmentation_bounds(
    ann: dict[str, Any], width: int, height: int, path: Path, image_name: str = "its image"
) -> None:
    """Polygon points outside the image are an annotation error, not something to clip silently."""
    segmentation = ann.get("segmentation")
    if isinstance(segmentation, dict):  # RLE: its size must be the image's
        size = segmentation.get("size")
        if size != [height, width]:
            raise InvalidDataset(
                f"malformed COCO file {path.name}: annotation {ann.get('id')} RLE size {size} "
                f"differs from {image_name}'s [{height}, {width}] ([height, width])"
            )
        return
    if not isinstance(segmentation, list) or not all(isinstance(p, list) for p in segmentation):
        raise InvalidDataset(f"malformed COCO file {path.name}: annotation {ann.get('id')} has no polygon list or RLE")
    for polygon in segmentation:
        if len(polygon) < 6 or len(polygon) % 2:
            raise InvalidDataset(
                f"malformed COCO file {path.name}: annotation {ann.get('id')} has a polygon with fewer than 3 points"
            )
        xs, ys = np.asarray(polygon[0::2], dtype=float), np.asarray(polygon[1::2], dtype=float)
        tol = BOUNDS_TOLERANCE_PX
        if xs.min() < -tol or ys.min() < -tol or xs.max() > width + tol or ys.max() > height + tol:
            raise InvalidDataset(
                f"malformed COCO file {path.name}: annotation {ann.get('id')} has polygon points outside "
                f"{image_name}, {width}x{height}"
            )


def upright_size(path: Path) -> tuple[int, int] | None:
    """(width, height) as the service decodes the file (EXIF rotation applied), from its header alone; None
    where it cannot be read (the evaluation runner then refuses it, naming it)."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            if image.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # rotated a quarter turn
                width, height = height, width
    except (OSError, SyntaxError, ValueError):
        return None
    return width, height


def load_checked_coco(root: Path, metadata: ModelMetadata) -> tuple[Path, dict[str, Any]]:
    """The COCO file, checked beyond what pycocotools needs: each image's declared size is its file's, and
    every segmentation fits it. Masks are scored in the file's size, so a wrong declared size would make
    every IoU of that image silently fail (pycocotools scores masks of different sizes as no overlap)."""
    path = find_coco_json(root)
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidDataset(f"malformed COCO file {path.name}: not valid JSON ({exc})") from None
    validate_coco(data, path, need_segmentation=True)
    images = {image["id"]: image for image in data["images"]}
    for image in data["images"]:
        declared = (int(image["width"]), int(image["height"]))
        actual = upright_size(_resolve_image(path.parent, root, image["file_name"]))
        if actual is not None and actual != declared:
            raise InvalidDataset(
                f"malformed COCO file {path.name}: image {image['file_name']} is {actual[0]}x{actual[1]} "
                f"but the file declares {declared[0]}x{declared[1]}"
            )
    for ann in data["annotations"]:
        image = images[ann["image_id"]]
        check_segmentation_bounds(
            ann, int(image["width"]), int(image["height"]), path, f"its image {image['file_name']}"
        )
    unknown = sorted({c["name"] for c in data["categories"]} - set(metadata.labels))
    if unknown:
        raise InvalidDataset(f"categories not among the model's labels: {', '.join(unknown[:10])}")
    return path, data


def rasterize_coco(root: Path, metadata: ModelMetadata) -> EvalDataset:
    from pycocotools import mask as mask_utils

    path, data = load_checked_coco(root, metadata)
    label_of = {c["id"]: metadata.labels.index(c["name"]) for c in data["categories"]}
    masks_dir = root / ".optic-masks"
    masks_dir.mkdir(exist_ok=True)
    by_image: dict[Any, list[dict[str, Any]]] = {}
    for ann in data["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    items = []
    for image in data["images"]:
        height, width = int(image["height"]), int(image["width"])
        canvas = np.zeros((height, width), dtype=np.uint8)
        for ann in by_image.get(image["id"], []):
            segmentation = ann["segmentation"]
            if isinstance(segmentation, list):
                rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
            elif isinstance(segmentation.get("counts"), list):
                rle = mask_utils.frPyObjects(segmentation, height, width)
            else:
                rle = segmentation
            region = mask_utils.decode(rle).astype(bool)
            canvas[region] = IGNORE_INDEX if ann.get("iscrowd") else label_of[ann["category_id"]]
        image_path = _resolve_image(path.parent, root, image["file_name"])
        mask_path = masks_dir / f"{image['id']}.png"
        Image.fromarray(canvas).save(mask_path)
        items.append(EvalItem(path=image_path, target=mask_path))
    return EvalDataset(items=items, info={"annotations": path.name})
