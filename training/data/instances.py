"""Instance segmentation data: the splits dataformats.instances reads (COCO or YOLO-seg), letterboxed like
detection.

Images are letterboxed by the service's `to_model_input` and each instance's mask (rasterized at the image's
own size by pycocotools) goes through the same call with nearest interpolation, so boxes, masks and pixels
line up with what the exported graph is served.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from dataformats.annotations import DetectionSplit
from dataformats.instances import InstanceSample
from dataformats.masks import decode_segmentation
from service.metadata import InputSpec
from training.data.detection import LETTERBOX, MIN_BOX_PIXELS, DetectionDataset, letterbox_boxes
from training.data.masks import resize_mask
from training.data.presets import AugmentPreset


def letterbox_instances(sample: InstanceSample, size: tuple[int, int]) -> tuple[torch.Tensor, dict[str, Any]]:
    """uint8 [3, H, W] and the target: boxes (model-input pixels), 0-based labels, masks uint8 [M, H, W],
    image id and geometry; instances thinner than `MIN_BOX_PIXELS` after letterboxing are left out."""
    height, width = size
    spec = InputSpec(height=height, width=width)
    pixels, geometry, boxes, keep = letterbox_boxes(sample, size)
    masks = np.zeros((int(keep.sum()), height, width), dtype=np.uint8)
    for row, index in enumerate(np.flatnonzero(keep)):
        full = decode_segmentation(sample.segmentations[index], sample.height, sample.width).astype(np.uint8)
        masks[row] = resize_mask(full, spec, LETTERBOX, pad_value=0)
    target = {
        "boxes": torch.as_tensor(boxes[keep], dtype=torch.float32).reshape(-1, 4),
        "labels": torch.as_tensor(sample.labels[keep], dtype=torch.int64),
        "masks": torch.from_numpy(masks),
        "image_id": sample.image_id,
        "geometry": geometry,
    }
    return torch.from_numpy(pixels), target


class InstanceTrainPreset(AugmentPreset):
    """ "light": a horizontal flip and a mild zoom/shift, applied to image, boxes and masks together."""

    def __init__(self, augment: str = "light") -> None:
        super().__init__(augment)
        self._transform = v2.Compose([
            v2.RandomHorizontalFlip(),
            v2.RandomAffine(degrees=0, translate=(0.05, 0.05), scale=(0.85, 1.2),
                            fill={tv_tensors.Image: 114, tv_tensors.Mask: 0}),
            v2.ColorJitter(brightness=0.2, contrast=0.2),
            v2.ClampBoundingBoxes(),
            v2.SanitizeBoundingBoxes(min_size=MIN_BOX_PIXELS),
        ])  # fmt: skip

    def __call__(self, image: torch.Tensor, target: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        if self.augment == "none":
            return image, target
        canvas = (image.shape[-2], image.shape[-1])
        sample = {
            "image": tv_tensors.Image(image),
            "boxes": tv_tensors.BoundingBoxes(target["boxes"], format="XYXY", canvas_size=canvas),
            "masks": tv_tensors.Mask(target["masks"]),
            "labels": target["labels"],
        }
        out = self._transform(sample)
        plain = {key: out[key].as_subclass(torch.Tensor) for key in ("boxes", "masks", "labels")}
        return out["image"].as_subclass(torch.Tensor), {**target, **plain}


class InstanceDataset(DetectionDataset):
    """A `DetectionDataset` whose targets also carry `masks`."""

    def __init__(self, split: DetectionSplit, size: tuple[int, int], transform: InstanceTrainPreset | None = None):
        super().__init__(split, size)
        self.instance_transform = transform

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        sample = self.split.samples[index]
        if not isinstance(sample, InstanceSample):
            raise TypeError("InstanceDataset needs samples read by read_coco_instances")
        image, target = letterbox_instances(sample, self.size)
        if self.instance_transform is not None:
            image, target = self.instance_transform(image, target)
        return image, target
