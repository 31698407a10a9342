"""Detection data sets: where the splits of a COCO or YOLO data set are, for training and evaluation alike.

COCO wins where a folder holds both (it can say `iscrowd`). See dataformats.coco and dataformats.yolo for the
layouts each tool writes.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from dataformats.annotations import DetectionSplit, DetectionSplits
from dataformats.coco import coco_split_files, has_coco_json, load_coco_dataset, read_coco
from dataformats.errors import DatasetError
from dataformats.evaluation import EvalDataset
from dataformats.splits import ALIASES, SPLITS
from dataformats.yolo import (
    NAME_FILES,
    YAML_FILES,
    SplitReader,
    find_yolo_layout,
    find_yolo_root,
    load_yolo_dataset,
    read_yolo_splits,
)


def finish_splits(
    labels: list[str], found: dict[str, DetectionSplit], layout: str, val_fraction: float, seed: int
) -> DetectionSplits:
    """The splits read, with val held out of train where there is none."""
    train, val = found["train"], found.get("val")
    if val is None:
        train, val = train.split(val_fraction, seed)
    return DetectionSplits(labels, train, val, found.get("test"), layout)


def has_yolo(root: Path) -> bool:
    if any((root / name).is_file() for name in YAML_FILES + NAME_FILES):
        return True
    return any((root / a / "images").is_dir() or (root / "images" / a).is_dir() for s in SPLITS for a in ALIASES[s])


CocoReader = Callable[..., tuple[list[str], DetectionSplit]]  # (json_path, labels=None) -> (labels, split)


def find_detection_splits(data: Path, val_fraction: float = 0.15, seed: int = 0) -> DetectionSplits:
    """Read a detection data set; without a val split, a seeded `val_fraction` of train becomes val.

    `data` is one of: a folder with COCO files (a file per split, `{train,valid,test}/_annotations.coco.json`
    as Roboflow writes them, `annotations/instances_<split>.json`, or one file naming no split); a data.yaml
    (or a folder holding one: Ultralytics, Roboflow's YOLO export); a folder with `{train,val,test}/images`
    or `images/{train,val,test}` plus `classes.txt` (YOLO); or a single COCO JSON file.
    """
    return find_splits(
        data, read_coco, None, val_fraction, seed,
        kind="detection",
        expected="COCO files with a train split (train/annotations.json, train/_annotations.coco.json, "
        "annotations/instances_train.json, ...), a data.yaml, or train/images + train/labels + classes.txt (YOLO)",
    )  # fmt: skip


def find_splits(
    data: Path,
    read_coco_file: CocoReader,
    read_yolo_split: SplitReader | None,
    val_fraction: float,
    seed: int,
    *,
    kind: str,
    expected: str,
) -> DetectionSplits:
    """The splits of a COCO or YOLO data set (detection and instance segmentation alike: each passes its
    readers); COCO wins where a folder holds both."""
    data = Path(data)
    if data.is_file() and data.suffix.lower() in (".yaml", ".yml"):
        layout = find_yolo_layout(data)
        return finish_splits(layout.labels, read_yolo_splits(layout, read_yolo_split), "yolo", val_fraction, seed)
    if data.is_file() and data.suffix.lower() == ".json":
        labels, train = read_coco_file(data)
        return finish_splits(labels, {"train": train}, "coco", val_fraction, seed)
    if not data.is_dir():
        raise FileNotFoundError(f"{kind} data {data} does not exist")
    files = coco_split_files(data)
    if "train" in files:
        labels, train = read_coco_file(files["train"])
        found = {"train": train}
        for name in SPLITS[1:]:
            if name in files:
                found[name] = read_coco_file(files[name], labels)[1]
        return finish_splits(labels, found, "coco", val_fraction, seed)
    if has_yolo(data):
        layout = find_yolo_layout(data)
        return finish_splits(layout.labels, read_yolo_splits(layout, read_yolo_split), "yolo", val_fraction, seed)
    raise DatasetError(f"{data} is not a {kind} data set: expected {expected}")


def load_detection_dataset(root: Path, labels: list[str]) -> EvalDataset:
    """Evaluation's ground truth: COCO JSON, else YOLO txt; the test split, else val, else train."""
    if has_coco_json(root):
        return load_coco_dataset(root, labels)
    base = find_yolo_root(root)
    if base is None:
        raise DatasetError(
            "the archive holds neither a COCO annotation file (*.json) nor a YOLO data set "
            f"(images/ and labels/ with class names in {' or '.join(YAML_FILES + NAME_FILES)})"
        )
    return load_yolo_dataset(root, base, labels)
