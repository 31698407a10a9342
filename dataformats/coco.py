"""COCO JSON as COCO itself, Roboflow, CVAT and Label Studio write it: the one reader of training and evaluation.

Where the files are: any `*.json` under the data set's root, its split told by its name or its folder
(Roboflow `test/_annotations.coco.json`, `valid/...`; CVAT and COCO `annotations/instances_val2017.json`;
CVAT's `instances_default.json` and Label Studio's `result.json` name none). Each image is looked up beside
the JSON, in an `images/` folder beside it or above it (CVAT subsets: `images/<subset>/`), at the data set's
root, and at last by its file name alone where that is unique (exports that rename folders).

What is normalized, so every tool's file scores as COCO's would:
- Roboflow's project category (named after the project, the supercategory of every real class, used by no
  annotation) is dropped, and so is any category no annotation uses that the labels do not have;
- annotation ids are renumbered 1.. where one is 0 or repeats (Label Studio and Roboflow count from 0):
  pycocotools takes id 0 for "unmatched" and would score the detection matched to it as a false positive;
- `iscrowd` and `area` get pycocotools' defaults; CVAT's `attributes` and empty `segmentation` on boxes
  are left alone.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from dataformats.annotations import DetectionSample, DetectionSplit, empty_targets, xywh_to_xyxy
from dataformats.errors import DatasetError, shown
from dataformats.evaluation import EvalDataset, EvalItem
from dataformats.images import is_hidden, is_image, upright_size
from dataformats.splits import EVAL_ORDER, split_of_path

log = logging.getLogger(__name__)

MODEL_LABELS = "the model's labels"
TRAIN_LABELS = "the train split's labels"
BOUNDS_TOLERANCE_PX = 1.0
# Where one split folder holds several JSON files, the one the tools name their annotations.
_PREFERRED = ("annotations.json", "_annotations.coco.json", "result.json")


def _fail(path: Path, problem: str) -> DatasetError:
    return DatasetError(f"malformed COCO file {path.name}: {problem}")


def coco_candidates(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.json") if not is_hidden(p, root) and p.is_file())


def has_coco_json(root: Path) -> bool:
    return bool(coco_candidates(root))


def find_coco_files(root: Path) -> dict[str | None, Path]:
    """The annotation file of each split under `root` (None: a file that names no split)."""
    by_split: dict[str | None, list[Path]] = {}
    for path in coco_candidates(root):
        by_split.setdefault(split_of_path(path, root), []).append(path)
    found = {}
    for split, paths in by_split.items():
        if len(paths) > 1:
            preferred = [p for p in paths if p.name in _PREFERRED or p.name.startswith("instances_")]
            if len(preferred) != 1:
                names = ", ".join(shown(p, root) for p in paths[:5])
                where = f"the {split} split" if split else "the data set"
                raise DatasetError(f"{where} has several JSON files ({names}): keep the one COCO annotation file")
            paths = preferred
        found[split] = paths[0]
    return found


def coco_split_files(root: Path) -> dict[str, Path]:
    """Training's COCO file of each split under `root`; a file naming no split (CVAT's instances_default.json,
    Label Studio's result.json) is train where no file says train."""
    files = find_coco_files(root)
    unsplit = files.pop(None, None)
    if "train" not in files and unsplit is not None:
        files["train"] = unsplit
    return {split: path for split, path in files.items() if split is not None}


def find_eval_coco(root: Path) -> Path:
    """The file evaluation reads: the test split's, else val's, else one naming no split, else train's."""
    found = find_coco_files(root)
    for split in (*EVAL_ORDER[:2], None, *EVAL_ORDER[2:]):
        if split in found:
            return found[split]
    raise DatasetError("the data set holds no COCO annotation file (*.json)")


