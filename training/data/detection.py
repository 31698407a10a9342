"""Detection data: find the splits of a COCO or YOLO data set, and serve letterboxed images with targets.

Images are decoded and letterboxed by the service's own functions (`service.imaging.decode_image` with the
same JPEG draft size, then `to_model_input`), and boxes are mapped with the `Geometry` that call returns,
so the pixels and coordinates trained on are exactly the ones served.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from service.imaging import Geometry, decode_image, to_model_input
from service.metadata import InputSpec, Preprocessing
from training.data.annotations import DetectionSample, DetectionSplit, DetectionSplits
from training.data.coco import find_split_json, read_coco
from training.data.presets import AugmentPreset
from training.data.yolo import YAML_FILES, names_from_yaml, read_names, read_yaml, read_yolo

SPLITS = ("train", "val", "test")
LETTERBOX = Preprocessing(resize="letterbox", interpolation="bilinear")
MIN_BOX_PIXELS = 1.0  # targets thinner than this after letterboxing carry no signal; torchvision needs > 0
_MAX_PIXELS = 1 << 31  # data sets are trusted input; the service's request limit does not apply


def _finish(
    labels: list[str],
    train: DetectionSplit,
    val: DetectionSplit | None,
    test: DetectionSplit | None,
    layout: str,
    val_fraction: float,
    seed: int,
) -> DetectionSplits:
    if val is None:
        train, val = train.split(val_fraction, seed)
    return DetectionSplits(labels, train, val, test, layout)


def _coco_splits(root: Path, val_fraction: float, seed: int) -> DetectionSplits:
    train_json = find_split_json(root / "train")
    assert train_json is not None
    labels, train = read_coco(train_json)
    found: dict[str, DetectionSplit | None] = {"val": None, "test": None}
    for split in found:
        path = find_split_json(root / split) if (root / split).is_dir() else None
        if path is not None:
            found[split] = read_coco(path, labels)[1]
    return _finish(labels, train, found["val"], found["test"], "coco", val_fraction, seed)


def _yolo_yaml_splits(path: Path, val_fraction: float, seed: int) -> DetectionSplits:
    data = read_yaml(path)
    labels = names_from_yaml(data, path)
    base = Path(data.get("path") or ".")
    base = base if base.is_absolute() else path.parent / base
    found: dict[str, DetectionSplit | None] = {}
    for split in SPLITS:
        entry = data.get(split)
        if not entry:
            found[split] = None
            continue
        if not isinstance(entry, str) or entry.endswith(".txt"):
            raise ValueError(f"{path}: `{split}:` must be one image folder (lists and .txt files are not supported)")
        found[split] = read_yolo(base / entry, labels)
    if found["train"] is None:
        raise ValueError(f"{path} has no `train:` folder")
    return _finish(labels, found["train"], found["val"], found["test"], "yolo", val_fraction, seed)


def _yolo_folder_splits(root: Path, val_fraction: float, seed: int) -> DetectionSplits:
    labels = read_names(root)
    found: dict[str, DetectionSplit | None] = {}
    for split in SPLITS:
        folder = next((f for f in (root / split / "images", root / "images" / split) if f.is_dir()), None)
        found[split] = None if folder is None else read_yolo(folder, labels)
    if found["train"] is None:
        raise ValueError(f"{root} has neither train/images/ nor images/train/")
    return _finish(labels, found["train"], found["val"], found["test"], "yolo", val_fraction, seed)


def find_detection_splits(data: Path, val_fraction: float = 0.15, seed: int = 0) -> DetectionSplits:
    """Read a detection data set; without a val split, a seeded `val_fraction` of train becomes val.

    `data` is one of: a folder with `{train,val,test}/annotations.json` (COCO; images next to the JSON or in
    `images/`); an Ultralytics `data.yaml` (or a folder holding one); a folder with `{train,val,test}/images`
    or `images/{train,val,test}` plus `classes.txt` (YOLO); or a single COCO JSON file. When a folder has both
    COCO and YOLO annotations, COCO wins (it can say `iscrowd`).
    """
    data = Path(data)
    if data.is_file() and data.suffix.lower() in (".yaml", ".yml"):
        return _yolo_yaml_splits(data, val_fraction, seed)
    if data.is_file() and data.suffix.lower() == ".json":
        labels, split = read_coco(data)
        return _finish(labels, split, None, None, "coco", val_fraction, seed)
    if not data.is_dir():
        raise FileNotFoundError(f"detection data {data} does not exist")
    if (data / "train").is_dir() and find_split_json(data / "train") is not None:
        return _coco_splits(data, val_fraction, seed)
    for name in YAML_FILES:
        if (data / name).is_file():
            return _yolo_yaml_splits(data / name, val_fraction, seed)
    if any((data / a / b).is_dir() for a, b in (("train", "images"), ("images", "train"))):
        return _yolo_folder_splits(data, val_fraction, seed)
    raise ValueError(
        f"{data} is not a detection data set: expected train/annotations.json (COCO), a data.yaml, or "
        f"train/images + train/labels + classes.txt (YOLO)"
    )


def letterbox_boxes(
    sample: DetectionSample, size: tuple[int, int]
) -> tuple[np.ndarray, Geometry, np.ndarray, np.ndarray]:
    """(uint8 pixels [3, H, W], geometry, boxes in model-input pixels, which boxes to keep): boxes thinner than
    `MIN_BOX_PIXELS` after letterboxing are not kept. Shared by the detection and instance datasets."""
    height, width = size
    decoded = decode_image(
        sample.path.read_bytes(), filename=str(sample.path), max_pixels=_MAX_PIXELS, draft_size=(width, height)
    )
    if (decoded.width, decoded.height) != (sample.width, sample.height):
        raise ValueError(
            f"{sample.path} is {decoded.width}x{decoded.height} but its annotations say {sample.width}x{sample.height}"
        )
    pixels, geometry = to_model_input(decoded, InputSpec(height=height, width=width), LETTERBOX)
    boxes = sample.boxes.astype(np.float64, copy=True)
    boxes[:, [0, 2]] = boxes[:, [0, 2]] * geometry.scale_x + geometry.pad_x
    boxes[:, [1, 3]] = boxes[:, [1, 3]] * geometry.scale_y + geometry.pad_y
    keep = ((boxes[:, 2] - boxes[:, 0]) >= MIN_BOX_PIXELS) & ((boxes[:, 3] - boxes[:, 1]) >= MIN_BOX_PIXELS)
    return pixels, geometry, boxes, keep


def letterbox_sample(sample: DetectionSample, size: tuple[int, int]) -> tuple[torch.Tensor, dict[str, Any]]:
    """uint8 [3, H, W] and the target: boxes in model-input pixels, 0-based labels, image id, geometry."""
    pixels, geometry, boxes, keep = letterbox_boxes(sample, size)
    target = {
        "boxes": torch.as_tensor(boxes[keep], dtype=torch.float32).reshape(-1, 4),
        "labels": torch.as_tensor(sample.labels[keep], dtype=torch.int64),
        "image_id": sample.image_id,
        "geometry": geometry,
    }
    return torch.from_numpy(pixels), target


class DetectionTrainPreset(AugmentPreset):
    """ "light": a random horizontal flip, the one augmentation that is safe for almost every detection set."""

    def __call__(self, image: torch.Tensor, target: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        # torch's RNG: seeded per DataLoader worker, and captured by `--resume` checkpoints.
        if self.augment == "none" or torch.rand(()) < 0.5:
            return image, target
        width = image.shape[-1]
        boxes = target["boxes"].clone()
        boxes[:, [0, 2]] = width - target["boxes"][:, [2, 0]]
        return image.flip(-1), {**target, "boxes": boxes}


class DetectionDataset(Dataset[tuple[torch.Tensor, dict[str, Any]]]):
    def __init__(self, split: DetectionSplit, size: tuple[int, int], transform: DetectionTrainPreset | None = None):
        self.split = split
        self.size = size
        self.transform = transform

    def __len__(self) -> int:
        return len(self.split.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        image, target = letterbox_sample(self.split.samples[index], self.size)
        if self.transform is not None:
            image, target = self.transform(image, target)
        return image, target


def collate_detection(
    batch: Sequence[tuple[torch.Tensor, dict[str, Any]]],
) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """Images share one size after letterboxing, so they stack; targets stay a list (counts differ)."""
    images, targets = zip(*batch, strict=True)
    return torch.stack(images), list(targets)
