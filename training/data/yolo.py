"""YOLO txt detection labels -> `DetectionSplit`.

Layout (Ultralytics/Darknet): every image under a folder called `images` has its labels at the same path
with `images` replaced by `labels` and the suffix `.txt`; one object per line, `class cx cy w h`, all
normalized to 0..1 (a polygon `class x1 y1 x2 y2 ...` counts as its bounding box). No label file means
no objects. Class names come from `data.yaml` (`names:` list or {index: name}) or `classes.txt`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image

from training.data.annotations import DetectionSample, DetectionSplit, coco_from_samples, empty_targets
from training.data.imagefolder import IMAGE_SUFFIXES

NAME_FILES = ("classes.txt", "obj.names", "names.txt")
YAML_FILES = ("data.yaml", "dataset.yaml")
_EXIF_ORIENTATION = 0x0112
_TRANSPOSED = {5, 6, 7, 8}  # EXIF orientations that swap width and height


def read_yaml(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a mapping with at least `names:`")
    return data


def names_from_yaml(data: dict[str, Any], path: Path) -> list[str]:
    names = data.get("names")
    if isinstance(names, dict):
        keys = sorted(int(k) for k in names)
        if keys != list(range(len(keys))):
            raise ValueError(f"{path}: names must be numbered 0..{len(keys) - 1}, got {keys}")
        return [str(names[k] if k in names else names[str(k)]) for k in keys]
    if isinstance(names, list) and names:
        return [str(n) for n in names]
    raise ValueError(f"{path} has no `names:` list or mapping")


def read_names(root: Path) -> list[str]:
    """Class names from `root`'s data.yaml or classes.txt (one name a line)."""
    for name in YAML_FILES:
        if (root / name).is_file():
            return names_from_yaml(read_yaml(root / name), root / name)
    for name in NAME_FILES:
        if (root / name).is_file():
            names = [line.strip() for line in (root / name).read_text().splitlines() if line.strip()]
            if names:
                return names
    raise FileNotFoundError(f"{root} has no class names: expected one of {', '.join(YAML_FILES + NAME_FILES)}")


def label_path(image: Path) -> Path:
    """`.../images/.../x.jpg` -> `.../labels/.../x.txt` (the last `images` component is replaced)."""
    parts = list(image.parts)
    if "images" not in parts:
        raise ValueError(f"{image} is not inside a folder called images/")
    at = len(parts) - 1 - parts[::-1].index("images")
    parts[at] = "labels"
    return Path(*parts).with_suffix(".txt")


def upright_size(path: Path) -> tuple[int, int]:
    """(width, height) as the image is displayed: the header size, swapped by a rotating EXIF tag."""
    with Image.open(path) as image:
        width, height = image.size
        if image.getexif().get(_EXIF_ORIENTATION, 1) in _TRANSPOSED:
            width, height = height, width
    return width, height


def parse_label_file(path: Path, width: int, height: int, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        return empty_targets()
    boxes, classes = [], []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        values = line.split()
        if not values:
            continue
        try:
            cls, coords = int(values[0]), [float(v) for v in values[1:]]
        except ValueError:
            raise ValueError(f"{path}:{number}: expected `class cx cy w h`, got {line!r}") from None
        if not 0 <= cls < num_classes:
            raise ValueError(f"{path}:{number}: class {cls} is not among the {num_classes} names")
        if len(coords) == 4:
            cx, cy, w, h = coords
            x1, y1, x2, y2 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
        elif len(coords) >= 6 and len(coords) % 2 == 0:  # a segment polygon: its bounding box
            xs, ys = coords[0::2], coords[1::2]
            x1, y1, x2, y2 = min(xs), min(ys), max(xs), max(ys)
        else:
            raise ValueError(f"{path}:{number}: expected `class cx cy w h`, got {line!r}")
        box = np.clip([x1 * width, y1 * height, x2 * width, y2 * height], 0, [width, height, width, height])
        if box[2] > box[0] and box[3] > box[1]:
            boxes.append(box)
            classes.append(cls)
    if not boxes:
        return empty_targets()
    return np.asarray(boxes, dtype=np.float32), np.asarray(classes, dtype=np.int64)


def read_yolo(images_dir: Path, labels: list[str]) -> DetectionSplit:
    """Every image under `images_dir` (recursively, sorted) with its label file; image ids are 1, 2, ..."""
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise FileNotFoundError(f"YOLO image folder {images_dir} does not exist")
    paths = sorted(
        p for p in images_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )
    if not paths:
        raise ValueError(f"{images_dir} contains no images")
    samples = []
    for image_id, path in enumerate(paths, start=1):
        width, height = upright_size(path)
        boxes, classes = parse_label_file(label_path(path), width, height, len(labels))
        samples.append(DetectionSample(path, image_id, width, height, boxes, classes))
    return DetectionSplit(samples, coco_from_samples(samples, labels), {i: i + 1 for i in range(len(labels))})
