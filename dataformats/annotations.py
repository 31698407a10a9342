"""Detection ground truth in one shape, whatever the layout on disk (COCO JSON or YOLO txt), for training and
evaluation alike.

A split carries two views of the same images: `samples`, the training targets (crowd regions dropped:
torchvision's detectors have no notion of them), and `coco`, the full COCO ground truth that pycocotools
scores against (crowd regions kept, so detections inside them are neither rewarded nor punished).
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class DetectionSample:
    path: Path
    image_id: int  # the COCO image id, the key between predictions and `DetectionSplit.coco`
    width: int  # of the upright image, the coordinate system of `boxes`
    height: int
    boxes: np.ndarray = field(repr=False)  # float32 [M, 4]: x1, y1, x2, y2 in image pixels
    labels: np.ndarray = field(repr=False)  # int64 [M]: 0-based indices into the data set's labels


@dataclass
class DetectionSplit:
    samples: list[DetectionSample]
    coco: dict[str, Any]  # COCO ground truth of exactly these images (images, annotations, categories)
    label_to_category: dict[int, int]  # label index -> COCO category id in `coco`

    def __len__(self) -> int:
        return len(self.samples)

    def subset(self, indices: list[int]) -> DetectionSplit:
        """The same split restricted to `indices`; the COCO ground truth shrinks with it."""
        samples = [self.samples[i] for i in indices]
        kept = {s.image_id for s in samples}
        coco = {key: value for key, value in self.coco.items() if key not in ("images", "annotations")}
        coco["images"] = [copy.deepcopy(im) for im in self.coco["images"] if im["id"] in kept]
        coco["annotations"] = [copy.deepcopy(a) for a in self.coco["annotations"] if a["image_id"] in kept]
        return DetectionSplit(samples, coco, dict(self.label_to_category))

    def limit(self, limit: int | None) -> DetectionSplit:
        """At most `limit` images (the first ones, for smoke runs and tests)."""
        if limit is None or len(self.samples) <= limit:
            return self
        return self.subset(list(range(limit)))

    def split(self, fraction: float, seed: int) -> tuple[DetectionSplit, DetectionSplit]:
        """(rest, held out): a seeded random `fraction` of the images (at least one) held out."""
        order = list(range(len(self.samples)))
        random.Random(seed).shuffle(order)
        held = max(1, min(len(order) - 1, round(len(order) * fraction)))
        return self.subset(sorted(order[held:])), self.subset(sorted(order[:held]))


@dataclass
class DetectionSplits:
    labels: list[str]
    train: DetectionSplit
    val: DetectionSplit
    test: DetectionSplit | None
    layout: str  # "coco" or "yolo", for the log


def xywh_to_xyxy(bbox: list[float]) -> list[float]:
    x, y, w, h = (float(v) for v in bbox)
    return [x, y, x + w, y + h]


def empty_targets() -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((0, 4), dtype=np.float32), np.zeros((0,), dtype=np.int64)
