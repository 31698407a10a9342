"""The task plug-in contract: everything the loop and the exporter need that differs between tasks.

The engine and the exporter only ever talk to a `TrainTask`; adding detection or segmentation means adding
one subclass, never an `if task == ...` in the loop.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, default_collate

from service.metadata import Preprocessing
from training import plots
from training.config import RunConfig, TrainConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class UInt8Normalize(nn.Module):
    """uint8 [N, 3, H, W] pixels -> float, /255, minus mean, over std.

    The one place this arithmetic lives: training runs it on every batch and the exported graph contains
    this very module, so the service feeds uint8 pixels and training and serving cannot drift.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return (images.float() / 255.0 - self.mean) / self.std


class ParityError(RuntimeError):
    """The ONNX graph does not reproduce the PyTorch model closely enough to be published."""


@dataclass
class Evaluation:
    """`metrics` are plain floats (they go to metrics.json and model.json); `details` feed the plots."""

    metrics: dict[str, float]
    details: dict[str, Any] = field(default_factory=dict)


class TrainTask(abc.ABC):
    name: ClassVar[str] = ""  # set by @register_task
    primary_metric: ClassVar[str]  # a key of Evaluation.metrics; higher is better
    export_outputs: ClassVar[list[str]]
    parity_atol: ClassVar[float] = 1e-4
    # Batch sizes parity is measured at: 1 and an odd size that differs from the traced example's batch of 2.
    parity_batch_sizes: ClassVar[tuple[int, ...]] = (1, 7)
    # Also compare each batch with its images run one at a time (for graphs that loop over the batch).
    parity_vs_single: ClassVar[bool] = False
    mean: ClassVar[tuple[float, float, float]] = IMAGENET_MEAN
    std: ClassVar[tuple[float, float, float]] = IMAGENET_STD

    # --- data ---------------------------------------------------------------------------------------------
    @abc.abstractmethod
    def build_datasets(self, cfg: TrainConfig) -> tuple[Dataset[Any], Dataset[Any], list[str]]:
        """(train, val, labels); the label order is the model's output order."""

    def build_test_dataset(self, cfg: TrainConfig, labels: list[str]) -> Dataset[Any] | None:
        """The held-out split reported in summary.json and model.json, when the data has one."""
        return None

    def collate_fn(self, batch: list[Any]) -> Any:
        return default_collate(batch)

    # --- model and loss -----------------------------------------------------------------------------------
    @abc.abstractmethod
    def build_model(self, arch: str, num_classes: int, weights: str | None, freeze_backbone: bool) -> nn.Module: ...

    @abc.abstractmethod
    def compute_loss(self, model: nn.Module, batch: Any, device: torch.device) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss to back-propagate and floats to show on the progress bar (averaged per epoch)."""

    @abc.abstractmethod
    def evaluate(self, model: nn.Module, loader: DataLoader[Any], device: torch.device) -> Evaluation:
        """Metrics over the whole loader; must contain `primary_metric`."""

    # --- export -------------------------------------------------------------------------------------------
    @abc.abstractmethod
    def export_module(self, model: nn.Module, run: RunConfig) -> nn.Module:
        """An nn.Module taking uint8 [N, 3, H, W] "images" and returning `export_outputs`, in that order."""

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        return {"images": {0: "N"}, **{name: {0: "N"} for name in self.export_outputs}}

    def rebuild_model(self, run: RunConfig) -> nn.Module:
        """The trained architecture from config.json alone, no weights read; export loads best.pt into it."""
        return self.build_model(run.train.arch, len(run.labels), None, False)

    def export_graph(self, module: nn.Module, images: torch.Tensor, path: Path, opset: int) -> None:
        """Write `module` as ONNX to `path`; `images` are the parity images. Default: one trace with a
        dynamic batch axis (`training.export.export_graph`)."""
        from training.export import export_graph  # export imports this module

        export_graph(module, path, self, (int(images.shape[-2]), int(images.shape[-1])), opset)

    def parity_images(self, run: RunConfig, size: tuple[int, int]) -> torch.Tensor:
        """uint8 [max(parity_batch_sizes), 3, H, W] that parity is measured on; default: seeded noise."""
        generator = torch.Generator().manual_seed(0)
        count = max(self.parity_batch_sizes)
        return torch.randint(0, 256, (count, 3, *size), dtype=torch.uint8, generator=generator)

    def preprocessing(self, run: RunConfig, model: nn.Module) -> Preprocessing:
        """model.json `preprocessing`: how the service turns an image into the graph's input."""
        return Preprocessing(resize="stretch", interpolation="bilinear", mean=run.mean, std=run.std, in_graph=True)

    def check_parity(
        self, torch_outputs: dict[str, np.ndarray], onnx_outputs: dict[str, np.ndarray]
    ) -> dict[str, float]:
        """Max absolute difference per output; raises `ParityError` above `parity_atol`."""
        diffs: dict[str, float] = {}
        for name in self.export_outputs:
            expected, actual = torch_outputs[name], onnx_outputs[name]
            if expected.shape != actual.shape:
                raise ParityError(f"output {name!r}: torch shape {expected.shape} != onnx shape {actual.shape}")
            diff = float(np.max(np.abs(expected.astype(np.float64) - actual.astype(np.float64)), initial=0.0))
            if not diff <= self.parity_atol:  # also catches NaN
                raise ParityError(f"output {name!r}: max abs diff {diff:.3g} exceeds {self.parity_atol:.1g}")
            diffs[name] = diff
        return diffs

    def metadata_params(self, cfg: TrainConfig) -> dict[str, Any]:
        """Task parameters fixed at export (model.json `params`)."""
        return {}

    # --- reporting ----------------------------------------------------------------------------------------
    def plots(
        self, run_dir: Path, history: list[dict[str, Any]], eval_details: dict[str, dict[str, Any]], labels: list[str]
    ) -> None:
        """Loss and primary-metric curves; tasks add their own (confusion matrix, PR curves, ...).

        `eval_details` maps a split name ("val", "test") to `Evaluation.details` of the best model.
        """
        plots.plot_curves(run_dir / "loss.png", history, ["train_loss", "val_loss"], ylabel="loss")
        metric = f"val_{self.primary_metric}"
        plots.plot_curves(run_dir / f"{self.primary_metric}.png", history, [metric], ylabel=self.primary_metric)


def cached_splits(
    cache: dict[tuple[Path, float, int], Any], cfg: TrainConfig, find: Callable[[Path, float, int], Any], what: str
) -> Any:
    """Find a data set's splits once per (data, val fraction, seed) and log what was found.

    `find(data, val_fraction, seed)` returns an object with `train`, `val`, `test` (or None) and `labels`.
    """
    key = (cfg.data, cfg.val_fraction, cfg.seed)
    if key not in cache:
        splits = find(cfg.data, cfg.val_fraction, cfg.seed)
        layout = getattr(splits, "layout", "")
        logging.getLogger(__name__).info(
            "%s %s %s: %d train, %d val, %s test images; labels %s",
            layout,
            what,
            cfg.data,
            len(splits.train),
            len(splits.val),
            len(splits.test) if splits.test else "no",
            splits.labels,
        )
        cache[key] = splits
    return cache[key]
