"""Semantic segmentation ground truth: PNG class-index masks, or COCO polygons/RLE painted into class maps.

Layouts (a split is `train/`, `val/` (or `valid/`), `test/`; training holds a seeded share of train out as
val where there is none):
  images + PNG masks   `SPLIT/images/NAME.{jpg,png,...}` and `SPLIT/masks/NAME.png` (same stem), pixel values
                       class indices, 255 = ignore; class names in `classes.txt` (or `labels.txt`) at the
                       root, one per line, index 0 first (normally "background"); or one unsplit
                       `images/` + `masks/`;
  COCO                 any COCO file the detection readers find (Roboflow, CVAT, Label Studio, ...) with
                       polygon or RLE segmentations: labels are "background" then the category names in id
                       order; crowd regions are 255.
A split with both uses the PNG masks.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from dataformats.coco import (
    MODEL_LABELS,
    TRAIN_LABELS,
    category_labels,
    coco_images,
    coco_labels,
    coco_split_files,
    find_eval_coco,
    load_coco_json,
)
from dataformats.errors import DatasetError, shown
from dataformats.evaluation import EvalDataset, EvalItem
from dataformats.images import is_image
from dataformats.splits import SPLITS, find_split_root, split_folder

IGNORE_INDEX = 255
BACKGROUND = "background"
LABEL_FILES = ("classes.txt", "labels.txt")
MASK_MODES = ("L", "P", "I", "I;16", "1")
MASKS_DIR = ".optic-masks"  # evaluation's class maps painted from COCO, inside the extracted data set


def decode_segmentation(segmentation: Any, height: int, width: int) -> np.ndarray:
    """bool [H, W] from a COCO segmentation: polygons, uncompressed RLE (counts a list) or compressed RLE."""
    from pycocotools import mask as mask_utils

    if isinstance(segmentation, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), list):
        rle = mask_utils.frPyObjects(segmentation, height, width)
    elif isinstance(segmentation, dict):
        counts = segmentation["counts"]
        rle = {"size": segmentation["size"], "counts": counts.encode() if isinstance(counts, str) else counts}
        if list(rle["size"]) != [height, width]:
            raise DatasetError(f"an RLE of size {rle['size']} on a {height}x{width} image")
    else:
        raise DatasetError(f"not a COCO segmentation: {type(segmentation).__name__}")
    mask: np.ndarray = mask_utils.decode(rle).astype(bool)
    return mask


@dataclass(frozen=True)
class MaskSample:
    image: Path
    mask: Path | None = None  # a PNG of class indices; else `annotations` are rasterized
    annotations: tuple[dict[str, Any], ...] = field(default=(), repr=False)  # COCO, category ids -> `classes`
    classes: dict[int, int] = field(default_factory=dict, repr=False)  # COCO category id -> class index
    size: tuple[int, int] | None = None  # (width, height) the COCO file states

    def load_mask(self) -> np.ndarray:
        """uint8 [H, W] class indices at the image's size (255 = ignore)."""
        if self.mask is not None:
            with Image.open(self.mask) as image:
                if image.mode not in MASK_MODES:
                    raise DatasetError(f"mask {self.mask} must be single-channel class indices, not {image.mode}")
                values = np.asarray(image).astype(np.int64)
            if values.max(initial=0) > IGNORE_INDEX:
                raise DatasetError(f"mask {self.mask} holds values above {IGNORE_INDEX}")
            return values.astype(np.uint8)
        assert self.size is not None
        width, height = self.size
        canvas = np.zeros((height, width), dtype=np.uint8)
        for ann in self.annotations:
            region = decode_segmentation(ann["segmentation"], height, width)
            canvas[region] = IGNORE_INDEX if ann.get("iscrowd") else self.classes[ann["category_id"]]
        return canvas


@dataclass
class MaskSplits:
    labels: list[str]
    train: list[MaskSample]
    val: list[MaskSample]
    test: list[MaskSample] | None
    layout: str  # "png" or "coco", for the log


def read_label_file(root: Path) -> list[str] | None:
    for name in LABEL_FILES:
        if (root / name).is_file():
            labels = [line.strip() for line in (root / name).read_text().splitlines() if line.strip()]
            if len(set(labels)) != len(labels) or len(labels) < 2:
                raise DatasetError(f"{root / name} must list at least 2 distinct class names, one per line")
            return labels
    return None


def has_png_masks(folder: Path) -> bool:
    return (folder / "images").is_dir() and (folder / "masks").is_dir()


def png_samples(split: Path, root: Path | None = None) -> list[MaskSample]:
    """`split/images/*` each with its `split/masks/<stem>.png`."""
    masks = {p.stem: p for p in (split / "masks").iterdir() if p.suffix.lower() == ".png"}
    samples = []
    for image in sorted((split / "images").iterdir()):
        if not is_image(image):
            continue
        if image.stem not in masks:
            raise DatasetError(f"image {shown(image, root)} has no mask masks/{image.stem}.png")
        samples.append(MaskSample(image=image, mask=masks[image.stem]))
    if not samples:
        raise DatasetError(f"{shown(split / 'images', root)} holds no images")
    return samples


