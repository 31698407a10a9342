"""Semantic segmentation data: the splits dataformats.masks reads (PNG masks or COCO), resized exactly as the
service does.

Images go through the service's `decode_image` and `to_model_input`; masks go through the same
`to_model_input` with nearest interpolation and 255 as padding, so pixels and labels line up exactly with
what the exported graph is served.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from dataformats.masks import IGNORE_INDEX, MaskSample
from service.imaging import DecodedImage, Geometry, decode_image, to_model_input
from service.metadata import InputSpec, Preprocessing
from training.data.presets import AugmentPreset

# The service's default for segmentation: the whole image, stretched to the graph's input size.
STRETCH = Preprocessing(resize="stretch", interpolation="bilinear")
_MAX_PIXELS = 1 << 31  # data sets are trusted input; the service's request limit does not apply


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
