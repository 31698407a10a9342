"""Image-folder classification data: the samples dataformats.folders finds, as uint8 tensors.

Images are decoded and resized exactly as the service does (`service.imaging`): EXIF-upright, RGB, PIL
bilinear "stretch" to (width, height), uint8 CHW. Training on other pixels than the ones served is the
classic train/serve skew, so this file must not grow its own preprocessing.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset

from dataformats.folders import Sample


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
