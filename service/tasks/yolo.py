"""YOLO txt detection labels, without torch: the one parser behind `optic train` and detection evaluation.

Layout (Ultralytics/Darknet): every image under a folder called `images` has its labels at the same path
with `images` replaced by `labels` and the suffix `.txt`; one object per line, `class cx cy w h`, all
normalized to 0..1 (a polygon `class x1 y1 x2 y2 ...` counts as its bounding box). No label file means
no objects. Class names come from `data.yaml` (`names:` list or {index: name}) or `classes.txt`.

training/data/yolo.py turns the parsed boxes into training samples; `load_yolo_dataset` turns them into
COCO ground truth (pixel xywh, category id = class index + 1) for the same COCOeval as a COCO JSON file.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image

from service.errors import InvalidDataset
from service.metadata import ModelMetadata
from service.tasks.base import EvalDataset, EvalItem
from service.tasks.coco import category_mapping

NAME_FILES = ("classes.txt", "obj.names", "names.txt")
YAML_FILES = ("data.yaml", "dataset.yaml")
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
EVAL_SPLITS = ("test", "val", "train")  # the split evaluation reads, in order of preference (as for COCO)
PIXEL_DECIMALS = 2
_EXIF_ORIENTATION = 0x0112
_TRANSPOSED = {5, 6, 7, 8}  # EXIF orientations that swap width and height


class YoloError(ValueError):
    """A malformed YOLO file; `path` and, for a label line, `line` say where."""

    def __init__(self, path: Path, problem: str, line: int | None = None) -> None:
        super().__init__(f"{path}{f':{line}' if line is not None else ''}: {problem}")
        self.path, self.problem, self.line = path, problem, line


def _text(path: Path) -> str:
    try:
        return path.read_text()
    except UnicodeDecodeError:
        raise YoloError(path, "not UTF-8 text") from None


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(_text(path))
    except yaml.YAMLError as exc:
        raise YoloError(path, f"not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise YoloError(path, "must hold a mapping with at least `names:`")
    return data


def names_from_yaml(data: dict[str, Any], path: Path) -> list[str]:
    names = data.get("names")
    if isinstance(names, dict):
        try:
            numbered = {int(k): v for k, v in names.items()}
        except (TypeError, ValueError):
            raise YoloError(path, f"names must be numbered 0..{len(names) - 1}, got {list(names)[:10]}") from None
        keys = sorted(numbered)
        if len(numbered) != len(names) or keys != list(range(len(keys))):
            raise YoloError(path, f"names must be numbered 0..{len(names) - 1}, got {keys[:10]}")
        values = [numbered[k] for k in keys]
    elif isinstance(names, list) and names:
        values = names
    else:
        raise YoloError(path, "has no `names:` list or mapping")
    for i, value in enumerate(values):
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise YoloError(path, f"names[{i}] must be a class name, got {type(value).__name__}")
    return [str(v) for v in values]


def read_names(root: Path) -> list[str]:
    """Class names from `root`'s data.yaml or classes.txt (one name a line)."""
    for name in YAML_FILES:
        if (root / name).is_file():
            return names_from_yaml(read_yaml(root / name), root / name)
    for name in NAME_FILES:
        if (root / name).is_file():
            names = [line.strip() for line in _text(root / name).splitlines() if line.strip()]
            if names:
                return names
    raise FileNotFoundError(f"{root} has no class names: expected one of {', '.join(YAML_FILES + NAME_FILES)}")


def list_images(images_dir: Path) -> list[Path]:
    """The images under `images_dir`, recursively, sorted; hidden files (`._x.jpg`) left out."""
    return sorted(
        p
        for p in images_dir.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file()
    )


def label_path(image: Path) -> Path:
    """`.../images/.../x.jpg` -> `.../labels/.../x.txt` (the last `images` component is replaced)."""
    parts = list(image.parts)
    if "images" not in parts:
        raise YoloError(image, "is not inside a folder called images/")
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


