"""Train-time augmentation presets: small callables on uint8 [3, H, W] tensors (and their targets).

Every task's preset is an `AugmentPreset` ("none" or "light"); the detection and segmentation presets live
beside their datasets. The classification one is deliberately light and geometry-preserving in meaning: no
flips (a mirrored digit or text is another class), no colour jitter that would change what "white on black" means.
"""

from __future__ import annotations

import torch
from torchvision.transforms import v2

PRESETS = ("none", "light")


class AugmentPreset:
    """A named augmentation preset; an unknown name is refused with the known ones."""

    PRESETS = PRESETS

    def __init__(self, augment: str = "light") -> None:
        if augment not in self.PRESETS:
            raise ValueError(f"unknown augment preset {augment!r}; known: {', '.join(self.PRESETS)}")
        self.augment = augment


class ClassificationTrainPreset(AugmentPreset):
    def __init__(self, augment: str = "light") -> None:
        super().__init__(augment)
        # Up to 10 degrees, 10% shift and 10% zoom: the variation of a hand-held or hand-written input.
        self._affine = v2.RandomAffine(
            degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1), interpolation=v2.InterpolationMode.BILINEAR, fill=0
        )

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        if self.augment == "none":
            return image
        out: torch.Tensor = self._affine(image)
        return out
