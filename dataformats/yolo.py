"""YOLO txt labels, as Ultralytics and Roboflow's YOLO export lay them out: the one parser of training and evaluation.

Layouts, each found at the shallowest folder holding a `data.yaml` (or `dataset.yaml`) or a class-names file:
  Ultralytics  `data.yaml` with `path:` (absolute, or relative: to the YAML's folder, and where that does not
               hold the data, to the YAML's folder itself), `train: images/train`, `val: images/val`,
               `test: ...`, `names:` a list or {index: name};
  Roboflow     `data.yaml` with `train: ../train/images`, `val: ../valid/images`, `test: ../test/images`
               (written relative to a folder above; read, as Ultralytics reads them, from the YAML's own
               folder when `../` leads nowhere), `nc:`, a `names:` list, a `roboflow:` block; a split the
               export left out (a test-only export has only `test/`) is skipped;
  folders      `classes.txt` (or obj.names, names.txt) beside `{train,val,test}/images` (`valid/` too),
               `images/{train,val,test}`, or a lone `images/`.
Every image under a folder called `images` has its labels at the same path with `images` replaced by
`labels` and the suffix `.txt`; one object per line, `class cx cy w h` normalized to 0..1, or a YOLO-seg
polygon `class x1 y1 x2 y2 ...` (a box: its bounding box; an instance: its outline). No label file means no
objects.

`read_yolo` turns a split into training samples and COCO ground truth (pixel xywh, category id = class
index + 1); `load_yolo_dataset` is the same split as evaluation's ground truth.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image

from dataformats.annotations import DetectionSample, DetectionSplit, empty_targets
from dataformats.errors import DatasetError, shown
from dataformats.evaluation import EvalDataset, EvalItem
from dataformats.images import is_hidden, list_images, upright_size
from dataformats.splits import ALIASES, EVAL_ORDER, SPLITS

log = logging.getLogger(__name__)

NAME_FILES = ("classes.txt", "obj.names", "names.txt")
YAML_FILES = ("data.yaml", "dataset.yaml")
PIXEL_DECIMALS = 2
COORD_SLACK = 1e-3  # 1.0000003 is an exporter's rounding, not a broken label: accepted, then clipped
# (image folder, labels, data set root or None) -> split: boxes (read_yolo) or instances (YOLO-seg)
SplitReader = Callable[[Path, list[str], "Path | None"], DetectionSplit]


class YoloError(DatasetError):
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
    count = data.get("nc")
    if count is not None and count != len(values):
        raise YoloError(path, f"`nc: {count}` but `names:` lists {len(values)} classes")
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


def label_path(image: Path) -> Path:
    """`.../images/.../x.jpg` -> `.../labels/.../x.txt` (the last `images` component is replaced)."""
    parts = list(image.parts)
    if "images" not in parts:
        raise YoloError(image, "is not inside a folder called images/")
    at = len(parts) - 1 - parts[::-1].index("images")
    parts[at] = "labels"
    return Path(*parts).with_suffix(".txt")


def _number(text: str, path: Path, line: int, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise YoloError(path, f"{what} {text!r} is not a number", line) from None
    if not math.isfinite(value):
        raise YoloError(path, f"{what} {text!r} is not a finite number", line)
    return value


def read_label_rows(path: Path, num_classes: int) -> list[tuple[int, list[float]]]:
    """(class, normalized coordinates) per object line: 4 for a box (cx cy w h), an even 6+ for a polygon.

    Refused, naming the file and line: a class id that is not an integer among the names, a coordinate
    that is not a number in [0, 1] (give or take COORD_SLACK, the rounding noise exporters leave), a column
    count that is neither `class cx cy w h` nor a polygon.
    """
    rows: list[tuple[int, list[float]]] = []
    if not path.is_file():
        return rows
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
        rows.append((cls, floats))
    return rows


def row_box(coords: list[float], width: int, height: int) -> np.ndarray:
    """One row's box, x1 y1 x2 y2 in image pixels, clipped to the image and rounded to PIXEL_DECIMALS: the
    precision /detect reports boxes at, so the few-decimal normalized values of a box with whole-pixel
    corners give back those very corners (and COCO's small/medium/large areas at exactly 32² and 96²)."""
    if len(coords) == 4:
        cx, cy, w, h = coords
        x1, y1, x2, y2 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
    else:  # a segment polygon: its bounding box
        xs, ys = coords[0::2], coords[1::2]
        x1, y1, x2, y2 = min(xs), min(ys), max(xs), max(ys)
    box = np.clip([x1 * width, y1 * height, x2 * width, y2 * height], 0, [width, height, width, height])
    return np.asarray(box, dtype=np.float64).round(PIXEL_DECIMALS)


def parse_label_file(path: Path, width: int, height: int, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(boxes float64 [M, 4] x1, y1, x2, y2 in image pixels, classes int64 [M]) of one label file; boxes left
    without area by clipping are dropped (they cannot be matched)."""
    boxes: list[list[float]] = []
    classes: list[int] = []
    for cls, coords in read_label_rows(path, num_classes):
        box = row_box(coords, width, height)
        if box[2] > box[0] and box[3] > box[1]:
            boxes.append(box.tolist())
            classes.append(cls)
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 4), np.asarray(classes, dtype=np.int64)


def image_size(path: Path, root: Path | None = None) -> tuple[int, int]:
    try:
        return upright_size(path)
    except Image.DecompressionBombError:
        raise DatasetError(f"image {shown(path, root)} is too large to read") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise DatasetError(f"image {shown(path, root)} cannot be read ({exc})") from None


def read_yolo(images_dir: Path | list[Path], labels: list[str], root: Path | None = None) -> DetectionSplit:
    """Every image of a split (its folder, recursively, sorted; or the images themselves) with its label file,
    as training samples (float32 boxes) and COCO ground truth; image ids are 1, 2, ... `root`: the data set's
    folder, which the labels must not leave and COCO file names are relative to."""
    if isinstance(images_dir, Path):
        if not images_dir.is_dir():
            raise FileNotFoundError(f"YOLO image folder {images_dir} does not exist")
        paths = list_images(images_dir)
        if not paths:
            raise DatasetError(f"the YOLO image folder {shown(images_dir, root)}/ holds no images")
    else:
        paths = images_dir
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    samples = []
    for image_id, path in enumerate(paths, start=1):
        width, height = image_size(path, root)
        labels_file = label_path(path)
        if root is not None and not labels_file.resolve().is_relative_to(root.resolve()):
            raise YoloError(path, "its labels/ folder would be outside the data set")
        boxes, classes = parse_label_file(labels_file, width, height, len(labels))
        images.append({"id": image_id, "file_name": shown(path, root or path.parent), "width": width, "height": height})
        for (x1, y1, x2, y2), cls in zip(boxes.tolist(), classes.tolist(), strict=True):
            w, h = round(x2 - x1, PIXEL_DECIMALS), round(y2 - y1, PIXEL_DECIMALS)
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": cls + 1,
                "bbox": [x1, y1, w, h], "area": w * h, "iscrowd": 0,
            })  # fmt: skip
        targets = (boxes.astype(np.float32), classes) if len(boxes) else empty_targets()
        samples.append(DetectionSample(path, image_id, width, height, *targets))
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(labels)]
    coco = {"images": images, "annotations": annotations, "categories": categories}
    return DetectionSplit(samples, coco, {i: i + 1 for i in range(len(labels))})


# -- where the splits are ---------------------------------------------------------------------------------------


def find_yolo_root(root: Path) -> Path | None:
    """The shallowest folder under `root` holding a data.yaml or a class-names file, or None."""
    hits = [p for p in root.rglob("*") if p.name in YAML_FILES + NAME_FILES and not is_hidden(p, root) and p.is_file()]
    if not hits:
        return None
    return min(hits, key=lambda p: (len(p.parts), p.as_posix())).parent


@dataclass
class YoloLayout:
    labels: list[str]
    names_file: Path  # the data.yaml or classes.txt the labels come from
    splits: dict[str, Path]  # split -> its image folder, for the splits that are there
    listed: dict[str, str]  # split -> the folder data.yaml names for it, there or not


def _inside(path: Path, within: Path | None) -> bool:
    return within is None or path.resolve().is_relative_to(within.resolve())


def _yaml_layout(path: Path, within: Path | None) -> YoloLayout:
    data = read_yaml(path)
    labels = names_from_yaml(data, path)
    base = data.get("path")
    if base is not None and not isinstance(base, str):
        raise YoloError(path, "`path:` must be a folder name")
    bases: list[Path] = []
    if base:
        written = Path(base).expanduser()
        bases.append(written if written.is_absolute() else path.parent / written)
        if within is None and not written.is_absolute():
            bases.append(Path.cwd() / written)
    bases.append(path.parent)  # the data handed over with its YAML, wherever `path:` pointed on the maker's disk
    splits: dict[str, Path] = {}
    listed: dict[str, str] = {}
    for split in SPLITS:
        entry = next((data[k] for k in ALIASES[split] if data.get(k)), None)
        if entry is None:
            continue
        if not isinstance(entry, str) or entry.endswith(".txt"):
            raise YoloError(path, f"`{split}:` must be one image folder (lists and .txt files are not supported)")
        listed[split] = entry
        tries = [entry] + ([entry[3:]] if entry.startswith("../") else [])  # Roboflow's ../train/images
        for folder in (b / t for b in bases for t in tries):
            if folder.is_dir() and _inside(folder, within):
                splits[split] = folder.resolve() if within is not None else folder
                break
    if not listed:
        raise YoloError(path, f"has none of {', '.join(f'`{s}:`' for s in SPLITS)}")
    return YoloLayout(labels, path, splits, listed)


def _folder_layout(base: Path) -> YoloLayout:
    labels = read_names(base)
    names_file = next(base / n for n in NAME_FILES if (base / n).is_file())
    splits = {}
    for split in SPLITS:
        for name in ALIASES[split]:
            folder = next((f for f in (base / name / "images", base / "images" / name) if f.is_dir()), None)
            if folder is not None:
                splits[split] = folder
                break
    if not splits and (base / "images").is_dir():
        splits["train"] = base / "images"  # one unsplit folder: training holds val out of it
    if not splits:
        raise YoloError(names_file, "no images/ folder beside it (nor train/images, images/train, ...)")
    return YoloLayout(labels, names_file, splits, {})


def find_yolo_layout(base: Path, within: Path | None = None) -> YoloLayout:
    """The YOLO data set of a data.yaml (any name), or whose data.yaml or classes.txt is in the folder `base`;
    `within`: image folders only inside it."""
    if base.is_file():
        return _yaml_layout(base, within)
    for name in YAML_FILES:
        if (base / name).is_file():
            return _yaml_layout(base / name, within)
    return _folder_layout(base)


def read_yolo_splits(layout: YoloLayout, read: SplitReader | None = None) -> dict[str, DetectionSplit]:
    """Training's splits of a layout, each read by `read` (default `read_yolo`); a split data.yaml names but the
    data set lacks is skipped, said in the log."""
    for split, entry in layout.listed.items():
        if split not in layout.splits:
            log.warning("%s: the %s folder %s is not there; going without it", layout.names_file, split, entry)
    if "train" not in layout.splits:
        listed = layout.listed.get("train")
        where = f"its `train:` folder {listed} is not there" if listed else "has no train split"
        raise YoloError(layout.names_file, where)
    return {split: (read or read_yolo)(folder, layout.labels, None) for split, folder in layout.splits.items()}


def load_yolo_dataset(root: Path, base: Path, labels: list[str], read: SplitReader | None = None) -> EvalDataset:
    """Evaluation's ground truth: the test split of the YOLO data set at `base` (else val, else train) as COCO
    in image pixels, its classes matched to `labels` by name. `read`: the split reader (default `read_yolo`,
    boxes; instance segmentation passes its polygon reader)."""
    root = root.resolve()
    try:
        layout = find_yolo_layout(base.resolve(), within=root)
        split = next((s for s in EVAL_ORDER if s in layout.splits), None)
        if split is None:
            folders = ", ".join(layout.listed.values())
            raise YoloError(layout.names_file, f"its image folders ({folders}) are not in the data set")
        images_dir = layout.splits[split]
        found = (read or read_yolo)(images_dir, layout.labels, root)
    except YoloError as exc:
        where = shown(exc.path, root) + (f":{exc.line}" if exc.line is not None else "")
        raise DatasetError(f"malformed YOLO file {where}: {exc.problem}", detail={"file": where}) from None
    except FileNotFoundError as exc:
        raise DatasetError(str(exc).replace(str(root), "the data set")) from None
    coco = found.coco
    used = {ann["category_id"] for ann in coco["annotations"]}
    known = set(labels)
    unknown = [c["name"] for c in coco["categories"] if c["name"] not in known and c["id"] in used]
    if unknown:
        names = ", ".join(unknown[:10])
        raise DatasetError(f"categories not among the model's labels: {names}", detail={"labels": labels})
    coco["categories"] = [c for c in coco["categories"] if c["name"] in known]
    ids = {c["name"]: c["id"] for c in coco["categories"]}
    info = {
        "format": "yolo",
        "annotations": shown(layout.names_file, root),
        "images": shown(images_dir, root),
        "coco": coco,
        "label_to_category": {i: ids[label] for i, label in enumerate(labels) if label in ids},
    }
    return EvalDataset(items=[EvalItem(path=s.path, target=s.image_id) for s in found.samples], info=info)
