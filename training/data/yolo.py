"""YOLO txt detection labels -> `DetectionSplit`.

The layout and the parsing are the service's (`service.tasks.yolo`, torch-free), so a YOLO data set that
trains is one that `optic eval` and POST /evaluate read the same way: every image under a folder called
`images` has its labels at the same path with `images` replaced by `labels` and the suffix `.txt`; one
object per line, `class cx cy w h` normalized to 0..1 (a polygon counts as its bounding box); class names
from `data.yaml` or `classes.txt`. Malformed lines raise `YoloError` (a ValueError) naming file and line.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from service.tasks import yolo as shared
from service.tasks.yolo import (
    NAME_FILES,
    YAML_FILES,
    YoloError,
    label_path,
    list_images,
    names_from_yaml,
    read_names,
    read_yaml,
    upright_size,
)
from training.data.annotations import DetectionSample, DetectionSplit, coco_from_samples, empty_targets

__all__ = [
    "NAME_FILES",
    "YAML_FILES",
    "YoloError",
    "label_path",
    "names_from_yaml",
    "parse_label_file",
    "read_names",
    "read_yaml",
    "read_yolo",
    "upright_size",
]


def parse_label_file(path: Path, width: int, height: int, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Training targets of one label file: float32 [M, 4] x1, y1, x2, y2 in image pixels, int64 [M] labels."""
    boxes, classes = shared.parse_label_file(path, width, height, num_classes)
    if not len(boxes):
        return empty_targets()
    return boxes.astype(np.float32), classes


def read_yolo(images_dir: Path, labels: list[str]) -> DetectionSplit:
    """Every image under `images_dir` (recursively, sorted) with its label file; image ids are 1, 2, ..."""
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise FileNotFoundError(f"YOLO image folder {images_dir} does not exist")
    paths = list_images(images_dir)
    if not paths:
        raise ValueError(f"{images_dir} contains no images")
    samples = []
    for image_id, path in enumerate(paths, start=1):
        width, height = upright_size(path)
        boxes, classes = parse_label_file(label_path(path), width, height, len(labels))
        samples.append(DetectionSample(path, image_id, width, height, boxes, classes))
    return DetectionSplit(samples, coco_from_samples(samples, labels), {i: i + 1 for i in range(len(labels))})
