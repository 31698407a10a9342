"""Object detection: COCO or YOLO data, torchvision detectors, padded per-image detections out with NMS inside.

The served graph (service/tasks/detection.py is the other side of this contract):
  images uint8 [N, 3, H, W] (letterboxed) -> boxes float32 [N, K, 4] (x1, y1, x2, y2, model-input pixels),
  scores float32 [N, K], labels int64 [N, K] (0-based), num_detections int64 [N]; rows past the count are 0.
It is exported for one image and looped over N in ONNX (training.onnx_loop), so N is truly dynamic.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import onnx
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.ssd import SSD

from dataformats.annotations import DetectionSplits
from dataformats.detection import find_detection_splits
from service.metadata import Preprocessing
from training import plots
from training.config import RunConfig, TrainConfig
from training.data.detection import DetectionDataset, DetectionTrainPreset, collate_detection, letterbox_sample
from training.detection_eval import coco_detections, plot_class_ap, score_coco
from training.detectors import build_detector, postprocess_settings
from training.onnx_loop import batch_loop, set_output_shapes
from training.tasks import register_task
from training.tasks.base import Evaluation, ParityError, TrainTask, cached_splits

log = logging.getLogger(__name__)

# Fixed at export, written to model.json: a low threshold keeps the whole PR curve for COCO AP (the service
# raises it to 0.25 by default for answers), and COCO's 100 detections per image.
SCORE_THRESHOLD = 0.05
MAX_DETECTIONS = 100
PARITY_IMAGES = 8


def label_offset(model: nn.Module) -> int:
    """torchvision's softmax detectors (R-CNN family, SSD) reserve class 0 for background; sigmoid ones do not."""
    return 1 if isinstance(model, (GeneralizedRCNN, SSD)) else 0


def float_images(images: torch.Tensor, device: torch.device) -> list[torch.Tensor]:
    # The detector's own transform normalizes (mean/std inside the graph); it wants 0..1 floats.
    return list(images.to(device, non_blocking=True).float().div_(255.0))


