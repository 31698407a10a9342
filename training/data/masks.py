"""Semantic segmentation data: PNG class-index masks or COCO polygons/RLE, resized exactly as the service does.

Layouts (per split folder `train/`, `val/`, `test/`; without `val/` a seeded share of train is held out):
  images + PNG masks   `SPLIT/images/NAME.{jpg,png,...}` and `SPLIT/masks/NAME.png` (same stem), pixel values
                       class indices, 255 = ignore; class names in `classes.txt` (or `labels.txt`) at the
                       root, one per line, index 0 first (normally "background");
  COCO                 `SPLIT/annotations.json` with polygon or RLE segmentations, rasterized on the fly:
                       labels are "background" then the category names in id order; crowd regions are 255.
A split with both uses the PNG masks.

Images go through the service's `decode_image` and `to_model_input`; masks go through the same
`to_model_input` with nearest interpolation and 255 as padding, so pixels and labels line up exactly with
what the exported graph is served.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from service.imaging import DecodedImage, Geometry, decode_image, to_model_input
from service.metadata import InputSpec, Preprocessing
from service.tasks.coco import validate_coco
from training.data.coco import coco_labels, find_image, find_split_json
from training.data.presets import AugmentPreset

IGNORE_INDEX = 255
BACKGROUND = "background"
SPLITS = ("train", "val", "test")
LABEL_FILES = ("classes.txt", "labels.txt")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
# The service's default for segmentation: the whole image, stretched to the graph's input size.
STRETCH = Preprocessing(resize="stretch", interpolation="bilinear")
_MAX_PIXELS = 1 << 31  # data sets are trusted input; the service's request limit does not apply


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
            raise ValueError(f"an RLE of size {rle['size']} on a {height}x{width} image")
    else:
        raise ValueError(f"not a COCO segmentation: {type(segmentation).__name__}")
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
                if image.mode not in ("L", "P", "I", "I;16", "1"):
                    raise ValueError(f"mask {self.mask} must be single-channel class indices, not {image.mode}")
                values = np.asarray(image).astype(np.int64)
            if values.max(initial=0) > IGNORE_INDEX:
                raise ValueError(f"mask {self.mask} holds values above {IGNORE_INDEX}")
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
                raise ValueError(f"{root / name} must list at least 2 distinct class names, one per line")
            return labels
    return None


def png_samples(split: Path) -> list[MaskSample]:
    masks = {p.stem: p for p in (split / "masks").iterdir() if p.suffix.lower() == ".png"}
    samples = []
    for image in sorted((split / "images").iterdir()):
        if image.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if image.stem not in masks:
            raise ValueError(f"image {image} has no mask {split / 'masks' / (image.stem + '.png')}")
        samples.append(MaskSample(image=image, mask=masks[image.stem]))
    if not samples:
        raise ValueError(f"{split / 'images'} holds no images")
    return samples


def coco_samples(json_path: Path, labels: list[str] | None) -> tuple[list[str], list[MaskSample]]:
    """(labels, samples): "background" plus the category names; `labels` from train fixes the order."""
    data = json.loads(json_path.read_text())
    validate_coco(data, json_path, need_segmentation=True)
    own = [BACKGROUND, *coco_labels(data)]
    labels = labels or own
    unknown = sorted(set(own) - set(labels))
    if unknown:
        raise ValueError(f"{json_path} has categories {unknown} that the train split does not have")
    classes = {c["id"]: labels.index(c["name"]) for c in data["categories"]}
    by_image: dict[Any, list[dict[str, Any]]] = {}
    for ann in data["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    samples = [
        MaskSample(
            image=find_image(json_path, image["file_name"], None),
            annotations=tuple(by_image.get(image["id"], [])),
            classes=classes,
            size=(int(image["width"]), int(image["height"])),
        )
        for image in data["images"]
    ]
    if not samples:
        raise ValueError(f"{json_path} lists no images")
    return labels, samples


def find_mask_splits(root: Path, val_fraction: float = 0.15, seed: int = 0) -> MaskSplits:
    """Read a semantic segmentation data set (see the module docstring for the layouts)."""
    root = Path(root)
    if not (root / "train").is_dir():
        raise FileNotFoundError(f"segmentation data {root} has no train/ folder")
    labels = read_label_file(root)
    layout = "png" if (root / "train" / "masks").is_dir() else "coco"
    if layout == "png" and labels is None:
        raise ValueError(f"{root} has PNG masks but no classes.txt naming the class indices (background first)")
    found: dict[str, list[MaskSample] | None] = {}
    for split in SPLITS:
        folder = root / split
        if (folder / "images").is_dir() and (folder / "masks").is_dir():
            found[split] = png_samples(folder)
        elif folder.is_dir() and (path := find_split_json(folder)) is not None:
            labels, found[split] = coco_samples(path, labels)
        elif split == "train":
            raise ValueError(f"{folder} has neither images/ + masks/ nor a COCO annotations.json")
        else:
            found[split] = None
    assert labels is not None and found["train"] is not None
    train, val = found["train"], found["val"]
    if val is None:
        order = list(range(len(train)))
        random.Random(seed).shuffle(order)
        held = max(1, min(len(order) - 1, round(len(order) * val_fraction)))
        train, val = [train[i] for i in sorted(order[held:])], [train[i] for i in sorted(order[:held])]
    return MaskSplits(labels, train, val, found["test"], layout)


def resize_mask(mask: np.ndarray, spec: InputSpec, prep: Preprocessing, pad_value: int = IGNORE_INDEX) -> np.ndarray:
    """uint8 [H, W] values at the graph's input size, by the image's own geometry: nearest, `pad_value` in the
    letterbox padding (ignore for class maps, 0 for an instance's mask)."""
    height, width = mask.shape
    nearest = prep.model_copy(update={"interpolation": "nearest", "pad_value": pad_value})
    # to_model_input works on RGB; the three channels stay identical under nearest resizing.
    rgb = DecodedImage(Image.fromarray(mask, mode="L").convert("RGB"), width=width, height=height, filename="mask")
    pixels, _ = to_model_input(rgb, spec, nearest)
    return pixels[0]


def load_pair(
    sample: MaskSample, size: tuple[int, int], prep: Preprocessing = STRETCH
) -> tuple[np.ndarray, np.ndarray, np.ndarray, Geometry]:
    """(image uint8 [3, H, W], mask uint8 [H, W] at the input size, mask at the image's own size, geometry)."""
    height, width = size
    decoded = decode_image(
        sample.image.read_bytes(), filename=str(sample.image), max_pixels=_MAX_PIXELS, draft_size=(width, height)
    )
    full = sample.load_mask()
    if full.shape != (decoded.height, decoded.width):
        raise ValueError(
            f"{sample.image} is {decoded.width}x{decoded.height} but its mask is {full.shape[1]}x{full.shape[0]}"
        )
    spec = InputSpec(height=height, width=width)
    pixels, geometry = to_model_input(decoded, spec, prep)
    return pixels, resize_mask(full, spec, prep), full, geometry


class SegmentationTrainPreset(AugmentPreset):
    """ "light": a horizontal flip and a mild zoom/shift, applied to image and mask together."""

    def __init__(self, augment: str = "light") -> None:
        super().__init__(augment)
        self._transform = v2.Compose([
            v2.RandomHorizontalFlip(),
            v2.RandomAffine(degrees=0, translate=(0.1, 0.1), scale=(0.8, 1.25),
                            fill={tv_tensors.Image: 114, tv_tensors.Mask: IGNORE_INDEX}),
            v2.ColorJitter(brightness=0.2, contrast=0.2),
        ])  # fmt: skip

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.augment == "none":
            return image, mask
        out_image, out_mask = self._transform(tv_tensors.Image(image), tv_tensors.Mask(mask))
        return out_image.as_subclass(torch.Tensor), out_mask.as_subclass(torch.Tensor)


class SegmentationDataset(Dataset[tuple[torch.Tensor, torch.Tensor, dict[str, Any]]]):
    """(image uint8 [3, H, W], mask int64 [H, W], info); `info` has the geometry and, with `full_masks`,
    the mask at the image's own size (what the service's metrics compare with)."""

    def __init__(
        self,
        samples: Sequence[MaskSample],
        size: tuple[int, int],
        labels: list[str],
        transform: SegmentationTrainPreset | None = None,
        full_masks: bool = False,
    ) -> None:
        self.samples = list(samples)
        self.size = size
        self.labels = labels
        self.transform = transform
        self.full_masks = full_masks

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        pixels, mask, full, geometry = load_pair(self.samples[index], self.size)
        image, target = torch.from_numpy(pixels), torch.from_numpy(mask.astype(np.int64))
        if self.transform is not None:
            image, target = self.transform(image, target)
        info: dict[str, Any] = {"geometry": geometry}
        if self.full_masks:
            info["full_mask"] = full
        return image, target, info


def collate_segmentation(
    batch: Sequence[tuple[torch.Tensor, torch.Tensor, dict[str, Any]]],
) -> tuple[torch.Tensor, torch.Tensor, list[dict[str, Any]]]:
    images, masks, infos = zip(*batch, strict=True)
    return torch.stack(images), torch.stack(masks), list(infos)