def validate_coco(data: Any, path: Path, *, need_segmentation: bool = False) -> None:
    """Refuse files pycocotools would crash on or silently misread, naming the first problem."""
    if not isinstance(data, dict):
        raise _fail(path, "the top level must be an object")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise _fail(path, f"'{key}' must be a list")
    image_ids = set()
    for i, image in enumerate(data["images"]):
        if not isinstance(image, dict) or not {"id", "file_name", "width", "height"} <= image.keys():
            raise _fail(path, f"images[{i}] needs id, file_name, width and height")
        if image["id"] in image_ids:
            raise _fail(path, f"images[{i}] repeats the image id {image['id']}")
        image_ids.add(image["id"])
    category_ids = set()
    for i, category in enumerate(data["categories"]):
        if not isinstance(category, dict) or not {"id", "name"} <= category.keys():
            raise _fail(path, f"categories[{i}] needs id and name")
        if category["id"] in category_ids:
            raise _fail(path, f"categories[{i}] repeats the category id {category['id']}")
        category_ids.add(category["id"])
    for i, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict):
            raise _fail(path, f"annotations[{i}] is not an object")
        for key in ("id", "image_id", "category_id", "bbox"):
            if key not in ann:
                raise _fail(path, f"annotations[{i}] has no '{key}'")
        if ann["image_id"] not in image_ids:
            raise _fail(path, f"annotations[{i}] refers to unknown image_id {ann['image_id']}")
        if ann["category_id"] not in category_ids:
            raise _fail(path, f"annotations[{i}] refers to unknown category_id {ann['category_id']}")
        bbox = ann["bbox"]
        if (
            not isinstance(bbox, list)
            or len(bbox) != 4
            or not all(isinstance(v, (int, float)) for v in bbox)
            or bbox[2] < 0
            or bbox[3] < 0
        ):
            raise _fail(path, f"annotations[{i}].bbox must be [x, y, width, height] with width, height >= 0")
        if need_segmentation and not ann.get("segmentation"):
            raise _fail(path, f"annotations[{i}] has no 'segmentation' (a box alone has no mask)")


def check_segmentation_bounds(
    ann: dict[str, Any], width: int, height: int, path: Path, image_name: str = "its image"
) -> None:
    """Polygon points outside the image are an annotation error, not something to clip silently."""
    segmentation = ann.get("segmentation")
    if isinstance(segmentation, dict):  # RLE: its size must be the image's
        size = segmentation.get("size")
        if size is None or list(size) != [height, width]:
            raise _fail(
                path,
                f"annotation {ann.get('id')} RLE size {size} differs from {image_name}'s [{height}, {width}] "
                "([height, width])",
            )
        return
    if not isinstance(segmentation, list) or not all(isinstance(p, list) for p in segmentation):
        raise _fail(path, f"annotation {ann.get('id')} has no polygon list or RLE")
    for polygon in segmentation:
        if len(polygon) < 6 or len(polygon) % 2:
            raise _fail(path, f"annotation {ann.get('id')} has a polygon with fewer than 3 points")
        xs, ys = np.asarray(polygon[0::2], dtype=float), np.asarray(polygon[1::2], dtype=float)
        tol = BOUNDS_TOLERANCE_PX
        if xs.min() < -tol or ys.min() < -tol or xs.max() > width + tol or ys.max() > height + tol:
            raise _fail(path, f"annotation {ann.get('id')} has polygon points outside {image_name}, {width}x{height}")


def load_coco_json(path: Path, *, need_segmentation: bool = False) -> dict[str, Any]:
    """The file, validated and normalized (see the module docstring); polygons and RLE sizes checked against
    each image's declared size where `need_segmentation`."""
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _fail(path, f"not valid JSON ({exc})") from None
    validate_coco(data, path, need_segmentation=need_segmentation)
    annotations = data["annotations"]
    used = {ann["category_id"] for ann in annotations}
    parents = {c.get("supercategory") for c in data["categories"]}
    data["categories"] = [c for c in data["categories"] if c["id"] in used or c["name"] not in parents]
    ids = [ann["id"] for ann in annotations]
    if any(isinstance(i, bool) or not isinstance(i, int) or i < 1 for i in ids) or len(set(ids)) != len(ids):
        for number, ann in enumerate(annotations, start=1):
            ann["id"] = number
    for ann in annotations:  # the defaults pycocotools assumes, written out for COCOeval
        ann.setdefault("iscrowd", 0)
        ann.setdefault("area", float(ann["bbox"][2] * ann["bbox"][3]))
    if need_segmentation:
        images = {image["id"]: image for image in data["images"]}
        for ann in annotations:
            image = images[ann["image_id"]]
            check_segmentation_bounds(
                ann, int(image["width"]), int(image["height"]), path, f"its image {image['file_name']}"
            )
    return data


