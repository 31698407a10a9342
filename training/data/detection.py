"""Detection data: letterboxed images with their targets, from the splits dataformats.detection reads.

Images are decoded and letterboxed by the service's own functions (`service.imaging.decode_image` with the
same JPEG draft size, then `to_model_input`), and boxes are mapped with the `Geometry` that call returns,
so the pixels and coordinates trained on are exactly the ones served.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from dataformats.annotations import DetectionSample, DetectionSplit
from service.imaging import Geometry, decode_image, to_model_input
from service.metadata import InputSpec, Preprocessing
from training.data.presets import AugmentPreset

LETTERBOX = Preprocessing(resize="letterbox", interpolation="bilinear")
MIN_BOX_PIXELS = 1.0  # targets thinner than this after letterboxing carry no signal; torchvision needs > 0
_MAX_PIXELS = 1 << 31  # data sets are trusted input; the service's request limit does not apply


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
