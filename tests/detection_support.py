"""Shared fixtures' work for the detection tests: a tiny shapes data set and a detector with varied outputs."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from training.data.demo_detection import write_shapes

TINY_SPLITS = {"train": 6, "val": 3, "test": 3}


def write_tiny_shapes(out: Path) -> Path:
    """The real demo writer at a handful of images per split: COCO and YOLO annotations of the same files."""
    out.mkdir(parents=True, exist_ok=True)
    write_shapes(out, seed=0, images=TINY_SPLITS)
    return out


def calibrate_batchnorm(model: nn.Module, images: torch.Tensor) -> nn.Module:
    """Give an untrained detector real BatchNorm statistics (one train-mode pass), then eval mode.

    Fresh statistics (mean 0, var 1) make every position's features alike, so all scores tie and the
    order of the kept rows is arbitrary; calibrated ones give the varied outputs a parity test needs.
    """
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = None  # a cumulative average: one pass sets the statistics outright
    targets = [{"boxes": torch.tensor([[8.0, 8.0, 60.0, 70.0]]), "labels": torch.tensor([1])} for _ in images]
    model.train()
    with torch.no_grad():
        model(list(images.float() / 255.0), targets)
    return model.eval()