def coco_labels(data: dict[str, Any]) -> list[str]:
    """The category names in category-id order."""
    names = [str(c["name"]) for c in sorted(data["categories"], key=lambda c: c["id"])]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise DatasetError(f"COCO categories repeat the names {duplicates}; labels must be unique")
    return names


def category_labels(data: dict[str, Any], labels: list[str], path: Path, known_as: str) -> dict[Any, int]:
    """COCO category id -> index in `labels`, by name. A category the labels lack is dropped where no
    annotation uses it, refused where one does."""
    index = {label: i for i, label in enumerate(labels)}
    used = {ann["category_id"] for ann in data["annotations"]}
    unknown = sorted(str(c["name"]) for c in data["categories"] if c["name"] not in index and c["id"] in used)
    if unknown:
        raise DatasetError(
            f"{path.name}: categories not among {known_as}: {', '.join(unknown[:10])}", detail={"labels": labels}
        )
    data["categories"] = [c for c in data["categories"] if c["name"] in index]
    return {c["id"]: index[c["name"]] for c in data["categories"]}


class ImageFinder:
    """Each `file_name` of one COCO file to its image (see the module docstring for where it looks).
    With `root`, only images inside it are found, and their paths come back resolved."""

    def __init__(self, json_path: Path, root: Path | None = None) -> None:
        self.json_path = json_path
        self.root = root.resolve() if root is not None else None
        here, above = json_path.parent, json_path.parent.parent
        bases = [here, here / "images", above, above / "images"]
        if "_" in json_path.stem:  # CVAT/Datumaro: annotations/instances_<subset>.json, images/<subset>/
            bases.append(above / "images" / json_path.stem.split("_", 1)[1])
        if root is not None:
            bases += [root, root / "images"]
        self.bases = list(dict.fromkeys(bases))
        self._by_name: dict[str, list[Path]] | None = None

    def _inside(self, path: Path) -> bool:
        return self.root is None or path.resolve().is_relative_to(self.root)

    def _found(self, path: Path) -> Path:
        return path.resolve() if self.root is not None else path

    def find(self, file_name: str) -> Path:
        name = PurePosixPath(str(file_name).replace("\\", "/"))
        if not name.is_absolute() and ".." not in name.parts:
            for base in self.bases:
                candidate = base / name
                if candidate.is_file() and self._inside(candidate):
                    return self._found(candidate)
        if self._by_name is None:
            search = self.root or self.json_path.parent
            self._by_name = {}
            for path in search.rglob("*"):
                if is_image(path) and not is_hidden(path, search):
                    self._by_name.setdefault(path.name, []).append(path)
        matches = self._by_name.get(name.name, [])
        if len(matches) == 1 and self._inside(matches[0]):
            return self._found(matches[0])
        raise DatasetError(f"image {file_name!r} listed in {self.json_path.name} is not in the data set")


def check_declared_sizes(data: dict[str, Any], paths: list[Path], json_path: Path) -> None:
    """Each image's declared size is its file's. Masks are scored in the declared size, so a wrong one would
    make every IoU of that image silently fail (pycocotools scores masks of different sizes as no overlap)."""
    for image, path in zip(data["images"], paths, strict=True):
        declared = (int(image["width"]), int(image["height"]))
        try:
            actual = upright_size(path)
        except (OSError, SyntaxError, ValueError):
            continue  # an unreadable image is refused, by name, when it is decoded
        if actual != declared:
            raise _fail(
                json_path,
                f"image {image['file_name']} is {actual[0]}x{actual[1]} but the file declares "
                f"{declared[0]}x{declared[1]}",
            )