def coco_samples(
    json_path: Path,
    labels: list[str] | None,
    root: Path | None = None,
    *,
    check_sizes: bool = False,
    known_as: str = TRAIN_LABELS,
) -> tuple[list[str], list[MaskSample]]:
    """(labels, samples): "background" plus the category names; `labels` given (train's, or the model's)
    fixes the order."""
    data = load_coco_json(json_path, need_segmentation=True)
    labels = labels or [BACKGROUND, *coco_labels(data)]
    classes = category_labels(data, labels, json_path, known_as)
    samples = [
        MaskSample(path, annotations=tuple(anns), classes=classes, size=(int(image["width"]), int(image["height"])))
        for image, path, anns in coco_images(data, json_path, root, check_sizes=check_sizes)
    ]
    if not samples:
        raise DatasetError(f"{json_path.name} lists no images")
    return labels, samples


def find_mask_splits(root: Path, val_fraction: float = 0.15, seed: int = 0) -> MaskSplits:
    """Read a semantic segmentation data set (see the module docstring for the layouts)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"segmentation data {root} does not exist")
    labels = read_label_file(root)
    folders = {split: split_folder(root, split) for split in SPLITS}
    if folders["train"] is None and has_png_masks(root):
        folders["train"] = root
    png = {s: f for s, f in folders.items() if f is not None and has_png_masks(f)}
    if png and labels is None:
        raise DatasetError(f"{root} has PNG masks but no classes.txt naming the class indices (background first)")
    coco = coco_split_files(root) if len(png) < len(SPLITS) else {}
    found: dict[str, list[MaskSample] | None] = {}
    for split in SPLITS:
        folder = png.get(split)
        if folder is not None:
            found[split] = png_samples(folder)
        elif split in coco:
            labels, found[split] = coco_samples(coco[split], labels)
        elif split == "train":
            raise DatasetError(f"{root} has neither train/images/ + train/masks/ nor a COCO annotation file")
        else:
            found[split] = None
    assert labels is not None and found["train"] is not None
    train, val = found["train"], found["val"]
    if val is None:
        order = list(range(len(train)))
        random.Random(seed).shuffle(order)
        held = max(1, min(len(order) - 1, round(len(order) * val_fraction)))
        train, val = [train[i] for i in sorted(order[held:])], [train[i] for i in sorted(order[:held])]
    return MaskSplits(labels, train, val, found["test"], "png" if "train" in png else "coco")


# -- evaluation -------------------------------------------------------------------------------------------------


def read_mask(path: Path, image_path: Path, num_classes: int) -> np.ndarray:
    """Evaluation's ground truth of one image: int64 class indices, the image's size, < num_classes or 255."""
    try:
        with Image.open(path) as mask_image, Image.open(image_path) as image:
            if mask_image.size != image.size:
                raise DatasetError(
                    f"mask {path.name} is {mask_image.size[0]}x{mask_image.size[1]} but its image "
                    f"{image_path.name} is {image.size[0]}x{image.size[1]}"
                )
            if mask_image.mode not in MASK_MODES:
                raise DatasetError(f"mask {path.name} must be single-channel class indices, not {mask_image.mode}")
            mask = np.asarray(mask_image).astype(np.int64)
    except OSError as exc:
        raise DatasetError(f"mask {path.name} cannot be read: {exc}") from None
    bad = (mask >= num_classes) & (mask != IGNORE_INDEX)
    if bad.any():
        raise DatasetError(f"mask {path.name} holds class ids >= {num_classes} (255 = ignore)")
    return mask


def load_mask_dataset(root: Path, labels: list[str]) -> EvalDataset:
    """Evaluation's ground truth: `images/` + `masks/` (same stems), optionally under test/ or val/, or a COCO
    file painted into class maps (in `MASKS_DIR` under `root`), its categories matched to `labels` by name."""
    split = find_split_root(root)
    if has_png_masks(split):
        return EvalDataset(
            items=[EvalItem(s.image, s.mask) for s in png_samples(split, root)], info={"split": split.name}
        )
    if not any(split.rglob("*.json")):
        raise DatasetError("a segmentation data set needs images/ and masks/ folders, or a COCO file")
    path = find_eval_coco(root)
    _, samples = coco_samples(path, labels, root, check_sizes=True, known_as=MODEL_LABELS)
    masks_dir = root / MASKS_DIR
    masks_dir.mkdir(exist_ok=True)
    items = []
    for number, sample in enumerate(samples):
        mask_path = masks_dir / f"{number}.png"
        Image.fromarray(sample.load_mask()).save(mask_path)
        items.append(EvalItem(path=sample.image, target=mask_path))
    return EvalDataset(items=items, info={"format": "coco", "annotations": shown(path, root)})
