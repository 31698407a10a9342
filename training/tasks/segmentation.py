"""Semantic segmentation: PNG-mask or COCO data, torchvision segmentation models, an argmax class map out.

The served graph (service/tasks/segmentation.py is the other side of this contract):
  images uint8 [N, 3, H, W] (stretched to the input size) -> class_map int64 [N, H, W], class ids at the
  input resolution: normalization, the model, its bilinear upsampling of the logits and the argmax are all
  inside the graph. Labels start with the background class; 255 in the ground truth is ignored.
Metrics come from one confusion matrix over the val/test images at their own size, computed by the
service's functions on the class map resized back as the service resizes it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from dataformats.masks import IGNORE_INDEX, MaskSplits, find_mask_splits
from service.tasks.segmentation import class_map_at_image_size, confusion_matrix, segmentation_metrics
from training import plots
from training.config import RunConfig, TrainConfig
from training.data.masks import (
    STRETCH,
    SegmentationDataset,
    SegmentationTrainPreset,
    collate_segmentation,
    load_pair,
)
from training.segmenters import build_segmenter
from training.tasks import register_task
from training.tasks.base import Evaluation, ParityError, TrainTask, UInt8Normalize, cached_splits

log = logging.getLogger(__name__)

BACKGROUND_CLASS = 0


def _logits(output: Any) -> torch.Tensor:
    # torchvision's segmentation models return {"out": logits at the input size[, "aux": ...]}.
    logits: torch.Tensor = output["out"] if isinstance(output, dict) else output
    return logits


class SegmenterExport(nn.Module):
    """The served graph: uint8 images in, the argmax class map at the input resolution out."""

    def __init__(self, model: nn.Module, mean: tuple[float, float, float], std: tuple[float, float, float]):
        super().__init__()
        self.normalize = UInt8Normalize(mean, std)
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return _logits(self.model(self.normalize(images))).argmax(dim=1)


def plot_class_iou(path: Path, per_class: list[dict[str, Any]], title: str) -> Path | None:
    rows = [row for row in per_class if row["IoU"] is not None]
    names = [row["label"] for row in rows]
    return plots.plot_class_bars(path, names, {"IoU": [row["IoU"] for row in rows]}, ylabel="IoU", title=title)


@register_task("segmentation")
class SegmentationTask(TrainTask):
    primary_metric = "miou"
    export_outputs = ["class_map"]  # noqa: RUF012 - a constant, never mutated
    # Share of pixels whose class may differ between PyTorch and ONNX Runtime (float ties in the argmax).
    parity_max_mismatch: ClassVar[float] = 1e-3

    def __init__(self) -> None:
        self._normalize = UInt8Normalize(self.mean, self.std)
        self._splits: dict[tuple[Path, float, int], MaskSplits] = {}

    def _find_splits(self, cfg: TrainConfig) -> MaskSplits:
        return cached_splits(self._splits, cfg, find_mask_splits, "masks")

    # --- data ---------------------------------------------------------------------------------------------
    def build_datasets(self, cfg: TrainConfig) -> tuple[Dataset[Any], Dataset[Any], list[str]]:
        splits = self._find_splits(cfg)
        limit = cfg.max_samples
        preset = SegmentationTrainPreset(cfg.augment)
        train = SegmentationDataset(splits.train[:limit], cfg.image_size, splits.labels, preset)
        val = SegmentationDataset(splits.val[:limit], cfg.image_size, splits.labels, full_masks=True)
        return train, val, splits.labels

    def build_test_dataset(self, cfg: TrainConfig, labels: list[str]) -> Dataset[Any] | None:
        test = self._find_splits(cfg).test
        if test is None:
            return None
        return SegmentationDataset(test[: cfg.max_samples], cfg.image_size, labels, full_masks=True)

    def collate_fn(self, batch: Any) -> Any:
        return collate_segmentation(batch)

    # --- model and loss -----------------------------------------------------------------------------------
    def build_model(self, arch: str, num_classes: int, weights: str | None, freeze_backbone: bool) -> nn.Module:
        return build_segmenter(arch, num_classes, weights, freeze_backbone)

    def rebuild_model(self, run: RunConfig) -> nn.Module:
        return build_segmenter(run.train.arch, len(run.labels), run.train.weights, load_weights=False)

    def _forward(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        self._normalize.to(images.device)
        return _logits(model(self._normalize(images)))

    def compute_loss(self, model: nn.Module, batch: Any, device: torch.device) -> tuple[torch.Tensor, dict[str, float]]:
        images, masks = batch[0].to(device, non_blocking=True), batch[1].to(device, non_blocking=True)
        logits = self._forward(model, images)
        loss = F.cross_entropy(logits, masks, ignore_index=IGNORE_INDEX)
        valid = masks != IGNORE_INDEX
        accuracy = (logits.detach().argmax(dim=1)[valid] == masks[valid]).float().mean().nan_to_num(0.0).item()
        return loss, {"pixel_acc": accuracy}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: DataLoader[Any], device: torch.device) -> Evaluation:
        """mIoU and friends from one confusion matrix at the images' own size (ignore index 255 left out)."""
        model.eval()
        labels = self._labels(loader)
        num_classes = len(labels)
        confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
        loss_sum, pixels = 0.0, 0
        for images, masks, infos in loader:
            images, masks = images.to(device), masks.to(device)
            logits = self._forward(model, images).float()
            loss_sum += F.cross_entropy(logits, masks, ignore_index=IGNORE_INDEX, reduction="sum").item()
            pixels += int((masks != IGNORE_INDEX).sum().item())
            for class_map, info in zip(logits.argmax(dim=1).cpu().numpy(), infos, strict=True):
                # The service's own resize back to the image: the numbers are the ones `optic eval` reports.
                predicted = class_map_at_image_size({"class_map": class_map}, info["geometry"]).astype(np.int64)
                confusion += confusion_matrix(info["full_mask"].astype(np.int64), predicted, num_classes)
        if not confusion.any():
            raise ValueError("cannot evaluate on an empty data set")
        report = segmentation_metrics(confusion, labels)
        metrics = {
            "loss": loss_sum / max(1, pixels),
            "miou": report["mIoU"],
            "pixel_accuracy": report["pixel_accuracy"],
            "mean_dice": report["mean_dice"],
        }
        return Evaluation(metrics=metrics, details={"per_class": report["per_class"], "confusion_matrix": confusion})

    @staticmethod
    def _labels(loader: DataLoader[Any]) -> list[str]:
        dataset = loader.dataset
        if not isinstance(dataset, SegmentationDataset) or not dataset.full_masks:
            raise TypeError("segmentation evaluates SegmentationDataset loaders built with full_masks=True")
        return dataset.labels

    # --- export -------------------------------------------------------------------------------------------
    def export_module(self, model: nn.Module, run: RunConfig) -> nn.Module:
        return SegmenterExport(model, run.mean, run.std)

    def parity_images(self, run: RunConfig, size: tuple[int, int]) -> torch.Tensor:
        """Val images (real structure: flat regions and edges, where argmax ties would show), cycled to 7."""
        try:
            samples = self._find_splits(run.train).val
        except (OSError, ValueError) as exc:
            log.warning("parity on random pixels: the data set %s cannot be read (%s)", run.train.data, exc)
            return super().parity_images(run, size)
        wanted = max(self.parity_batch_sizes)
        images = [torch.from_numpy(load_pair(samples[i % len(samples)], size, STRETCH)[0]) for i in range(wanted)]
        return torch.stack(images)

    def check_parity(
        self, torch_outputs: dict[str, np.ndarray], onnx_outputs: dict[str, np.ndarray]
    ) -> dict[str, float]:
        """The share of pixels whose class differs, per batch; raises above `parity_max_mismatch`."""
        expected, actual = torch_outputs["class_map"], onnx_outputs["class_map"]
        if expected.shape != actual.shape:
            raise ParityError(f"output 'class_map': torch shape {expected.shape} != onnx shape {actual.shape}")
        mismatch = float(np.mean(expected != actual)) if expected.size else 0.0
        if not mismatch <= self.parity_max_mismatch:
            raise ParityError(
                f"output 'class_map': {mismatch:.4%} of pixels differ (at most {self.parity_max_mismatch:.2%} allowed)"
            )
        return {"class_map_mismatch": mismatch}

    def metadata_params(self, cfg: TrainConfig) -> dict[str, Any]:
        return {"background_class": BACKGROUND_CLASS, "ignore_index": IGNORE_INDEX}

    # --- reporting ----------------------------------------------------------------------------------------
    def plots(
        self, run_dir: Path, history: list[dict[str, Any]], eval_details: dict[str, dict[str, Any]], labels: list[str]
    ) -> None:
        plots.plot_curves(run_dir / "loss.png", history, ["train_loss", "val_loss"], ylabel="loss")
        plots.plot_curves(run_dir / "miou.png", history, ["val_miou", "val_pixel_accuracy"], ylabel="val mIoU")
        for split, details in eval_details.items():
            plot_class_iou(run_dir / f"class_iou_{split}.png", details.get("per_class", []), f"IoU per class ({split})")
            if "confusion_matrix" in details:
                plots.plot_confusion_matrix(
                    run_dir / f"confusion_{split}.png",
                    details["confusion_matrix"],
                    labels,
                    title=f"pixel confusion matrix ({split}, best epoch)",
                )