class DetectorExport(nn.Module):
    """uint8 images -> padded (boxes, scores, labels, num_detections); `single` is the exported graph."""

    def __init__(self, model: nn.Module, max_detections: int = MAX_DETECTIONS) -> None:
        super().__init__()
        self.model = model
        self.max_detections = max_detections
        self.offset = label_offset(model)

    def single(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """One image [1, 3, H, W]; every output keeps a leading 1. Padding is a concatenation then a slice, so
        the traced graph has fixed output shapes and a data-dependent count."""
        found = self.model([image[0].float() / 255.0])[0]
        k = self.max_detections
        boxes = torch.cat([found["boxes"], found["boxes"].new_zeros((k, 4))])[:k]
        scores = torch.cat([found["scores"], found["scores"].new_zeros((k,))])[:k]
        labels = found["labels"] - self.offset
        count = torch.ones_like(labels).sum().reshape(1)
        labels = torch.cat([labels, labels.new_zeros((k,))])[:k]
        return boxes[None], scores[None], labels[None], count

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        rows = [self.single(images[i : i + 1]) for i in range(images.shape[0])]
        return tuple(torch.cat(column) for column in zip(*rows, strict=True))


class _OneImage(nn.Module):
    def __init__(self, export: DetectorExport) -> None:
        super().__init__()
        self.export = export

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.export.single(image)


def _match_image(
    expected: dict[str, np.ndarray], actual: dict[str, np.ndarray], box_atol: float, score_atol: float
) -> tuple[float, float, int]:
    """(max box diff, max score diff, rows left unpaired at the cut-off) for one image, or ParityError.

    Rows are paired by label, box and score rather than by position: near-equal scores may swap places.
    A row without partner is tolerated only at the cut-off, where a hair's difference (or a tie) decides
    whether it is kept: within `score_atol` of the score threshold, or of the lowest kept score when the
    output is full (the top-K cut).
    """
    rows = []
    cutoff = SCORE_THRESHOLD
    for outputs in (expected, actual):
        count = int(outputs["num_detections"])
        scores = outputs["scores"][:count].astype(np.float64)
        if count == len(outputs["scores"]) and count:
            cutoff = max(cutoff, float(scores.min()))
        rows.append((outputs["boxes"][:count].astype(np.float64), scores, outputs["labels"][:count]))
    (e_boxes, e_scores, e_labels), (a_boxes, a_scores, a_labels) = rows
    floor = cutoff + score_atol
    used = np.zeros(len(a_scores), dtype=bool)
    box_diff = score_diff = 0.0
    unmatched = 0
    for i in range(len(e_scores)):
        box_gap = np.abs(a_boxes - e_boxes[i]).max(axis=1) if len(a_boxes) else np.zeros(0)
        score_gap = np.abs(a_scores - e_scores[i])
        ok = ~used & (a_labels == e_labels[i]) & (box_gap <= box_atol) & (score_gap <= score_atol)
        if ok.any():
            j = int(np.flatnonzero(ok)[np.argmin(score_gap[ok])])
            used[j] = True
            box_diff, score_diff = max(box_diff, float(box_gap[j])), max(score_diff, float(score_gap[j]))
        elif e_scores[i] <= floor:
            unmatched += 1
        else:
            raise ParityError(
                f"detection {i} (label {e_labels[i]}, score {e_scores[i]:.4f}, box "
                f"{np.round(e_boxes[i], 1).tolist()}) has no counterpart within {box_atol} px and "
                f"{score_atol} score"
            )
    extra = [int(j) for j in np.flatnonzero(~used) if a_scores[j] > floor]
    if extra:
        j = extra[0]
        raise ParityError(
            f"an extra detection (label {a_labels[j]}, score {a_scores[j]:.4f}, box "
            f"{np.round(a_boxes[j], 1).tolist()}) has no counterpart"
        )
    return box_diff, score_diff, unmatched + int((~used).sum())


@register_task("detection")
class DetectionTask(TrainTask):
    primary_metric = "map"
    export_outputs = ["boxes", "scores", "labels", "num_detections"]  # noqa: RUF012 - a constant
    parity_batch_sizes: ClassVar[tuple[int, ...]] = (1, 3, 8)
    parity_vs_single = True  # the ONNX Loop must give every image the result it gets alone
    box_atol: ClassVar[float] = 0.5  # model-input pixels
    score_atol: ClassVar[float] = 1e-3
    max_detections: ClassVar[int] = MAX_DETECTIONS  # the graph's padded rows per image

    # What instance segmentation swaps: the reader, the dataset, its augmentation and the model factory.
    find_splits = staticmethod(find_detection_splits)
    splits_name = "data"
    dataset_type = DetectionDataset
    train_preset = DetectionTrainPreset
    build_network = staticmethod(build_detector)
    target_keys: ClassVar[tuple[str, ...]] = ("boxes",)  # what the model trains on besides the labels

    def __init__(self) -> None:
        self._splits: dict[tuple[Path, float, int], DetectionSplits] = {}

    def _find_splits(self, cfg: TrainConfig) -> DetectionSplits:
        return cached_splits(self._splits, cfg, self.find_splits, self.splits_name)

    # --- data ---------------------------------------------------------------------------------------------
    def build_datasets(self, cfg: TrainConfig) -> tuple[Dataset[Any], Dataset[Any], list[str]]:
        splits = self._find_splits(cfg)
        preset = self.train_preset(cfg.augment)
        train = self.dataset_type(splits.train.limit(cfg.max_samples), cfg.image_size, preset)
        val = self.dataset_type(splits.val.limit(cfg.max_samples), cfg.image_size)
        return train, val, splits.labels

    def build_test_dataset(self, cfg: TrainConfig, labels: list[str]) -> Dataset[Any] | None:
        test = self._find_splits(cfg).test
        return None if test is None else self.dataset_type(test.limit(cfg.max_samples), cfg.image_size)

    def collate_fn(self, batch: Any) -> Any:
        return collate_detection(batch)

    # --- model and loss -----------------------------------------------------------------------------------
    def build_model(self, arch: str, num_classes: int, weights: str | None, freeze_backbone: bool) -> nn.Module:
        return self.build_network(
            arch,
            num_classes,
            weights,
            freeze_backbone,
            score_thresh=SCORE_THRESHOLD,
            detections_per_img=self.max_detections,
        )

    def rebuild_model(self, run: RunConfig) -> nn.Module:
        return self.build_network(
            run.train.arch,
            len(run.labels),
            run.train.weights,
            load_weights=False,
            score_thresh=SCORE_THRESHOLD,
            detections_per_img=self.max_detections,
        )

    def compute_loss(self, model: nn.Module, batch: Any, device: torch.device) -> tuple[torch.Tensor, dict[str, float]]:
        images, targets = batch
        offset = label_offset(model)
        wanted = [
            {**{key: t[key].to(device) for key in self.target_keys}, "labels": (t["labels"] + offset).to(device)}
            for t in targets
        ]
        losses: dict[str, torch.Tensor] = model(float_images(images, device), wanted)
        loss = torch.stack(list(losses.values())).sum()
        return loss, {name.removeprefix("loss_"): float(value.detach()) for name, value in losses.items()}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: DataLoader[Any], device: torch.device) -> Evaluation:
        model.eval()
        dataset = loader.dataset
        if not isinstance(dataset, DetectionDataset):
            raise TypeError(f"detection evaluates DetectionDataset loaders, got {type(dataset).__name__}")
        split, offset, detections = dataset.split, label_offset(model), []
        if not len(split):
            raise ValueError("cannot evaluate on an empty data set")
        for images, targets in loader:
            for found, target in zip(model(float_images(images, device)), targets, strict=True):
                detections += coco_detections(
                    target["image_id"],
                    found["boxes"].cpu().numpy(),
                    found["scores"].cpu().numpy(),
                    (found["labels"] - offset).cpu().numpy(),
                    target["geometry"],
                    split.label_to_category,
                )
        category_names = {c["id"]: str(c["name"]) for c in split.coco["categories"]}
        names = {label: category_names[category] for label, category in split.label_to_category.items()}
        metrics, details = score_coco(split.coco, detections, names, split.label_to_category)
        return Evaluation(metrics=metrics, details=details)

    # --- export -------------------------------------------------------------------------------------------
    def export_module(self, model: nn.Module, run: RunConfig) -> nn.Module:
        return DetectorExport(model, self.max_detections)

    def export_graph(self, module: nn.Module, images: torch.Tensor, path: Path, opset: int) -> None:
        """Trace the one-image graph on a real image, then loop it over the batch in ONNX."""
        if not isinstance(module, DetectorExport):
            raise TypeError(f"detection exports a DetectorExport, got {type(module).__name__}")
        single_path = path.with_name(f"{path.stem}.one_image.onnx")
        with torch.no_grad(), warnings.catch_warnings():
            # The TorchScript exporter's deprecation notice and torchvision's tracer warnings about Python
            # numbers in the graph (sizes that are constant for a fixed input size).
            warnings.simplefilter("ignore")
            torch.onnx.export(
                _OneImage(module).eval(),
                (images[:1],),
                str(single_path),
                input_names=["images"],
                output_names=list(self.export_outputs),
                opset_version=opset,
                dynamo=False,
                do_constant_folding=True,
            )
        with torch.no_grad():
            shapes = {n: tuple(t.shape) for n, t in zip(self.export_outputs, module.single(images[:1]), strict=True)}
        single = onnx.load(str(single_path))
        set_output_shapes(single, shapes)
        batched = batch_loop(single)
        single_path.unlink()
        onnx.checker.check_model(batched, full_check=True)
        onnx.save(batched, str(path))

    def parity_images(self, run: RunConfig, size: tuple[int, int]) -> torch.Tensor:
        """The first val images (letterboxed like the service does), cycled up to the largest parity batch."""
        try:
            split = self._find_splits(run.train).val
        except (OSError, ValueError) as exc:
            log.warning("parity on random pixels: the data set %s cannot be read (%s)", run.train.data, exc)
            return super().parity_images(run, size)
        wanted = max(self.parity_batch_sizes)
        chosen = [split.samples[i % len(split.samples)] for i in range(min(wanted, len(split.samples)))]
        images = [letterbox_sample(sample, size)[0] for sample in chosen]
        return torch.stack([images[i % len(images)] for i in range(wanted)])

    def check_parity(
        self, torch_outputs: dict[str, np.ndarray], onnx_outputs: dict[str, np.ndarray]
    ) -> dict[str, float]:
        """Per image, the valid rows pair up: labels equal, boxes within `box_atol`, scores within `score_atol`."""
        for name in self.export_outputs:
            if torch_outputs[name].shape != onnx_outputs[name].shape:
                raise ParityError(f"output {name!r}: shape {torch_outputs[name].shape} != {onnx_outputs[name].shape}")
        box_diff = score_diff = 0.0
        cut = 0
        for i in range(len(torch_outputs["num_detections"])):
            expected = {name: value[i] for name, value in torch_outputs.items()}
            actual = {name: value[i] for name, value in onnx_outputs.items()}
            try:
                boxes, scores, unmatched = _match_image(expected, actual, self.box_atol, self.score_atol)
            except ParityError as exc:
                raise ParityError(f"image {i}: {exc}") from None
            box_diff, score_diff, cut = max(box_diff, boxes), max(score_diff, scores), cut + unmatched
        if cut:
            log.info("parity: %d detections at the score/top-%d cut-off were left unpaired", cut, self.max_detections)
        return {"boxes": box_diff, "scores": score_diff}

    def preprocessing(self, run: RunConfig, model: nn.Module) -> Preprocessing:
        transform: Any = model.transform
        mean, std = transform.image_mean, transform.image_std
        return Preprocessing(
            resize="letterbox",
            interpolation="bilinear",
            pad_value=114,
            mean=(mean[0], mean[1], mean[2]),
            std=(std[0], std[1], std[2]),
            in_graph=True,
        )

    def metadata_params(self, cfg: TrainConfig) -> dict[str, Any]:
        with torch.device("meta"):  # the arch's NMS default, without building weights
            model = self.build_network(cfg.arch, 1, load_weights=False)
        return {
            "score_threshold": SCORE_THRESHOLD,
            "max_detections": self.max_detections,
            "nms_iou_threshold": postprocess_settings(model)["nms_thresh"],
            "letterbox": {"pad_value": 114, "centered": True, "interpolation": "bilinear"},
            "box_format": "xyxy",
        }

    # --- reporting ----------------------------------------------------------------------------------------
    def plots(
        self, run_dir: Path, history: list[dict[str, Any]], eval_details: dict[str, dict[str, Any]], labels: list[str]
    ) -> None:
        losses = sorted({key for row in history for key in row if key.startswith("train_")})
        plots.plot_curves(run_dir / "loss.png", history, losses, ylabel="training loss")
        plots.plot_curves(run_dir / "map.png", history, ["val_map", "val_map50"], ylabel="COCO AP (val)")
        for split, details in eval_details.items():
            plot_class_ap(
                run_dir / f"class_ap_{split}.png",
                details.get("per_class", []),
                title=f"AP per class ({split}, best epoch)",
            )
            plots.plot_pr_curves(
                run_dir / f"pr_curves_{split}.png",
                details.get("pr_curves", {}),
                title=f"precision-recall at IoU 0.5 ({split}, best epoch)",
            )
