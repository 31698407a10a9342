"""Image classification: image-folder data, any torchvision classifier, softmax probabilities out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from dataformats.folders import ImageFolderSplits, find_splits, limit_samples
from training import plots
from training.config import RunConfig, TrainConfig
from training.data.imagefolder import ImageFolderDataset
from training.data.presets import ClassificationTrainPreset
from training.models import build_classifier
from training.tasks import register_task
from training.tasks.base import Evaluation, TrainTask, UInt8Normalize


def _logits(output: Any) -> torch.Tensor:
    # Inception/GoogLeNet return (logits, aux...) named tuples in train mode; the aux heads are not trained.
    logits: torch.Tensor = output.logits if hasattr(output, "logits") else output
    return logits


class ClassifierExport(nn.Module):
    """The served graph: uint8 images in, softmax probabilities out."""

    def __init__(self, model: nn.Module, mean: tuple[float, float, float], std: tuple[float, float, float]):
        super().__init__()
        self.normalize = UInt8Normalize(mean, std)
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.softmax(_logits(self.model(self.normalize(images))), dim=1)


@register_task("classification")
class ClassificationTask(TrainTask):
    primary_metric = "top1"
    export_outputs = ["probabilities"]  # noqa: RUF012 - a constant, never mutated

    def __init__(self) -> None:
        self._normalize = UInt8Normalize(self.mean, self.std)
        self._splits: dict[tuple[Path, float, int], ImageFolderSplits] = {}

    def _find_splits(self, cfg: TrainConfig) -> ImageFolderSplits:
        key = (cfg.data, cfg.val_fraction, cfg.seed)
        if key not in self._splits:
            self._splits[key] = find_splits(cfg.data, cfg.val_fraction, cfg.seed)
        return self._splits[key]

    def build_datasets(self, cfg: TrainConfig) -> tuple[Dataset[Any], Dataset[Any], list[str]]:
        splits = self._find_splits(cfg)
        train = ImageFolderDataset(
            limit_samples(splits.train, cfg.max_samples), cfg.image_size, ClassificationTrainPreset(cfg.augment)
        )
        val = ImageFolderDataset(limit_samples(splits.val, cfg.max_samples), cfg.image_size)
        return train, val, splits.labels

    def build_test_dataset(self, cfg: TrainConfig, labels: list[str]) -> Dataset[Any] | None:
        splits = self._find_splits(cfg)
        if splits.test is None:
            return None
        return ImageFolderDataset(limit_samples(splits.test, cfg.max_samples), cfg.image_size)

    def build_model(self, arch: str, num_classes: int, weights: str | None, freeze_backbone: bool) -> nn.Module:
        return build_classifier(arch, num_classes, weights, freeze_backbone)

    def _forward(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        self._normalize.to(images.device)
        return _logits(model(self._normalize(images)))

    def compute_loss(self, model: nn.Module, batch: Any, device: torch.device) -> tuple[torch.Tensor, dict[str, float]]:
        images, targets = batch[0].to(device, non_blocking=True), batch[1].to(device, non_blocking=True)
        logits = self._forward(model, images)
        loss = F.cross_entropy(logits, targets)
        accuracy = (logits.detach().argmax(dim=1) == targets).float().mean().item()
        return loss, {"acc": accuracy}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: DataLoader[Any], device: torch.device) -> Evaluation:
        model.eval()
        losses, top5_hits, predictions, truths = [], 0, [], []
        num_classes = 0
        for images, targets in loader:
            images, targets = images.to(device), targets.to(device)
            logits = self._forward(model, images).float()
            num_classes = logits.shape[1]
            losses.append(F.cross_entropy(logits, targets, reduction="sum").item())
            k = min(5, num_classes)
            top5_hits += int((logits.topk(k, dim=1).indices == targets[:, None]).any(dim=1).sum().item())
            predictions.append(logits.argmax(dim=1).cpu())
            truths.append(targets.cpu())
        if not truths:
            raise ValueError("cannot evaluate on an empty data set")
        pred = torch.cat(predictions).numpy()
        true = torch.cat(truths).numpy()
        matrix = np.bincount(true * num_classes + pred, minlength=num_classes**2).reshape(num_classes, -1)
        metrics = {"loss": sum(losses) / len(true), "top1": float(np.mean(pred == true))}
        if num_classes > 5:  # top-5 of five classes or fewer is always 1.0: noise in the report
            metrics["top5"] = top5_hits / len(true)
        return Evaluation(metrics=metrics, details={"confusion_matrix": matrix})

    def export_module(self, model: nn.Module, run: RunConfig) -> nn.Module:
        return ClassifierExport(model, run.mean, run.std)

    def plots(
        self, run_dir: Path, history: list[dict[str, Any]], eval_details: dict[str, dict[str, Any]], labels: list[str]
    ) -> None:
        plots.plot_curves(run_dir / "loss.png", history, ["train_loss", "val_loss"], ylabel="loss")
        plots.plot_curves(run_dir / "accuracy.png", history, ["train_acc", "val_top1", "val_top5"], ylabel="accuracy")
        for split, details in eval_details.items():
            if "confusion_matrix" in details:
                plots.plot_confusion_matrix(
                    run_dir / f"confusion_{split}.png",
                    details["confusion_matrix"],
                    labels,
                    title=f"confusion matrix ({split}, best epoch)",
                )
