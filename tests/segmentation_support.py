"""Tiny segmentation data and hand-made run folders shared by the segmentation tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from training.config import RunConfig, TrainConfig
from training.data import demo_segmentation
from training.data.demo import write_demo
from training.tasks import get_task

TINY_SPLITS = {"train": 6, "val": 3, "test": 3}


def write_tiny_demo(task: str, out: Path) -> Path:
    """The demo writer at a few images per split (the real one writes 448)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(demo_segmentation, "SPLIT_IMAGES", TINY_SPLITS)
        return write_demo(task, out, seed=0)


def untrained_run(run_dir: Path, cfg: TrainConfig, labels: list[str]) -> Path:
    """A finished-looking run folder around an untrained model, so export tests skip training."""
    task = get_task(cfg.task)
    run_dir.mkdir(parents=True)
    RunConfig(cfg, labels, task.mean, task.std).save(run_dir / "config.json")
    torch.manual_seed(0)
    model = task.build_model(cfg.arch, len(labels), cfg.weights, cfg.freeze_backbone)
    torch.save({"model": model.state_dict(), "epoch": 1}, run_dir / "best.pt")
    (run_dir / "summary.json").write_text(json.dumps({"metrics": {"val_x": 0.0}, "best_epoch": 1}))
    return run_dir
