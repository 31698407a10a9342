"""Instance segmentation ground truth: COCO polygons or RLE (any COCO file the detection readers find), or
YOLO-seg polygons (`class x1 y1 x2 y2 ...`, normalized, in any YOLO layout): each box with its outline.

The detection readers do the parsing and validation; this module keeps each training target's segmentation
next to its box, and gives evaluation COCO ground truth with segmentations.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dataformats.annotations import DetectionSample, DetectionSplit, DetectionSplits, empty_targets
from dataformats.coco import has_coco_json, is_target, load_coco_dataset
from dataformats.coco import read_coco as read_coco_boxes
from dataformats.detection import find_splits
from dataformats.errors import DatasetError, shown
from dataformats.evaluation import EvalDataset
from dataformats.images import list_images
from dataformats.yolo import (
    NAME_FILES,
    PIXEL_DECIMALS,
    YAML_FILES,
    YoloError,
    find_yolo_root,
    image_size,
    label_path,
    load_yolo_dataset,
    read_label_rows,
    row_box,
)


@dataclass(frozen=True)
class InstanceSample(DetectionSample):
    segmentations: tuple[Any, ...] = field(default=(), repr=False)  # COCO polygons/RLE, one per box


def with_segmentations(split: DetectionSplit, source: Path) -> DetectionSplit:
    """Each sample as an InstanceSample carrying its targets' segmentations, taken from the split's COCO."""
    by_image: dict[Any, list[dict[str, Any]]] = {}
    for ann in split.coco["annotations"]:
        if is_target(ann):
            by_image.setdefault(ann["image_id"], []).append(ann)
    samples: list[DetectionSample] = []
    for sample in split.samples:
        anns = by_image.get(sample.image_id, [])
        if len(anns) != len(sample.boxes):
            raise RuntimeError(f"{source}: image {sample.image_id} has {len(sample.boxes)} boxes but {len(anns)} masks")
        fields = {name: getattr(sample, name) for name in DetectionSample.__dataclass_fields__}
        samples.append(InstanceSample(**fields, segmentations=tuple(a["segmentation"] for a in anns)))
    return DetectionSplit(samples, split.coco, split.label_to_category)


def read_coco_instances(
    json_path: Path, labels: list[str] | None = None, root: Path | None = None, **options: Any
) -> tuple[list[str], DetectionSplit]:
    """`read_coco`, every annotation with a segmentation (polygons inside their image, RLE of its size)."""
    labels, split = read_coco_boxes(json_path, labels, root, need_segmentation=True, **options)
    return labels, with_segmentations(split, json_path)


def _polygon_area(polygon: list[float], width: int, height: int) -> float:
    from pycocotools import mask as mask_utils

    return float(mask_utils.area(mask_utils.frPyObjects([polygon], height, width))[0])


def read_yolo_instances(images_dir: Path, labels: list[str], root: Path | None = None) -> DetectionSplit:
    """A YOLO-seg split: every object line a polygon, an instance with its outline in image pixels (the box:
    the outline's bounding box; the area: its mask's, as pycocotools counts it)."""
    if not images_dir.is_dir():
        raise FileNotFoundError(f"YOLO image folder {images_dir} does not exist")
    paths = list_images(images_dir)
    if not paths:
        raise DatasetError(f"the YOLO image folder {shown(images_dir, root)}/ holds no images")
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    samples: list[DetectionSample] = []
    for image_id, path in enumerate(paths, start=1):
        width, height = image_size(path, root)
        labels_file = label_path(path)
        if root is not None and not labels_file.resolve().is_relative_to(root.resolve()):
            raise YoloError(path, "its labels/ folder would be outside the data set")
        images.append({"id": image_id, "file_name": shown(path, root or path.parent), "width": width, "height": height})
        boxes, classes, outlines = [], [], []
        for number, (cls, coords) in enumerate(read_label_rows(labels_file, len(labels)), start=1):
            if len(coords) == 4:
                raise YoloError(labels_file, "a box, not a polygon: instance segmentation needs outlines", number)
            box = row_box(coords, width, height)
            if not (box[2] > box[0] and box[3] > box[1]):
                continue
            x1, y1, x2, y2 = box.tolist()
            polygon = [round(v * (width if i % 2 == 0 else height), PIXEL_DECIMALS) for i, v in enumerate(coords)]
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": cls + 1, "segmentation": [polygon],
                "bbox": [x1, y1, round(x2 - x1, PIXEL_DECIMALS), round(y2 - y1, PIXEL_DECIMALS)],
                "area": _polygon_area(polygon, width, height), "iscrowd": 0,
            })  # fmt: skip
            boxes.append(box)
            classes.append(cls)
            outlines.append([polygon])
        box_array, class_array = empty_targets()
        if boxes:
            box_array, class_array = np.asarray(boxes, np.float32), np.asarray(classes, np.int64)
        samples.append(InstanceSample(path, image_id, width, height, box_array, class_array, tuple(outlines)))
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(labels)]
    coco = {"images": images, "annotations": annotations, "categories": categories}
    return DetectionSplit(samples, coco, {i: i + 1 for i in range(len(labels))})


def find_instance_splits(data: Path, val_fraction: float = 0.15, seed: int = 0) -> DetectionSplits:
    """A COCO data set (one file, or a file per split: see dataformats.coco), or a YOLO-seg one (a data.yaml
    or classes.txt); without a val split, a seeded `val_fraction` of train becomes val."""
    return find_splits(
        data, read_coco_instances, read_yolo_instances, val_fraction, seed,
        kind="instance segmentation",
        expected="a COCO file with a train split (train/annotations.json, annotations/instances_train.json, ...) "
        "or a YOLO-seg data.yaml",
    )  # fmt: skip


def load_instance_dataset(root: Path, labels: list[str]) -> EvalDataset:
    """Evaluation's ground truth: the COCO file's test split (else val, ...), polygons in bounds and RLE
    sizes right, or a YOLO-seg data set's; matched to `labels` by name."""
    if has_coco_json(root):
        return load_coco_dataset(root, labels, need_segmentation=True)
    base = find_yolo_root(root)
    if base is None:
        raise DatasetError(
            "the data set holds neither a COCO annotation file (*.json) nor a YOLO-seg data set "
            f"(images/ and labels/ with class names in {' or '.join(YAML_FILES + NAME_FILES)})"
        )
    return load_yolo_dataset(root, base, labels, read_yolo_instances)