def _number(text: str, path: Path, line: int, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise YoloError(path, f"{what} {text!r} is not a number", line) from None
    if not math.isfinite(value):
        raise YoloError(path, f"{what} {text!r} is not a finite number", line)
    return value


COORD_SLACK = 1e-3  # 1.0000003 is an exporter's rounding, not a broken label: accepted, then clipped


def parse_label_file(path: Path, width: int, height: int, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(boxes float64 [M, 4] x1, y1, x2, y2 in image pixels, classes int64 [M]) of one label file.

    Refused, naming the file and line: a class id that is not an integer among the names, a coordinate
    that is not a number in [0, 1] (give or take COORD_SLACK, the rounding noise exporters leave), a column
    count that is neither `class cx cy w h` nor a polygon.
    Boxes are clipped to the image; those left without area are dropped (they cannot be matched). Pixel
    coordinates are rounded to PIXEL_DECIMALS, the precision /detect reports boxes at: the few-decimal
    normalized values of a box with whole-pixel corners then give back those very corners, so its IoUs and
    its area (which decides COCO's small/medium/large at exactly 32² and 96²) are the COCO file's.
    """
    boxes: list[list[float]] = []
    classes: list[int] = []
    if path.is_file():
        for number, line in enumerate(_text(path).splitlines(), start=1):
            values = line.split()
            if not values:
                continue
            coords = values[1:]
            if len(coords) != 4 and (len(coords) < 6 or len(coords) % 2):
                raise YoloError(
                    path, f"expected `class cx cy w h` (5 columns) or a polygon, got {len(values)} columns", number
                )
            cls_value = _number(values[0], path, number, "class id")
            if not cls_value.is_integer():
                raise YoloError(path, f"class id {values[0]!r} is not an integer", number)
            cls = int(cls_value)
            if not 0 <= cls < num_classes:
                raise YoloError(path, f"class {cls} is not among the {num_classes} names", number)
            floats = [_number(v, path, number, "coordinate") for v in coords]
            outside = [t for t, v in zip(coords, floats, strict=True) if not -COORD_SLACK <= v <= 1.0 + COORD_SLACK]
            if outside:
                raise YoloError(path, f"coordinate {outside[0]} is outside [0, 1] (normalized)", number)
            if len(floats) == 4:
                cx, cy, w, h = floats
                x1, y1, x2, y2 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
            else:  # a segment polygon: its bounding box
                xs, ys = floats[0::2], floats[1::2]
                x1, y1, x2, y2 = min(xs), min(ys), max(xs), max(ys)
            box = np.clip([x1 * width, y1 * height, x2 * width, y2 * height], 0, [width, height, width, height])
            box = box.round(PIXEL_DECIMALS)
            if box[2] > box[0] and box[3] > box[1]:
                boxes.append(box.tolist())
                classes.append(cls)
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 4), np.asarray(classes, dtype=np.int64)


# -- evaluation -----------------------------------------------------------------------------------------------


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") or part == "__MACOSX" for part in path.relative_to(root).parts)


def find_yolo_root(root: Path) -> Path | None:
    """The shallowest folder under `root` holding a data.yaml or a class-names file, or None."""
    hits = [p for p in root.rglob("*") if p.name in YAML_FILES + NAME_FILES and not _hidden(p, root) and p.is_file()]
    if not hits:
        return None
    return min(hits, key=lambda p: (len(p.parts), p.as_posix())).parent


def _yaml_images(data: dict[str, Any], yaml_path: Path, root: Path) -> Path:
    base = data.get("path") or "."
    if not isinstance(base, str):
        raise YoloError(yaml_path, "`path:` must be a folder name")
    bases = [yaml_path.parent / base, yaml_path.parent]  # `path:` as written, or the YAML's own folder
    listed = []
    for split in EVAL_SPLITS:
        entry = data.get(split)
        if not entry:
            continue
        if not isinstance(entry, str) or entry.endswith(".txt"):
            raise YoloError(yaml_path, f"`{split}:` must be one image folder (lists and .txt files are not supported)")
        listed.append(entry)
        for folder in ((b / entry).resolve() for b in bases):
            if folder.is_relative_to(root) and folder.is_dir():
                return folder
    if not listed:
        raise YoloError(yaml_path, f"has none of {', '.join(f'`{s}:`' for s in EVAL_SPLITS)}")
    raise YoloError(yaml_path, f"its image folders ({', '.join(listed)}) are not in the data set")


def find_eval_images(base: Path, root: Path) -> tuple[list[str], Path, Path]:
    """(labels, image folder, names file) of the split to evaluate: test, else val, else train."""
    for name in YAML_FILES:
        if (base / name).is_file():
            data = read_yaml(base / name)
            return names_from_yaml(data, base / name), _yaml_images(data, base / name, root), base / name
    labels = read_names(base)
    names_file = next(base / n for n in NAME_FILES if (base / n).is_file())
    for split in EVAL_SPLITS:
        for folder in (base / split / "images", base / "images" / split):
            if folder.is_dir():
                return labels, folder, names_file
    if (base / "images").is_dir():
        return labels, base / "images", names_file
    raise YoloError(names_file, "no images/ folder beside it (nor test/images, val/images, images/test, ...)")


def _shown(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.name


def _image_size(path: Path, root: Path) -> tuple[int, int]:
    try:
        return upright_size(path)
    except Image.DecompressionBombError:
        raise InvalidDataset(f"image {_shown(path, root)} is too large to evaluate") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise InvalidDataset(f"image {_shown(path, root)} cannot be read ({exc})") from None


def load_yolo_dataset(root: Path, base: Path, metadata: ModelMetadata) -> EvalDataset:
    """A YOLO data set under `root` (names at `base`) as COCO ground truth in image pixels, for COCOeval."""
    root = root.resolve()
    try:
        labels, images_dir, names_file = find_eval_images(base.resolve(), root)
        categories = [{"id": i + 1, "name": name} for i, name in enumerate(labels)]
        label_to_category = category_mapping(categories, metadata)
        paths = list_images(images_dir)
        if not paths:
            raise InvalidDataset(f"the YOLO image folder {_shown(images_dir, root)}/ holds no images")
        images: list[dict[str, Any]] = []
        annotations: list[dict[str, Any]] = []
        items = []
        for image_id, path in enumerate(paths, start=1):
            width, height = _image_size(path, root)
            labels_file = label_path(path)
            if not labels_file.is_relative_to(root):
                raise YoloError(path, "its labels/ folder would be outside the data set")
            boxes, classes = parse_label_file(labels_file, width, height, len(labels))
            images.append({"id": image_id, "file_name": _shown(path, root), "width": width, "height": height})
            for (x1, y1, x2, y2), cls in zip(boxes.tolist(), classes.tolist(), strict=True):
                w, h = round(x2 - x1, PIXEL_DECIMALS), round(y2 - y1, PIXEL_DECIMALS)
                annotations.append({
                    "id": len(annotations) + 1, "image_id": image_id, "category_id": cls + 1,
                    "bbox": [x1, y1, w, h], "area": w * h, "iscrowd": 0,
                })  # fmt: skip
            items.append(EvalItem(path=path, target=image_id))
    except YoloError as exc:
        where = _shown(exc.path, root) + (f":{exc.line}" if exc.line is not None else "")
        raise InvalidDataset(f"malformed YOLO file {where}: {exc.problem}", detail={"file": where}) from None
    except FileNotFoundError as exc:
        raise InvalidDataset(str(exc).replace(str(root), "the data set")) from None
    info = {
        "format": "yolo",
        "annotations": _shown(names_file, root),
        "images": _shown(images_dir, root),
        "coco": {"images": images, "annotations": annotations, "categories": categories},
        "label_to_category": label_to_category,
    }
    return EvalDataset(items=items, info=info)
