"""Image-folder classification data: `root/{train,val[,test]}/<class>/*.png`, or one folder of classes.

Images are decoded and resized exactly as the service does (`service.imaging`): EXIF-upright, RGB, PIL
bilinear "stretch" to (width, height), uint8 CHW. Training on other pixels than the ones served is the
classic train/serve skew, so this file must not grow its own preprocessing.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})

Sample = tuple[Path, int]  # (image path, label index)


@dataclass
class ImageFolderSplits:
    labels: list[str]
    train: list[Sample]
    val: list[Sample]
    test: list[Sample] | None


def load_image(path: Path, size: tuple[int, int]) -> torch.Tensor:
    """uint8 [3, H, W] for `size` = (height, width), resized the way the service resizes."""
    height, width = size
    with Image.open(path) as image:
        # Mirror the service's JPEG draft decoding (DCT scaling to >= 2x the input size, upright files only):
        # it changes pixels slightly, and training must see what serving will see.
        if image.format == "JPEG" and image.getexif().get(0x0112, 1) == 1:
            image.draft("RGB", (width * 2, height * 2))
        upright = ImageOps.exif_transpose(image)
        resized = upright.convert("RGB").resize((width, height), Image.Resampling.BILINEAR)
    array = np.asarray(resized, dtype=np.uint8).transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(array))


def list_classes(folder: Path) -> list[str]:
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ValueError(f"{folder} has no class sub-folders (expected {folder}/<class name>/<image>)")
    return classes


def scan_split(folder: Path, labels: Sequence[str]) -> list[Sample]:
    """Every image under `folder/<class>/`; a class folder not in `labels` is an error, not a silent skip."""
    index = {label: i for i, label in enumerate(labels)}
    unknown = sorted(set(list_classes(folder)) - set(index))
    if unknown:
        raise ValueError(f"{folder} has classes {unknown} that the train split does not have")
    samples = [
        (path, index[path.parent.name])
        for label in labels
        if (folder / label).is_dir()
        for path in sorted((folder / label).iterdir())
        if path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")
    ]
    if not samples:
        raise ValueError(f"{folder} contains no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return samples


def split_samples(samples: list[Sample], val_fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Stratified train/val split: each class with >= 2 images gives at least one to val."""
    by_label: dict[int, list[Sample]] = {}
    for sample in samples:
        by_label.setdefault(sample[1], []).append(sample)
    rng = random.Random(seed)
    train: list[Sample] = []
    val: list[Sample] = []
    for label in sorted(by_label):
        members = list(by_label[label])
        rng.shuffle(members)
        n_val = min(len(members) - 1, max(1, round(len(members) * val_fraction)))
        val.extend(members[:n_val])
        train.extend(members[n_val:])
    return sorted(train), sorted(val)


def find_splits(root: Path, val_fraction: float = 0.15, seed: int = 0) -> ImageFolderSplits:
    """Labels are the sorted class folder names of the train split (of `root` when it has no train/)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data folder {root} does not exist")
    if (root / "train").is_dir():
        labels = list_classes(root / "train")
        train = scan_split(root / "train", labels)
        if (root / "val").is_dir():
            val = scan_split(root / "val", labels)
        else:
            train, val = split_samples(train, val_fraction, seed)
        test = scan_split(root / "test", labels) if (root / "test").is_dir() else None
        return ImageFolderSplits(labels, train, val, test)
    labels = list_classes(root)
    train, val = split_samples(scan_split(root, labels), val_fraction, seed)
    return ImageFolderSplits(labels, train, val, None)


def limit_samples(samples: list[Sample], limit: int | None) -> list[Sample]:
    """At most `limit` samples, taken round-robin over classes so a small cap still covers every class."""
    if limit is None or len(samples) <= limit:
        return samples
    by_label: dict[int, list[Sample]] = {}
    for sample in samples:
        by_label.setdefault(sample[1], []).append(sample)
    queues = [by_label[label] for label in sorted(by_label)]
    picked: list[Sample] = []
    for rank in range(max(len(q) for q in queues)):
        picked.extend(q[rank] for q in queues if rank < len(q))
    return sorted(picked[:limit])


class ImageFolderDataset(Dataset[tuple[torch.Tensor, int]]):
    """(uint8 [3, H, W] image, label index) pairs; `transform` runs on the uint8 tensor."""

    def __init__(
        self,
        samples: list[Sample],
        size: tuple[int, int],
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.samples = samples
        self.size = size
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        image = load_image(path, self.size)
        if self.transform is not None:
            image = self.transform(image)
        return image, label
