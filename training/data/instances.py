"""Instance segmentation data: COCO JSON with polygon or RLE segmentations, letterboxed like detection.

The detection reader (`training.data.coco.read_coco`) does the parsing and validation; this module keeps each
training target's segmentation next to its box. Images are letterboxed by the service's `to_model_input` and
each instance's mask (rasterized at the image's own size by pycocotools) goes through the same call with
nearest interpolation, so boxes, masks and pixels line up with what the exported graph is served.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from service.metadata import InputSpec
from training.data.annotations import DetectionSample, DetectionSplit, DetectionSplits
from training.data.coco import find_split_json, read_coco
from training.data.detection import LETTERBOX, MIN_BOX_PIXELS, SPLITS, DetectionDataset, letterbox_boxes
from training.data.masks import decode_segmentation, resize_mask
from training.data.presets import AugmentPreset


@dataclass(frozen=True)
class InstanceSample(DetectionSample):
    segmentations: tuple[Any, ...] = field(default=(), repr=False)  # COCO polygons/RLE, one per box


def _is_target(ann: dict[str, Any]) -> bool:
    # read_coco's rule for what becomes a training target: crowd regions and boxes without area do not.
    return not ann["iscrowd"] and ann["bbox"][2] > 0 and ann["bbox"][3] > 0


def read_coco_instances(json_path: Path, labels: list[str] | None = None) -> tuple[list[str], DetectionSplit]:
    """`read_coco`, with every sample's segmentations (annotations without one are refused)."""
    labels, split = read_coco(json_path, labels)
    missing = [a["id"] for a in split.coco["annotations"] if "segmentation" not in a]
    if missing:
        raise ValueError(
            f"{json_path}: annotations {missing[:5]} have no segmentation (instance segmentation needs one)"
        )
    by_image: dict[Any, list[dict[str, Any]]] = {}
    for ann in split.coco["annotations"]:
        if _is_target(ann):
            by_image.setdefault(ann["image_id"], []).append(ann)
    samples: list[DetectionSample] = []
    for sample in split.samples:
        anns = by_image.get(sample.image_id, [])
        if len(anns) != len(sample.boxes):
            raise RuntimeError(
                f"{json_path}: image {sample.image_id} has {len(sample.boxes)} boxes but {len(anns)} masks"
            )
        fields = {name: getattr(sample, name) for name in DetectionSample.__dataclass_fields__}
        samples.append(InstanceSample(**fields, segmentations=tuple(a["segmentation"] for a in anns)))
    return labels, DetectionSplit(samples, split.coco, split.label_to_category)


def find_instance_splits(data: Path, val_fraction: float = 0.15, seed: int = 0) -> DetectionSplits:
    """`{train,val,test}/annotations.json` (images next to the JSON or in `images/`), or one COCO file;
    without a val split, a seeded `val_fraction` of train becomes val."""
    data = Path(data)
    if data.is_file() and data.suffix.lower() == ".json":
        labels, train = read_coco_instances(data)
        found: dict[str, DetectionSplit | None] = {"val": None, "test": None}
    elif (data / "train").is_dir() and (train_json := find_split_json(data / "train")) is not None:
        labels, train = read_coco_instances(train_json)
        found = {}
        for split in SPLITS[1:]:
            path = find_split_json(data / split) if (data / split).is_dir() else None
            found[split] = None if path is None else read_coco_instances(path, labels)[1]
    else:
        raise ValueError(f"{data} is not an instance segmentation data set: expected train/annotations.json (COCO)")
    val = found["val"]
    if val is None:
        train, val = train.split(val_fraction, seed)
    return DetectionSplits(labels, train, val, found["test"], "coco")


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
