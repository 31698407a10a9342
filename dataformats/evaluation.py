"""What evaluation reads from a data set: each image with its ground truth, and what scoring needs besides."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class EvalItem:
    path: Path
    target: Any  # task-specific ground truth: a COCO image id, a mask file, a class index


@dataclass
class EvalDataset:
    items: list[EvalItem]
    info: dict[str, Any]