def read_coco(
    json_path: Path,
    labels: list[str] | None = None,
    root: Path | None = None,
    *,
    need_segmentation: bool = False,
    check_sizes: bool = False,
    known_as: str = TRAIN_LABELS,
) -> tuple[list[str], DetectionSplit]:
    """(labels, split). Labels default to the file's category names in id order; `labels` given (another
    split's, or a model's: `known_as` says which) fixes the order, and the used categories must be among them.

    Crowd annotations (`iscrowd: 1`) stay in the COCO ground truth and are left out of the training targets;
    so are boxes without area, which torchvision refuses. `root`: images only from inside it.
    """
    json_path = Path(json_path)
    data = load_coco_json(json_path, need_segmentation=need_segmentation)
    labels = coco_labels(data) if labels is None else labels
    category_label = category_labels(data, labels, json_path, known_as)
    samples, dropped = [], 0
    for image, path, anns in coco_images(data, json_path, root, check_sizes=check_sizes):
        kept = [a for a in anns if is_target(a)]
        dropped += sum(1 for a in anns if not a["iscrowd"]) - len(kept)
        boxes, classes = empty_targets()
        if kept:
            boxes = np.asarray([xywh_to_xyxy(a["bbox"]) for a in kept], dtype=np.float32)
            classes = np.asarray([category_label[a["category_id"]] for a in kept], dtype=np.int64)
        samples.append(DetectionSample(path, image["id"], int(image["width"]), int(image["height"]), boxes, classes))
    if not samples:
        raise DatasetError(f"{json_path.name} lists no images")
    if dropped:
        log.warning("%s: %d boxes without area are not training targets", json_path, dropped)
    label_to_category = {label: category for category, label in category_label.items()}
    return labels, DetectionSplit(samples, data, label_to_category)


def coco_images(
    data: dict[str, Any], json_path: Path, root: Path | None, *, check_sizes: bool = False
) -> list[tuple[dict[str, Any], Path, list[dict[str, Any]]]]:
    """Each image of a checked COCO file: its entry, its file (found as the tools lay them out; `root`:
    only inside it) and its annotations, in file order."""
    finder = ImageFinder(json_path, root)
    paths = [finder.find(image["file_name"]) for image in data["images"]]
    if check_sizes:
        check_declared_sizes(data, paths, json_path)
    by_image: dict[Any, list[dict[str, Any]]] = {}
    for ann in data["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    return [(image, path, by_image.get(image["id"], [])) for image, path in zip(data["images"], paths, strict=True)]


def is_target(ann: dict[str, Any]) -> bool:
    """What becomes a training target: not a crowd region, a box with area."""
    return not ann["iscrowd"] and ann["bbox"][2] > 0 and ann["bbox"][3] > 0


def eval_dataset(split: DetectionSplit, json_path: Path, root: Path) -> EvalDataset:
    """A COCO split as evaluation's ground truth: images keyed by their COCO id."""
    items = [EvalItem(path=s.path, target=s.image_id) for s in split.samples]
    info = {
        "format": "coco",
        "annotations": shown(json_path, root),
        "coco": split.coco,
        "label_to_category": split.label_to_category,
    }
    return EvalDataset(items=items, info=info)


def load_coco_dataset(root: Path, labels: list[str], *, need_segmentation: bool = False) -> EvalDataset:
    """Evaluation's COCO ground truth under `root` (its test split, else val, ...), matched to `labels` by name."""
    path = find_eval_coco(root)
    _, split = read_coco(
        path, labels, root, need_segmentation=need_segmentation, check_sizes=need_segmentation, known_as=MODEL_LABELS
    )
    return eval_dataset(split, path, root)
